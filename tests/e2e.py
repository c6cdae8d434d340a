"""
Harness for end-to-end tests: a real ``twistd okws`` over loopback.

L{Site} writes an ini file into a fresh directory, starts ``twistd -n okws``
as a child process in its own session, and reads its log lines as they come,
so a test waits for an event ("site ready", "is ready") with a bound instead
of sleeping.  L{http} is a small blocking HTTP/1.1 client that can send raw
bytes (pipelining, malformed requests) and parse several responses off one
connection.

The log files are written by another process (the log daemon) with no signal
a test could wait on, so L{Site.wait_for_log} polls a file for a condition,
with a deadline; that is the one place a test polls.  L{LogdProcess} starts a
log daemon alone, the way the launcher does, so a test can speak the log
protocol to it directly (as a compromised service would).

Every end-to-end test case derives from L{E2ETestCase}: a watchdog bounds each
test (set-up, test, clean-ups), dumps every thread's traceback and fails the
test instead of letting CI hang.  Each L{Site} removes what it made (its
directory, with its own jail root inside) when closed, and any site a test
left open is closed when the run ends.
"""

from __future__ import annotations

import array
import atexit
import faulthandler
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 60.0
#: twistd, run by the interpreter running the tests (no PATH lookup).
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
EVENT_TIMEOUT = 30.0
#: How often L{Site.wait_for_log} looks at a file again.
POLL_INTERVAL = 0.05
#: How long one end-to-end test (its set-up, the test and its clean-ups) may run.
TEST_BOUND = 300.0
#: After a test overran, how long its clean-ups get before the watchdog ends the whole run.
HARD_GRACE = 120.0
#: Put in every launcher's environment; no child may see it (architecture.md: a child's
#: environment is only PATH, PYTHONPATH, PYTHONUNBUFFERED and LANG).
LAUNCHER_ONLY_ENV = "OKWS_E2E_LAUNCHER_ONLY"


class Overran(BaseException):
    """Raised in the test's thread by L{E2ETestCase}'s watchdog.

    A C{BaseException}, so that no C{except Exception} in a test's retry loop
    can swallow it.
    """


class E2ETestCase(SynchronousTestCase):
    """A test case whose every test is bounded in time.

    The watchdog is C{SIGALRM}: past C{bound} seconds it dumps every thread's
    traceback (faulthandler) and raises L{Overran} in the test, which
    interrupts any blocking call (socket reads, waits, joins) and fails the
    test; the clean-ups then close its sites.  If even they hang, faulthandler
    ends the run C{HARD_GRACE} seconds later, with the tracebacks.
    """

    #: Seconds a test of this class may run.
    bound: float = TEST_BOUND
    #: Where the watchdog writes the tracebacks.
    dump_to: IO[str] = sys.__stderr__

    def run(self, result: Any) -> None:
        previous = signal.signal(signal.SIGALRM, self._overran)
        signal.setitimer(signal.ITIMER_REAL, self.bound)
        faulthandler.dump_traceback_later(self.bound + HARD_GRACE, exit=True, file=self.dump_to)
        try:
            super().run(result)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            signal.signal(signal.SIGALRM, previous)

    def _overran(self, signum: int, frame: Any) -> None:
        print(f"\n{self.id()} ran past its bound of {self.bound:g}s; every thread's traceback:", file=self.dump_to, flush=True)
        faulthandler.dump_traceback(file=self.dump_to, all_threads=True)
        raise Overran(f"{self.id()} ran past its bound of {self.bound:g}s (tracebacks on stderr)")


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll C{check} (a fact with no event to wait on) until true, within C{timeout}."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(interval)


