"""The example form with its CSRF check off, for tests about HTTP framing, not forms.

The request corpus (tests/http_corpus.py) posts bodies of every framing to /form and expects
the form's answer; tokens would only hide what it is about.  The check itself is tested in
tests/service/test_csrf.py and, in a browser, in tests/test_e2e_browser.py.  (Written out
rather than a subclass of services.form's: a service's jail shows only its own package.)
"""

import os

from okws_twisted import ServiceResource


class UncheckedGuestbook(ServiceResource):
    isLeaf = True
    csrf_methods = frozenset()

    async def render_GET(self, request):
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        return await self.render_template("form.html", message=None)

    async def render_POST(self, request):
        request.setHeader(b"X-Okws-Pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        message = (request.args.get(b"message") or [b""])[0].decode("utf-8", "replace")
        return await self.render_template("form.html", message=message)
