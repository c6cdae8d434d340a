"""
A throwaway PostgreSQL cluster for the database proxy's tests.

The proxy's PostgreSQL tests run a real server (never a mock): Debian's
``postgresql`` package puts ``initdb``, ``pg_ctl`` and ``postgres`` under
``/usr/lib/postgresql/<version>/bin`` (not on PATH).  ``initdb`` and
``postgres`` refuse to run as root, so as root the cluster runs as an
unprivileged uid through ``setpriv``; that uid needs a passwd entry (initdb
looks its own user name up), so ``nobody`` is used.  The cluster listens on
127.0.0.1 on a free port and on a Unix socket in its own directory, with
password (scram-sha-256) authentication for one superuser, so the tests
exercise what a site would configure: a url without a password plus a
password file.

Use from trial::

    cluster = PostgresCluster()
    conninfo = cluster.start()          # ~1.5 s (initdb ~1 s, start ~0.2 s)
    self.addCleanup(cluster.stop)       # ~0.2 s, removes every file

C{PostgresCluster.available()} says whether the binaries are installed, for
C{skip} (CI installs the package, so CI never skips).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from tests.e2e import free_port

_PASSWORD = "okws-test-" + os.urandom(8).hex()


def _bindir() -> str | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


@dataclass
class Conninfo:
    """How to reach the cluster: what a site's [db:NAME] section would say."""

    host: str
    port: int
    sockdir: str
    user: str
    password: str
    dbname: str
    password_file: str

    def tcp_url(self) -> str:
        """The url form the config accepts (no password in it)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def socket_url(self) -> str:
        return f"postgresql://{self.user}@/{self.dbname}?host={self.sockdir}&port={self.port}"

    def dsn(self) -> str:
        """A libpq keyword string with the password, for the tests' own checks."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={self.dbname}"


class PostgresCluster:
    """One initdb'd data directory and its postmaster, started and stopped by a test."""

    def __init__(self, user: str = "okws", dbname: str = "site") -> None:
        self.user = user
        self.dbname = dbname
        self.bindir = _bindir()
        self.root: str | None = None
        self.port = 0
        self.info: Conninfo | None = None

    @staticmethod
    def available() -> bool:
        return _bindir() is not None

    # -- running as the cluster's own uid

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]

    def _run(self, *argv: str, timeout: float = 60) -> None:
        result = subprocess.run(
            self._as_owner(list(argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
        )
        if result.returncode != 0:
            log = self._server_log()
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stdout.decode(errors='replace')}\n{log}")

    def server_log(self) -> str:
        """Everything the server logged so far (what it says it received, with log_statement)."""
        with open(os.path.join(self.root or "", "server.log"), errors="replace") as f:
            return f.read()

    def _server_log(self) -> str:
        try:
            with open(os.path.join(self.root or "", "server.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # -- lifecycle

    def start(self) -> Conninfo:
        """initdb, start, create the database; return how to reach it."""
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
        self.root = tempfile.mkdtemp(prefix="okws-pg-")
        os.chmod(self.root, 0o755)
        data, sockdir = os.path.join(self.root, "data"), os.path.join(self.root, "sock")
        os.mkdir(sockdir)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(_PASSWORD + "\n")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (self.root, sockdir, pwfile):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run(
            f"{self.bindir}/initdb", "-D", data, "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        for _attempt in range(5):
            self.port = free_port()  # (postgres needs a fixed number)
            try:
                self._pg_ctl_start()
                break
            except RuntimeError as e:
                if "could not bind" not in str(e) and "already in use" not in str(e):
                    raise
        else:
            raise RuntimeError("no free port for PostgreSQL after 5 tries")
        self.info = Conninfo("127.0.0.1", self.port, sockdir, self.user, _PASSWORD, self.dbname, pwfile)
        self._createdb()
        return self.info

    def _pg_ctl_start(self) -> None:
        assert self.root is not None
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}/sock "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(f"{self.bindir}/pg_ctl", "-D", f"{self.root}/data", "-l", f"{self.root}/server.log", "-w", "-t", "30", "-o", opts, "start")

    def _createdb(self) -> None:
        import psycopg

        assert self.info is not None
        dsn = self.info.dsn().replace(f"dbname={self.dbname}", "dbname=postgres")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def restart(self) -> None:
        """Stop (fast: disconnects every client) and start again on the same port."""
        assert self.root is not None
        self._run(f"{self.bindir}/pg_ctl", "-D", f"{self.root}/data", "-m", "fast", "-w", "stop")
        self._pg_ctl_start()

    def stop(self) -> None:
        """Stop the server and remove every file it had."""
        if self.root is None:
            return
        try:
            if os.path.exists(f"{self.root}/data/postmaster.pid"):
                self._run(f"{self.bindir}/pg_ctl", "-D", f"{self.root}/data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


if __name__ == "__main__":
    c = PostgresCluster()
    t0 = time.monotonic()
    info = c.start()
    t1 = time.monotonic()
    import psycopg

    with psycopg.connect(info.tcp_url(), password=info.password) as conn:
        print("tcp:", conn.execute("select version()").fetchone()[0][:40])
    with psycopg.connect(info.socket_url(), password=info.password) as conn:
        print("unix:", conn.execute("select current_user, inet_server_addr()").fetchone())
    try:
        psycopg.connect(info.tcp_url(), password="wrong")
    except psycopg.OperationalError as e:
        print("bad password refused:", str(e).strip().splitlines()[-1][:100])
    t2 = time.monotonic()
    c.restart()
    t3 = time.monotonic()
    c.stop()
    t4 = time.monotonic()
    print(f"start {t1-t0:.2f}s restart {t3-t2:.2f}s stop {t4-t3:.2f}s; root removed: {c.root is None}")