#: Every port L{free_port} has handed out in this process.
_ports_given: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, and not one handed out before.

    The kernel may offer a port it just gave again once its socket is closed: two calls in a
    row (a site's admin port, then its own) could otherwise get the same one.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise AssertionError("no loopback port that free_port() had not handed out already, in 100 tries")


#: Every site not yet closed; whatever a test left open is closed when the run ends.
_open_sites: "set[Site]" = set()


@atexit.register
def _close_all() -> None:
    for site in list(_open_sites):
        site.close()


class Site:
    """One okws site under test, in a temporary directory of its own.

    The directory holds the site file, the logs and (for a root launcher) the
    jail root, so concurrent runs never share a jail.  L{close} kills every
    process and removes the directory.
    """

    def __init__(
        self,
        services: str,
        okws: str = "",
        port: int | None = None,
        templates: dict[str, str] | None = None,
        logfile: str | None = None,
        listen: str | None = None,
    ) -> None:
        """
        @param templates: the site's template tree, as name -> source, written
            into its own directory (so a test may change it); by default the
            site's C{templates} is a link to the repository's example templates.
        @param logfile: have twistd write its log to this file (in the site's
            directory) instead of stdout.
        @param listen: the [okws] listen value instead of one plain loopback
            listener on C{port}; C{{port}} in it is replaced by C{port}.
        """
        self.dir = tempfile.mkdtemp(prefix="okws-e2e-")
        self.owned = True
        _open_sites.add(self)
        #: The jail root (used when the launcher runs as root): this site's own.
        self.jail_root = os.path.join(self.dir, "jails")
        if re.search(r"^\s*jail_root\s*=", textwrap.dedent(okws), re.M) is None:
            okws = f"jail_root = {self.jail_root}\n" + textwrap.dedent(okws)
        self.logfile = logfile
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
                "[okws]\nlisten = "
                + (listen or "tcp:{port}:interface=127.0.0.1").replace("{port}", str(self.port))
                + "\n"
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

    @classmethod
    def launch(cls, command: list[str], cwd: str, port: int, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> "Site":
        """Watch an okws started by C{command} in C{cwd} (a site this harness did not write).

        @param pass_fds: descriptors the command inherits (a socket, as systemd passes one).
        """
        site = cls.__new__(cls)
        site.dir, site.port, site.ini, site.logfile = cwd, port, os.path.join(cwd, "site.ini"), None
        site.owned, site.jail_root = False, ""
        _open_sites.add(site)
        site.templates = os.path.join(cwd, "templates")
        site.prefix, site.lines, site._new = [], [], queue.Queue()
        site.proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, start_new_session=True, pass_fds=pass_fds,
        )
        threading.Thread(target=site._read, daemon=True).start()
        return site

    def write_template(self, name: str, text: str) -> None:
        """Replace template C{name} as an editor saving atomically would."""
        path = os.path.join(self.templates, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    # -- lifecycle

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> "Site":
        """Start okws; with C{wait}, wait for "site ready" (if it does not come, kill it and raise)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        env[LAUNCHER_ONLY_ENV] = "a child must not see this"
        log_args = [f"--logfile={self.logfile}"] if self.logfile else []
        self.proc = subprocess.Popen(
            [*self.prefix, *TWISTD, "-n", "--pidfile=", *log_args, "okws", "--config", self.ini],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        threading.Thread(target=self._tail if self.logfile else self._read, daemon=True).start()
        if wait:
            try:
                self.wait_for(r"site ready", timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._new.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._new.put(None)

    def _tail(self) -> None:
        """Follow twistd's log file (when it logs to a file, not stdout), across its rotation."""
        assert self.proc is not None and self.logfile is not None
        path = os.path.join(self.dir, self.logfile)
        f = None
        partial = b""
        while True:
            if f is None:
                try:
                    f = open(path, "rb")
                except FileNotFoundError:
                    pass
            chunk = f.read() if f is not None else b""
            if chunk:
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for raw in lines:
                    self._new.put(raw.decode("utf-8", "replace"))
                continue
            if f is not None:
                try:
                    if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                        f.close()  # rotated: the rest is in the new file
                        f = None
                        continue
                except FileNotFoundError:
                    pass
            if self.proc.poll() is not None:
                self._new.put(None)
                return
            time.sleep(POLL_INTERVAL)

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
        """Leave no process behind, whatever state the site is in (the files stay: see L{close})."""
        if self.proc is None:
            return
        # The children still running now (a pid of one that exited long ago may belong to
        # someone else by now: only okws children are killed).
        pids = {pid for pid in self.all_pids() if _runs_okws_child(pid)}
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(process_exists(pid) for pid in pids), EVENT_TIMEOUT, f"the site's processes {sorted(pids)} gone")

    def close(self) -> None:
        """Kill every process and remove the site's directory (logs, jails and all)."""
        try:
            self.kill()
        finally:
            _open_sites.discard(self)
            if self.owned:
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- log files

    @property
    def log_dir(self) -> str:
        return os.path.join(self.dir, "logs")

    def read_log(self, name: str) -> str:
        """A file in the site's log directory ("" if it does not exist yet)."""
        try:
            with open(os.path.join(self.log_dir, name), encoding="ascii") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, name: str, done: Callable[[str], Any], timeout: float = EVENT_TIMEOUT) -> str:
        """Poll log file C{name} until C{done(text)} is true; return the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.read_log(name)
            if done(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not get there within {timeout}s; it ends:\n{text[-3000:]}\nlog:\n{self.log_text()}")
            time.sleep(POLL_INTERVAL)

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


def form_token(site: "Site", path: str) -> tuple[str, str]:
    """A form's CSRF cookie (a C{Cookie} header's value) and token, as a browser gets them: GET the page."""
    page = site.get(path)
    cookie = page.header("set-cookie")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.body)
    assert cookie is not None and token is not None, f"no CSRF cookie or token in GET {path}: {page.status} {page.body[:300]!r}"
    return cookie.split(";")[0], token.group(1).decode("ascii")


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


def socket_inodes(pid: int) -> set[int]:
    """The inodes of every socket C{pid} holds, from /proc/PID/fd."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def pids_holding_socket(inode: int) -> list[int]:
    """Every process (the launcher and this test included) holding an fd on socket C{inode}, from /proc/PID/fd."""
    target = f"socket:[{inode}]"
    holders = []
    for pid in sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or (not root) another user's
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def _runs_okws_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"okws_twisted.bootstrap" in f.read()
    except OSError:
        return False


