"""A service instance (one of OKWS's services, with its libaok runtime).

One long-lived process per instance of a web service: it adopts the client connections the
dispatcher hands over and serves them with the author's L{ServiceResource} on twisted.web.
Channels: handoff (to the dispatcher), templates (to the publisher), db (to its database proxy,
for a service with C{db}), log (to the log daemon), control (to the launcher).
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["ServiceResource", "ServiceRuntime", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.service.resource import ServiceResource
    from okws_twisted.service.runtime import ServiceRuntime, start_role

__getattr__ = lazy_face(__name__, {"ServiceResource": "resource", "ServiceRuntime": "runtime", "start_role": "runtime"})
