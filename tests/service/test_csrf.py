"""Tests for L{okws_twisted.service.csrf} and the CSRF check of L{ServiceResource}."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from okws_twisted import ServiceResource
from okws_twisted.service.csrf import CsrfKey, cookie_name, new_nonce, valid_nonce
from okws_twisted.testing import TEST_CSRF_SECRET, csrf, render

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class KeyTests(SynchronousTestCase):
    """The token is a MAC of the cookie's nonce under one service's secret."""

    def setUp(self) -> None:
        self.key = CsrfKey("guestbook", b"s" * 32)
        self.nonce = new_nonce()

    def test_round_trip(self) -> None:
        self.assertIsNone(self.key.check(self.nonce, self.key.token(self.nonce)))
        self.assertTrue(valid_nonce(self.nonce))
        self.assertEqual(len(self.key.token(self.nonce)), 43)

    def test_other_service_or_secret(self) -> None:
        """A compromised service mints tokens for itself only: another service's secret, or
        the same secret under another name, never makes a token that passes here."""
        token = self.key.token(self.nonce)
        self.assertEqual(CsrfKey("hello", b"s" * 32).check(self.nonce, token), "a wrong CSRF token")
        self.assertEqual(CsrfKey("guestbook", b"t" * 32).check(self.nonce, token), "a wrong CSRF token")

    def test_refusals(self) -> None:
        token = self.key.token(self.nonce)
        self.assertEqual(self.key.check(None, token), "no CSRF cookie")
        self.assertEqual(self.key.check(b"short", token), "a malformed CSRF cookie")
        self.assertEqual(self.key.check(b"!" * 24, token), "a malformed CSRF cookie")
        self.assertIn("no CSRF token", self.key.check(self.nonce, None) or "")
        self.assertEqual(self.key.check(self.nonce, token + b"x" * 200), "a CSRF token too long to be one")
        self.assertEqual(self.key.check(new_nonce(), token), "a wrong CSRF token")

    def test_secret_not_shown(self) -> None:
        self.assertNotIn("sss", repr(self.key))
        self.assertRaises(ValueError, CsrfKey, "a", b"short")

    def test_cookie_names(self) -> None:
        self.assertEqual(cookie_name("guestbook", False), b"okws-csrf-guestbook")
        self.assertEqual(cookie_name("guestbook", True), b"__Host-okws-csrf-guestbook")


class Form(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        return self.csrf_token(request)

    def render_POST(self, request):
        return b"stored"

    def render_PUT(self, request):
        return b"put"


class ResourceTests(SynchronousTestCase):
    """What reaches render_POST, and what gets the site's 403 page."""

    def post(self, resource: ServiceResource = Form(), method: str = "POST", **kwargs) -> tuple[int, bytes]:
        response = self.successResultOf(render(resource, method, body=b"a=1", headers={**FORM, **kwargs.pop("headers", {})}, **kwargs))
        return response.code, response.body

    def test_unsafe_methods_checked(self) -> None:
        for method in ("POST", "PUT"):
            code, body = self.post(method=method)
            self.assertEqual(code, 403, method)
            self.assertIn(b"did not come from this site", body)
        self.assertEqual(self.post(csrf=True), (200, b"stored"))

    def test_form_field_or_header(self) -> None:
        cookie, token = csrf()
        response = self.successResultOf(render(Form(), "POST", headers={**FORM, "Cookie": cookie},
                                               body=b"csrf_token=" + token.encode()))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.post(headers={"Cookie": cookie, "X-CSRF-Token": token}), (200, b"stored"))

    def test_token_without_its_cookie(self) -> None:
        """A token alone, or with another nonce's cookie (one an attacker planted), fails."""
        cookie, token = csrf()
        other, _ = csrf()
        self.assertEqual(self.post(headers={"X-CSRF-Token": token})[0], 403)
        self.assertEqual(self.post(headers={"Cookie": other, "X-CSRF-Token": token})[0], 403)

    def test_other_service(self) -> None:
        """The cookie and token of another service do not pass (name and MAC differ)."""
        cookie, token = csrf("hello")
        self.assertEqual(self.post(headers={"Cookie": cookie.replace("hello", "test"), "X-CSRF-Token": token})[0], 403)

    def test_method_not_allowed_first(self) -> None:
        """A method the resource does not answer is a 405, checked before the token."""
        self.assertEqual(self.post(method="DELETE")[0], 405)

    def test_opt_out(self) -> None:
        """An API with its own authentication opts out per resource, or per method."""

        class Api(Form):
            csrf_methods = frozenset()

        class PutOnly(Form):
            csrf_methods = frozenset({b"PUT"})

        self.assertEqual(self.post(Api()), (200, b"stored"))
        self.assertEqual(self.post(PutOnly()), (200, b"stored"))
        self.assertEqual(self.post(PutOnly(), method="PUT")[0], 403)

    def test_no_secret_fails_closed(self) -> None:
        """Served without a secret (not by okws or testing), every checked request is refused."""
        from twisted.web.test.requesthelper import DummyRequest

        from okws_twisted.service.web import ServiceSite

        request = DummyRequest([b""])
        request.method = b"POST"
        request.site = ServiceSite(Form())
        self.assertIsNone(request.site.csrf)
        self.assertIn("no CSRF secret", Form()._csrfRefusal(request) or "")

    def test_cookie_set_once_and_reused(self) -> None:
        response = self.successResultOf(render(Form()))
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertRegex(cookie, r"^okws-csrf-test=[A-Za-z0-9_-]{24}; Path=/; HttpOnly; SameSite=lax$")
        nonce = cookie.split(";")[0].split("=", 1)[1]
        self.assertEqual(response.body, CsrfKey("test", TEST_CSRF_SECRET).token(nonce.encode()))
        again = self.successResultOf(render(Form(), headers={"Cookie": cookie.split(";")[0]}))
        self.assertIsNone(again.headers.getRawHeaders("set-cookie"))
        self.assertEqual(again.body, response.body)

    def test_tls_cookie(self) -> None:
        """On a TLS connection the cookie is __Host- and Secure (browsers refuse one without)."""

        class Secure(ServiceResource):
            isLeaf = True

            def render_GET(self, request):
                request.isSecure = lambda: True
                return self.csrf_token(request)

        response = self.successResultOf(render(Secure()))
        [cookie] = response.headers.getRawHeaders("set-cookie")
        self.assertRegex(cookie, r"^__Host-okws-csrf-test=[A-Za-z0-9_-]{24}; Path=/; Secure; HttpOnly; SameSite=lax$")


