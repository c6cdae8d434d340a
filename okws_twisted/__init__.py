"""
okws-twisted: OKWS, the privilege-separated web server, on Twisted.

The public face for service authors is L{ServiceResource}; testing helpers are
in L{okws_twisted.testing}. Importing this package installs no reactor and
loads no templating, so any process role may import it cheaply.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["ServiceResource", "__version__"]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from okws_twisted.resource import ServiceResource


def __getattr__(name: str) -> Any:
    # Imported on first use, so that processes that never run site code (the
    # launcher, the dispatcher) do not load the author API by importing a
    # sibling module of this package.
    if name == "ServiceResource":
        from okws_twisted.resource import ServiceResource

        return ServiceResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
