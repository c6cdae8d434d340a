"""A service that answers with a large body (C{?mib=N}, default 32): for back-pressure tests."""

from okws_twisted import ServiceResource


class Big(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        mib = int(request.args.get(b"mib", [b"32"])[0])
        request.setHeader(b"content-type", b"application/octet-stream")
        return b"x" * (mib << 20)
