"""
End-to-end tests of the TLS front: real processes, real TLS over loopback.

A real ``twistd -n okws`` with a plain and an C{ssl:} listener, a self-signed
certificate made by the test with C{openssl}, and C{curl} (which offers h2
and http/1.1 with ALPN) or Python's C{ssl} module as clients.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.e2e import E2ETestCase, Site, free_port, read_response, request_bytes, wait_until

SERVICES = """
[service:echo]
resource = tests.sites.echo:Echo
paths = /echo

[service:hello]
resource = services.hello:Hello
paths = /hello

[service:big]
resource = tests.sites.big:Big
paths = /big

[service:compromised]
resource = tests.sites.compromised:Evil
paths = /compromised

[service:relayed]
resource = tests.sites.echo:Echo
paths = /relayed
isolation = request
"""

OKWS = """
restart_delay_min = 0.2
restart_delay_max = 2
head_timeout = 5
tls_handshake_timeout = 2
access_log_json = yes
"""

_shared: Site | None = None
_tls_port = 0


def make_certificate(directory: str, name: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate and its key (mode 600, as an operator keeps it)."""
    if shutil.which("openssl") is None:
        raise SkipTest("openssl is not installed")
    key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    os.chmod(key, 0o600)
    return key, cert


def shared_site() -> tuple[Site, int]:
    """A site with a plain and a TLS listener (started once per run)."""
    global _shared, _tls_port
    if _shared is None:
        _tls_port = free_port()
        site = Site(SERVICES, OKWS, listen="tcp:{port}:interface=127.0.0.1\n  ssl:%d:interface=127.0.0.1:privateKey=keys/key.pem:certKey=keys/cert.pem" % _tls_port)
        os.mkdir(os.path.join(site.dir, "keys"), 0o700)
        make_certificate(os.path.join(site.dir, "keys"))
        atexit.register(site.close)
        _shared = site.start()
    return _shared, _tls_port


def client_context(site: Site) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=os.path.join(site.dir, "keys", "cert.pem"))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


class CurlTests(E2ETestCase):
    def setUp(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        self.site, self.port = shared_site()

    def curl(self, path: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", os.path.join(self.site.dir, "keys", "cert.pem"), *args,
             f"https://localhost:{self.port}{path}"],
            capture_output=True, text=True, timeout=30,
        )

    def test_echo(self) -> None:
        """curl offers h2 and http/1.1; it gets http/1.1, isSecure is true, the client address is curl's."""
        done = self.curl("/echo", "-v", "--resolve", f"localhost:{self.port}:127.0.0.1")
        self.assertEqual(done.returncode, 0, done.stderr)
        seen = json.loads(done.stdout)
        self.assertTrue(seen["secure"])
        self.assertEqual(seen["client"][0], "127.0.0.1")
        self.assertEqual(seen["url"], f"https://localhost:{self.port}/echo")
        facts = seen["tls"]
        self.assertEqual((facts["sni"], facts["alpn"], facts["version"]), ("localhost", "http/1.1", "TLSv1.3"))
        self.assertTrue(facts["cipher"])
        self.assertIn("ALPN: offers h2", done.stderr)
        self.assertIn("ALPN: server accepted http/1.1", done.stderr)

    def test_template_page(self) -> None:
        done = self.curl("/hello?name=tls", "--resolve", f"localhost:{self.port}:127.0.0.1")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("tls", done.stdout)

    def test_old_tls_refused(self) -> None:
        done = self.curl("/echo", "--tlsv1.1", "--tls-max", "1.1", "--resolve", f"localhost:{self.port}:127.0.0.1")
        self.assertNotEqual(done.returncode, 0, done.stdout)

    def test_plain_listener_not_secure(self) -> None:
        seen = json.loads(self.site.get("/echo").body)
        self.assertFalse(seen["secure"])
        self.assertIsNone(seen["tls"])


