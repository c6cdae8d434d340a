"""Static files (no OKWS counterpart): the resource a C{[static:NAME]} pool serves.

A static pool runs the ordinary service runtime with L{StaticFiles} as its resource, loaded by
name: it is routed, handed connections, relaunched and logged as a service is, jailed with only
its root (read-only), no site code and no network.  Nothing here imports the service runtime
or jinja2.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["StaticFiles"]

if TYPE_CHECKING:
    from okws_twisted.static.resource import StaticFiles

__getattr__ = lazy_face(__name__, {"StaticFiles": "resource"})
