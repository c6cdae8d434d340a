"""
End-to-end tests of what issue 17 promises over TLS: a static pool's files and a form's CSRF
cookie, through a real ``twistd okws`` with an C{ssl:} listener (the TLS front), spoken to with
Python's C{ssl} module over loopback.

Over TLS the CSRF cookie is C{__Host-okws-csrf-NAME} with C{Secure} (a browser refuses a
C{__Host-} cookie without it), and the plain-HTTP name does not satisfy the check there.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import ssl

from tests.e2e import E2ETestCase, Response, Site, free_port, read_response, request_bytes
from tests.test_e2e_static import CSS, fill
from tests.test_e2e_tls import make_certificate

SERVICES = """
[service:form]
resource = services.form:Form
paths = /form

[static:assets]
root = assets
paths = /static /favicon.ico
max_age = 600
"""

FAST = """
restart_delay_min = 0.2
drain_timeout = 5
tls_handshake_timeout = 5
"""

_shared: tuple[Site, int] | None = None


def shared() -> tuple[Site, int]:
    global _shared
    if _shared is None:
        port = free_port()
        site = Site(SERVICES, FAST, listen="tcp:{port}:interface=127.0.0.1\n  ssl:%d:interface=127.0.0.1:privateKey=keys/key.pem:certKey=keys/cert.pem" % port)
        os.mkdir(os.path.join(site.dir, "keys"), 0o700)
        make_certificate(os.path.join(site.dir, "keys"))
        fill(os.path.join(site.dir, "assets"))
        atexit.register(site.close)
        _shared = (site.start(), port)
    return _shared


class StaticAndFormsOverTLSTests(E2ETestCase):
    def setUp(self) -> None:
        self.site, self.port = shared()
        self.context = ssl.create_default_context(cafile=os.path.join(self.site.dir, "keys", "cert.pem"))

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context.wrap_socket(raw, server_hostname="localhost")

    def exchange(self, *requests: bytes, head: bool = False) -> list[Response]:
        """Send each request on one TLS connection, in turn, and read each answer."""
        with self.connect() as s:
            answers = []
            for r in requests:
                s.sendall(r)
                answers.append(read_response(s, head_request=head))
            return answers

    def test_static_file_over_tls(self) -> None:
        """The same file, validators and ranges as on plain HTTP, through the TLS front."""
        whole, ranged = self.exchange(
            request_bytes("GET", "/static/css/app.css"),
            request_bytes("GET", "/static/css/app.css", {"Range": "bytes=0-9"}),
        )
        self.assertEqual(whole.status, 200)
        self.assertEqual(whole.body, CSS)
        self.assertTrue((whole.header("content-type") or "").startswith("text/css"))
        self.assertEqual(whole.header("cache-control"), "public, max-age=600")
        self.assertEqual(ranged.status, 206)
        self.assertEqual(ranged.body, CSS[:10])
        etag = whole.header("etag")
        self.assertIsNotNone(etag)
        (again,) = self.exchange(request_bytes("GET", "/static/css/app.css", {"If-None-Match": etag or ""}))
        self.assertEqual(again.status, 304)
        self.assertEqual(again.body, b"")
        (dotfile,) = self.exchange(request_bytes("GET", "/static/.env"))
        self.assertEqual(dotfile.status, 404)

    def test_csrf_cookie_is_host_prefixed_and_secure(self) -> None:
        """GET the form over TLS: its cookie is C{__Host-}, C{Secure}, C{HttpOnly}, C{SameSite=Lax}, C{Path=/}."""
        (page,) = self.exchange(request_bytes("GET", "/form"))
        self.assertEqual(page.status, 200)
        cookie = page.header("set-cookie") or ""
        self.assertTrue(cookie.startswith("__Host-okws-csrf-form="), cookie)
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        self.assertEqual({"path", "secure", "httponly", "samesite"} - attributes, set(), cookie)
        self.assertNotIn("domain", attributes, "a __Host- cookie may carry no Domain")
        self.assertIn("samesite=lax", cookie.lower().replace(" ", ""))
        self.assertIn("path=/", cookie.lower().replace(" ", ""))

    def test_form_post_over_tls(self) -> None:
        """The TLS cookie and token pass; the same token with the plain-HTTP cookie name gets 403."""
        (page,) = self.exchange(request_bytes("GET", "/form"))
        cookie = (page.header("set-cookie") or "").split(";")[0]
        match = re.search(rb'name="csrf_token" value="([^"]+)"', page.body)
        self.assertIsNotNone(match, page.body[:300])
        token = match.group(1) if match else b""
        body = b"message=over+tls&csrf_token=" + token
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        plain_name = cookie.replace("__Host-", "", 1)
        good, downgraded, missing = self.exchange(
            request_bytes("POST", "/form", {**form, "Cookie": cookie}, body),
            request_bytes("POST", "/form", {**form, "Cookie": plain_name}, body),
            request_bytes("POST", "/form", form, body),
        )
        self.assertEqual(good.status, 200, good.body[:300])
        self.assertIn(b"over tls", good.body)
        self.assertEqual(downgraded.status, 403)
        self.assertEqual(missing.status, 403)