class PythonClientTests(E2ETestCase):
    def setUp(self) -> None:
        self.site, self.port = shared_site()

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return client_context(self.site).wrap_socket(raw, server_hostname="localhost")

    def test_keepalive_across_services(self) -> None:
        """One TLS connection, requests for two services in turn: each sees a secure request."""
        with self.connect() as s:
            self.assertEqual(s.selected_alpn_protocol(), "http/1.1")
            for path in ("/echo", "/hello", "/echo"):
                s.sendall(request_bytes("GET", path))
                r = read_response(s)
                self.assertEqual(r.status, 200, r)
                if path == "/echo":
                    seen = json.loads(r.body)
                    self.assertTrue(seen["secure"])
                    self.assertEqual(seen["client"], ["127.0.0.1", s.getsockname()[1]])

    def test_relayed_over_tls(self) -> None:
        """Two relays in series (TLS front, dispatcher): an isolation = request service sees a secure
        request with the client's address and TLS facts, on one connection with a connection service."""
        with self.connect() as s:
            for path in ("/relayed/1", "/echo", "/relayed/2", "/relayed/3"):
                s.sendall(request_bytes("GET", path))
                r = read_response(s)
                self.assertEqual(r.status, 200, r)
                seen = json.loads(r.body)
                self.assertEqual(seen["path"], path)
                self.assertTrue(seen["secure"])
                self.assertEqual(seen["client"], ["127.0.0.1", s.getsockname()[1]])
                self.assertEqual(seen["tls"]["sni"], "localhost")

    def test_access_log(self) -> None:
        with self.connect() as s:
            s.sendall(request_bytes("GET", "/echo?case=tlslog", {"Connection": "close"}))
            self.assertEqual(read_response(s).status, 200)
            version = s.version()
        text = self.site.wait_for_log("access.log", lambda t: "case=tlslog " in t)
        (line,) = [l for l in text.splitlines() if "case=tlslog " in l]
        self.assertTrue(line.startswith("127.0.0.1 "), line)
        self.assertEqual(self.site.read_log("access.log").count("case=tlslog "), 1)
        text = self.site.wait_for_log("access.json", lambda t: "case=tlslog " in t)
        (record,) = [json.loads(l) for l in text.splitlines() if "case=tlslog " in l]
        self.assertTrue(record["tls"].startswith(version + "/"), record)

    def test_dispatcher_answers_over_tls(self) -> None:
        with self.connect() as s:
            s.sendall(request_bytes("GET", "/nowhere", {"Connection": "close"}))
            self.assertEqual(read_response(s).status, 404)

    def test_slow_reader_back_pressure(self) -> None:
        """
        A client that does not read a 64 MiB response: the TLS front's memory
        stays bounded (the service waits), and every byte arrives once the
        client reads.  Without back-pressure the front would take the whole
        body off the loopback socket pair in well under the watch window.
        """
        front = self.site.pids()["tls"]
        before = rss(front)
        body = 64 << 20
        with self.connect() as s:
            s.sendall(request_bytes("GET", "/big?mib=64", {"Connection": "close"}))
            peak = before
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:  # a bounded watch of memory, not a wait for an event
                peak = max(peak, rss(front))
                time.sleep(0.05)
            # Measured: about 0.5 MiB with back-pressure, over 6 MiB (and growing) without.
            self.assertLess(peak - before, 4 << 20, f"the TLS front grew from {before} to {peak} bytes")
            s.settimeout(30)
            got = 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        self.assertGreater(got, body)
        self.assertLess(got, body + 4096)

    def test_close_deadline(self) -> None:
        """
        A client that gets its response and the front's close_notify, then neither answers it nor
        closes its socket, is cut by the front tls_handshake_timeout (2 s here) later: its
        descriptor leaves the TLS front's fd table.  A kept-alive connection open meanwhile is
        unaffected, and a client that answers the close_notify is closed cleanly.
        """
        front = self.site.pids()["tls"]
        with self.connect() as kept, self.connect() as rude, self.connect() as polite:
            kept.sendall(request_bytes("GET", "/echo"))
            self.assertEqual(read_response(kept).status, 200)
            kept_fd = front_socket(self.port, kept)
            rude_fd = front_socket(self.port, rude)
            polite_fd = front_socket(self.port, polite)
            rude.sendall(request_bytes("GET", "/echo", {"Connection": "close"}))
            self.assertEqual(read_response(rude).status, 200)
            self.assertEqual(rude.recv(100), b"")  # the front's close_notify
            notified = time.monotonic()
            self.assertTrue(holds(front, rude_fd), "the front closed before its close_notify was answered")
            polite.sendall(request_bytes("GET", "/echo", {"Connection": "close"}))
            self.assertEqual(read_response(polite).status, 200)
            polite.settimeout(10)
            polite.unwrap()  # the client's close_notify: the front closes its side at once
            wait_until(lambda: not holds(front, rude_fd), 15, "the TLS front to cut the client that never closed")
            self.assertGreater(time.monotonic() - notified, 1.5)
            self.assertFalse(holds(front, polite_fd), "the client that answered the close_notify is still held")
            self.assertTrue(holds(front, kept_fd), "the kept-alive connection was closed too")
            kept.sendall(request_bytes("GET", "/echo"))
            self.assertEqual(read_response(kept).status, 200)

    def test_handshake_deadline(self) -> None:
        """A client that connects and never completes the handshake is cut after tls_handshake_timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            elapsed = time.monotonic() - started
        self.assertEqual(data, b"")
        self.assertGreater(elapsed, 1.5)
        self.assertLess(elapsed, 8)


def front_socket(port: int, client: socket.socket) -> str:
    """The C{socket:[INODE]} of the TLS front's end of C{client}'s connection to C{port}, from /proc/net/tcp."""
    want_local, want_remote = f"0100007F:{port:04X}", f"0100007F:{client.getsockname()[1]:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                return f"socket:[{fields[9]}]"
    raise AssertionError(f"no socket from port {port} to {want_remote} in /proc/net/tcp")


def holds(pid: int, target: str) -> bool:
    """Whether process C{pid} has a descriptor on C{target} (a C{socket:[INODE]})."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:  # closed meanwhile
            pass
    return False


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class KeyIsolationTests(E2ETestCase):
    """Only the TLS front can read the private key."""

    def setUp(self) -> None:
        self.site, self.port = shared_site()

    def test_compromised_service_cannot_read_the_key(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("jails need root: unjailed, every process runs as the same user")
        key = os.path.join(self.site.dir, "keys", "key.pem")
        cert = os.path.join(self.site.dir, "keys", "cert.pem")
        r = self.site.get(f"/compromised?path={key}&path={cert}")
        self.assertEqual(r.status, 200, r)
        seen = json.loads(r.body)
        # Not in the service's jail at all, so not even its certificate.
        self.assertEqual(seen[f"read {key}"], "ENOENT")
        self.assertEqual(seen[f"read {cert}"], "ENOENT")

    def test_only_the_tls_front_has_the_key_open_or_visible(self) -> None:
        """The key is in the TLS front's mount namespace and in no other child's."""
        if os.geteuid() != 0:
            raise SkipTest("jails need root")
        key = os.path.join(self.site.dir, "keys", "key.pem")
        pids = self.site.pids()
        seen = {}
        for name, pid in pids.items():
            with open(f"/proc/{pid}/mountinfo") as f:
                seen[name] = any(line.split()[4] == key for line in f)
        self.assertTrue(seen.pop("tls"), pids)
        self.assertEqual({n for n, v in seen.items() if v}, set())


class ReloadTests(E2ETestCase):
    """okws-ctl reload: the TLS front is relaunched and serves the certificate now on disk."""

    def test_new_certificate_after_reload(self) -> None:
        from tests.test_e2e_operations import ctl

        port = free_port()
        site = Site(SERVICES, OKWS, listen="tcp:{port}:interface=127.0.0.1\n  ssl:%d:interface=127.0.0.1:privateKey=keys/key.pem:certKey=keys/cert.pem" % port)
        keys = os.path.join(site.dir, "keys")
        os.mkdir(keys, 0o700)
        make_certificate(keys, "first.example")
        self.addCleanup(site.close)
        site.start()

        def served_name() -> str:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="x") as s:
                der = s.getpeercert(binary_form=True)
            out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True, timeout=30)
            return out.stdout.decode()

        self.assertIn("first.example", served_name())
        # Replace the files the way a renewal does: new files renamed over the old.
        new = os.path.join(site.dir, "new")
        os.mkdir(new, 0o700)
        make_certificate(new, "second.example")
        for name in ("key.pem", "cert.pem"):
            os.replace(os.path.join(new, name), os.path.join(keys, name))
        old = site.pids()["tls"]
        mark = site.mark()
        done = ctl(site, "reload")
        self.assertEqual(done.returncode, 0, done.stderr)
        site.wait_for(r"tls pid \d+ is ready", after=mark)
        # The old front stops accepting and, with no connection left, exits.
        site.wait_for(rf"tls pid {old} exited after retiring", after=mark)
        self.assertIn("second.example", served_name())