class TemplateTests(SynchronousTestCase):
    FORM = {"form.html": '<input name="csrf_token" value="{{ csrf_token() }}">'}

    def test_template_gets_csrf_token(self) -> None:
        class Page(ServiceResource):
            isLeaf = True

            async def render_GET(self, request):
                return await self.render_template("form.html")

        response = self.successResultOf(render(Page(), templates=self.FORM))
        token = re.search(r'value="([^"]+)"', response.text())
        assert token is not None
        nonce = response.headers.getRawHeaders("set-cookie")[0].split(";")[0].split("=", 1)[1]
        self.assertEqual(token.group(1), CsrfKey("test", TEST_CSRF_SECRET).token(nonce.encode()).decode())

    def test_outside_a_render(self) -> None:
        """A template rendered from a plain callback has no request: csrf_token() fails loudly
        (a 500 and a log saying what to pass), never borrowing another request's token."""

        class Late(ServiceResource):
            isLeaf = True

            def render_GET(self, request):
                d: Deferred[None] = Deferred()
                d.addCallback(lambda _: self.render_template("form.html"))
                self.later = d
                return d

        page = Late()
        pending = render(page, templates=self.FORM)
        page.later.callback(None)
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 500)
        errors = self.flushLoggedErrors()
        self.assertTrue(any("pass csrf_token=self.csrf_token(request)" in str(e.value) for e in errors), errors)
