"""A service whose render fails, for the error log's tracebacks."""

from okws_twisted import ServiceResource


class Failing(ServiceResource):
    isLeaf = True

    def render_GET(self, request):
        raise ValueError("kaboom: the service broke on purpose")