_sni: tuple[Site, int] | None = None


def sni_site() -> tuple[Site, int]:
    """A site with a C{tls:} listener over a directory of four certificates (started once per run)."""
    global _sni
    if _sni is None:
        from tests.tlsfront.test_front import make_pem

        port = free_port()
        site = Site(SERVICES, OKWS, listen="tcp:{port}:interface=127.0.0.1\n  tls:%d:path=certs:interface=127.0.0.1" % port)
        certs = os.path.join(site.dir, "certs")
        os.mkdir(certs, 0o700)
        make_pem(certs, "a.example.pem", "a.example", ["a.example"])
        make_pem(certs, "b.example.pem", "b.example", ["b.example"])
        make_pem(certs, "*.w.example.pem", "wildcard.w.example", ["*.w.example"])
        make_pem(certs, "default.pem", "fallback.example", ["fallback.example"])
        # What a client trusts: the four self-signed certificates (without their keys).
        with open(os.path.join(site.dir, "ca.pem"), "w") as bundle:
            for name in sorted(os.listdir(certs)):
                with open(os.path.join(certs, name)) as f:
                    text = f.read()
                bundle.write(text[text.index("-----BEGIN CERTIFICATE-----"):])
        atexit.register(site.close)
        _sni = (site.start(), port)
    return _sni


