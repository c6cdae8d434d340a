"""The dispatcher (OKWS's okd): accepts connections, reads request heads, hands sockets to services.

Channels: the listening sockets (inherited from the launcher), a handoff channel to each service
instance (L{okws_twisted.wire.handoff}), a templates channel from the publisher (its error
pages), a channel from the TLS front, a control channel to the launcher and a log channel.
It never loads service code, jinja2 or the author API.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["Dispatcher", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.dispatcher.dispatcher import Dispatcher, start_role

__getattr__ = lazy_face(__name__, {"Dispatcher": "dispatcher", "start_role": "dispatcher"})
