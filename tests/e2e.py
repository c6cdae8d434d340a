"""
Harness for end-to-end tests: a real ``twistd okws`` over loopback.

L{Site} writes an ini file into a fresh directory, starts ``twistd -n okws``
as a child process in its own session, and reads its log lines as they come,
so a test waits for an event ("site ready", "is ready") with a bound instead
of sleeping.  L{http} is a small blocking HTTP/1.1 client that can send raw
bytes (pipelining, malformed requests) and parse several responses off one
connection.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 60.0
#: twistd, run by the interpreter running the tests (no PATH lookup).
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
EVENT_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """One okws site under test."""

    def __init__(
        self, services: str, okws: str = "", port: int | None = None, templates: dict[str, str] | None = None
    ) -> None:
        """
        @param templates: the site's template tree, as name -> source, written
            into its own directory (so a test may change it); by default the
            site's C{templates} is a link to the repository's example templates.
        """
        self.dir = tempfile.mkdtemp(prefix="okws-e2e-")
        for name in ("services", "tests"):
            os.symlink(os.path.join(REPO, name), os.path.join(self.dir, name))
        self.templates = os.path.join(self.dir, "templates")
        if templates is None:
            os.symlink(os.path.join(REPO, "templates"), self.templates)
        else:
            os.mkdir(self.templates)
            for name, text in templates.items():
                self.write_template(name, text)
        self.port = port or free_port()
        self.ini = os.path.join(self.dir, "site.ini")
        with open(self.ini, "w") as f:
            f.write(
                f"[okws]\nlisten = tcp:{self.port}:interface=127.0.0.1\n"
                + textwrap.dedent(okws).strip()
                + "\n\n"
                + textwrap.dedent(services).strip()
                + "\n"
            )
        self.proc: subprocess.Popen[bytes] | None = None
        #: Words before the command (e.g. setpriv to start as another user).
        self.prefix: list[str] = []
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()

    def write_template(self, name: str, text: str) -> None:
        """Replace template C{name} as an editor saving atomically would."""
        path = os.path.join(self.templates, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    # -- lifecycle

    def start(self, wait: bool = True) -> "Site":
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [*self.prefix, *TWISTD, "-n", "--pidfile=", "okws", "--config", self.ini],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_for(r"site ready", START_TIMEOUT)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._new.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._new.put(None)

    def mark(self) -> int:
        """A position in the log; C{wait_for(..., after=mark)} looks only past it."""
        self.drain_log()
        return len(self.lines)

    def wait_for(self, pattern: str, timeout: float = EVENT_TIMEOUT, after: int = 0) -> re.Match[str]:
        """Wait for a log line matching C{pattern}, looking at lines from C{after} on."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        pos = after
        while True:
            while pos < len(self.lines):
                m = rx.search(self.lines[pos])
                pos += 1
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; log:\n" + self.log_text())
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._new.put(None)
                raise AssertionError(f"okws exited before {pattern!r}; log:\n" + self.log_text())
            self.lines.append(line)

    def drain_log(self) -> None:
        while True:
            try:
                line = self._new.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._new.put(None)
                return
            self.lines.append(line)

    def log_text(self) -> str:
        self.drain_log()
        return "\n".join(self.lines[-200:])

    def pids(self) -> dict[str, int]:
        """The current pid of each child, from the launcher's log."""
        self.drain_log()
        out: dict[str, int] = {}
        for line in self.lines:
            m = re.search(r"started (\S+) as pid (\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def all_pids(self) -> set[int]:
        self.drain_log()
        return {int(m.group(1)) for line in self.lines for m in [re.search(r"started \S+ as pid (\d+)", line)] if m}

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the launcher and wait for it; return its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Leave nothing behind, whatever state the site is in."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for pid in self.all_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- HTTP

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> "Response":
        with self.connect(timeout) as s:
            s.sendall(request_bytes("GET", path, headers={"Connection": "close", **(headers or {})}))
            return read_response(s)


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def request_bytes(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    hdrs = {"Host": "localhost", **(headers or {})}
    if body:
        hdrs.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed mid-response")
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                out, self.buf = self.buf, b""
                return out
            self.buf += data


_readers: "dict[int, _Reader]" = {}


def read_response(sock: socket.socket, head_request: bool = False) -> Response:
    """Read one response from C{sock} (bytes after it stay buffered for the next call)."""
    reader = _readers.get(id(sock))
    if reader is None or reader.sock is not sock:
        reader = _readers[id(sock)] = _Reader(sock)
    status_line = reader.line().decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.line()
        if not line:
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(reader.line().split(b";")[0], 16)
            if size == 0:
                while reader.line():
                    pass
                break
            chunks.append(reader.exactly(size))
            reader.line()
        body = b"".join(chunks)
    elif "content-length" in headers:
        body = reader.exactly(int(headers["content-length"]))
    else:
        body = reader.rest()
    return Response(status, parts[2] if len(parts) > 2 else "", headers, body)


def socket_inode_of_server_side(server_port: int, client_port: int) -> int:
    """The inode of the server-side socket of a loopback TCP connection (from /proc/net/tcp)."""
    want_local = f"{server_port:04X}"
    want_remote = f"{client_port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            cols = row.split()
            local, remote, inode = cols[1], cols[2], int(cols[9])
            if local.endswith(":" + want_local) and remote.endswith(":" + want_remote) and inode:
                return inode
    raise AssertionError(f"no server socket for client port {client_port} in /proc/net/tcp")


def pids_holding_socket(inode: int, pids: list[int]) -> list[int]:
    """Which of C{pids} hold an fd on socket C{inode}, from /proc/PID/fd."""
    target = f"socket:[{inode}]"
    holders = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def process_exists(pid: int) -> bool:
    """True if C{pid} is alive (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