def served_subject(port: int, name: str | None) -> str:
    """The subject of the certificate the server presents for SNI C{name}, as C{openssl s_client} shows it."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    args += ["-servername", name] if name else ["-noservername"]
    hello = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=hello.stdout, capture_output=True, timeout=30)
    return out.stdout.decode().strip()


class SNITests(E2ETestCase):
    """tls:PORT:path=DIR: the TLS front picks the certificate by the client's SNI name."""

    def setUp(self) -> None:
        if shutil.which("curl") is None or shutil.which("openssl") is None:
            raise SkipTest("curl and openssl are needed")
        self.site, self.port = sni_site()

    def curl(self, name: str, path: str = "/echo") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", os.path.join(self.site.dir, "ca.pem"),
             "--resolve", f"{name}:{self.port}:127.0.0.1", f"https://{name}:{self.port}{path}"],
            capture_output=True, text=True, timeout=30,
        )

    def test_two_names_two_certificates(self) -> None:
        for name in ("a.example", "b.example"):
            # curl checks the certificate against the name: it succeeds only with the right one.
            done = self.curl(name)
            self.assertEqual(done.returncode, 0, done.stderr)
            echoed = json.loads(done.stdout)
            self.assertTrue(echoed["secure"])
            self.assertEqual(echoed["tls"]["sni"], name)
            self.assertIn(f"CN = {name}", served_subject(self.port, name))

    def test_wildcard(self) -> None:
        done = self.curl("x.w.example")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("CN = wildcard.w.example", served_subject(self.port, "x.w.example"))

    def test_unknown_name_gets_the_default(self) -> None:
        self.assertIn("CN = fallback.example", served_subject(self.port, "nobody.example"))
        self.assertIn("CN = fallback.example", served_subject(self.port, None))
        # The default's name is not the one asked for: curl refuses it.
        done = self.curl("nobody.example")
        self.assertNotEqual(done.returncode, 0, done.stdout)

    def test_compromised_service_cannot_read_the_directory(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("jails need root: unjailed, every process runs as the same user")
        certs = os.path.join(self.site.dir, "certs")
        key = os.path.join(certs, "a.example.pem")
        r = self.site.get(f"/compromised?path={key}&path={certs}")
        self.assertEqual(r.status, 200, r)
        seen = json.loads(r.body)
        self.assertEqual(seen[f"read {key}"], "ENOENT")
        self.assertEqual(seen[f"read {certs}"], "ENOENT")

    def test_only_the_tls_front_has_the_directory(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("jails need root")
        certs = os.path.join(self.site.dir, "certs")
        seen = {}
        for name, pid in self.site.pids().items():
            with open(f"/proc/{pid}/mountinfo") as f:
                seen[name] = [line.split()[5] for line in f if line.split()[4] == certs]
        self.assertEqual(seen.pop("tls")[0].split(",")[0], "ro")
        self.assertEqual({n for n, v in seen.items() if v}, set())

    def test_new_file_read_on_unknown_name(self) -> None:
        """A file added to the directory (readable by the front's group) serves its name at once."""
        from tests.tlsfront.test_front import make_pem

        path = make_pem(os.path.join(self.site.dir, "certs"), "new.example.pem", "new.example", ["new.example"])
        os.chmod(path, 0o640)  # the directory is set-group-id: the file has the TLS front's group
        time.sleep(1.1)  # the directory is read again at most once a second
        self.assertIn("CN = new.example", served_subject(self.port, "new.example"))

    def test_new_file_after_reload(self) -> None:
        """okws-ctl reload relaunches the front, which reads the directory (and may read a 600 file)."""
        from tests.test_e2e_operations import ctl
        from tests.tlsfront.test_front import make_pem

        make_pem(os.path.join(self.site.dir, "certs"), "c.example.pem", "c.example", ["c.example"])
        mark = self.site.mark()
        done = ctl(self.site, "reload")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.site.wait_for(r"tls pid \d+ is ready", after=mark)
        self.assertIn("CN = c.example", served_subject(self.port, "c.example"))
        self.assertIn("CN = a.example", served_subject(self.port, "a.example"))


class MisdirectedTests(E2ETestCase):
    """421 (RFC 9110 15.5.20): a Host that gets another certificate than the connection's SNI did."""

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is needed")
        self.site, self.port = sni_site()

    def connect(self, sni: str | None, port: int | None = None, verify: bool = True) -> ssl.SSLSocket:
        if verify:
            ctx = ssl.create_default_context(cafile=os.path.join(self.site.dir, "ca.pem"))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", port or self.port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=sni)

    def ask(self, s: socket.socket, host: str) -> Any:
        s.sendall(request_bytes("GET", "/echo", {"Host": host}))
        return read_response(s)

    def test_otherCertificateMisdirected(self) -> None:
        with self.connect("a.example") as s:
            r = self.ask(s, "b.example")
            self.assertEqual(r.status, 421)
            self.assertEqual(r.header("connection"), "close")
            self.assertIn(b"421 Misdirected Request", r.body)
            self.assertEqual(s.recv(100), b"")

    def test_sameCertificateServed(self) -> None:
        with self.connect("a.example") as s:
            self.assertEqual(self.ask(s, "a.example").status, 200)
            self.assertEqual(self.ask(s, "A.EXAMPLE:%d" % self.port).status, 200)
        # Two names under one wildcard certificate: the browser may share the connection.
        with self.connect("x.w.example") as s:
            self.assertEqual(self.ask(s, "y.w.example").status, 200)

    def test_keptAliveConnectionTurnsToAnotherHost(self) -> None:
        """The service hands the connection back at the host change; the dispatcher answers 421."""
        with self.connect("a.example") as s:
            first = self.ask(s, "a.example")
            self.assertEqual(first.status, 200)
            r = self.ask(s, "b.example")
            self.assertEqual(r.status, 421)

    def test_noSniDefaultCertificate(self) -> None:
        """No SNI (an IP address): the default certificate, which an IP-literal Host gets too."""
        with self.connect(None, verify=False) as s:
            self.assertEqual(self.ask(s, "127.0.0.1").status, 200)
        with self.connect(None, verify=False) as s:
            self.assertEqual(self.ask(s, "a.example").status, 421)

    def test_oneCertificateListener(self) -> None:
        """An ssl: listener has one certificate: any Host is served on it."""
        site, port = shared_site()
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_context(site).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(request_bytes("GET", "/echo", {"Host": "b.example"}))
            self.assertEqual(read_response(s).status, 200)
