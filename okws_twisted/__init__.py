"""
okws-twisted: OKWS, the privilege-separated web server, on Twisted.

The public face for service authors is L{ServiceResource} and the errors its
C{self.db} calls fail with (L{DatabaseError} and, below it, L{QueryRefused},
L{DatabaseUnavailable}, L{QueryFailed}); testing helpers are in
L{okws_twisted.testing}. Importing this package installs no reactor and
loads no templating, so any process role may import it cheaply.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = [
    "DatabaseError",
    "DatabaseUnavailable",
    "QueryFailed",
    "QueryRefused",
    "ServiceResource",
    "__version__",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from okws_twisted.service.database import DatabaseError, DatabaseUnavailable, QueryFailed, QueryRefused
    from okws_twisted.service.resource import ServiceResource

# Imported on first use, so that processes that never run site code (the launcher, the
# dispatcher) do not load the author API by importing a sibling module of this package.
__getattr__ = lazy_face(
    __name__,
    {
        "ServiceResource": "service.resource",
        **dict.fromkeys(["DatabaseError", "DatabaseUnavailable", "QueryFailed", "QueryRefused"], "service.database"),
    },
)