def process_exists(pid: int) -> bool:
    """True if C{pid} is alive (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class LogdProcess:
    """A log daemon started by the test the way the launcher starts one.

    The test holds the control channel (fd 3 of the child): it sends the
    config, waits for ``ready``, and makes log channels with any identity
    it likes, as the launcher does for each sender.
    """

    def __init__(self, ini: str, base_dir: str, run: str = "testrun", launch: int = 1) -> None:
        from okws_twisted.config import parse

        self.site = parse(ini, os.path.join(base_dir, "site.ini"), base_dir)
        self.run = run
        self.launch = launch
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl: socket.socket | None = None

    def start(self) -> "LogdProcess":
        from okws_twisted.wire import limits
        from okws_twisted.wire.channel import encode, read_one_blocking, socketpair

        ours, theirs = socketpair()
        fd = theirs.fileno()
        shim = (
            "import os, runpy, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
            "sys.argv = ['okws_twisted.bootstrap', 'logd']; "
            "runpy.run_module('okws_twisted.bootstrap', run_name='__main__')"
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO, "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", shim, str(fd)], pass_fds=[fd], env=env, cwd=self.site.base_dir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        theirs.close()
        self.ctl = ours
        meta = {"k": "config", "role": "logd", "run": self.run, "launch": self.launch}
        for datagram in encode(meta, self.site.to_json().encode("utf-8")):
            ours.send(datagram)
        ready = read_one_blocking(ours, START_TIMEOUT, limits.CONTROL_LAUNCHER)
        assert ready.kind == "ready", ready
        return self

    def channel(self, name: str, role: str, pid: int, **meta: Any) -> socket.socket:
        """A new log channel, announced to the daemon as the sender C{name}/C{role}/C{pid}."""
        from okws_twisted.wire.channel import encode, socketpair

        assert self.ctl is not None
        ours, theirs = socketpair()
        peer = {"k": "peer", "channel": "log", "name": name, "role": role, "pid": pid, "run": self.run, "launch": 1, **meta}
        [datagram] = encode(peer)
        self.ctl.sendmsg([datagram], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        theirs.close()
        return ours

    @staticmethod
    def send(sock: socket.socket, meta: dict[str, Any], payload: bytes = b"") -> None:
        from okws_twisted.wire.channel import encode

        for datagram in encode(meta, payload):
            sock.send(datagram)

    @classmethod
    def records(cls, sock: socket.socket, first: int, records: list[Any]) -> int:
        """Send a batch; return the daemon's ack."""
        from okws_twisted.wire import logchannel
        from okws_twisted.wire import limits
        from okws_twisted.wire.channel import read_one_blocking

        cls.send(sock, logchannel.records_meta(first), logchannel.encode_records(records))
        return logchannel.parse_ack(read_one_blocking(sock, EVENT_TIMEOUT, limits.LOG_SENDER))

    def kill(self) -> None:
        """kill -9, and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
