"""A service that renders whichever template the request names, for the template e2e tests.

C{GET /tpl?t=NAME&k=v...} renders template NAME with the other query
arguments as its context.  Letting the client choose the name is what a
real service must never do; here it is how the tests ask for names that
must be refused.
"""

import os

from okws_twisted import ServiceResource


class Pages(ServiceResource):
    isLeaf = True

    async def render_GET(self, request):
        request.setHeader(b"x-okws-pid", os.environ.get("OKWS_PID", str(os.getpid())).encode())
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        return await self.render_template(args.pop("t", ""), **args)
