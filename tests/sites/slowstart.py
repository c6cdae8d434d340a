"""A service that never finishes starting: its instances are never ready."""

import time

from okws_twisted import ServiceResource


class NeverReady(ServiceResource):
    def __init__(self) -> None:
        super().__init__()
        time.sleep(3600)


class NotAResource:
    """Not a ServiceResource: the start-up check must refuse it."""
