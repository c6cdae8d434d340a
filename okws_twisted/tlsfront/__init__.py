"""The TLS front (OKWS's okssld): the only process that reads the private keys.

It accepts on the TLS listeners, terminates TLS and hands the dispatcher one end of a socket
pair per decrypted connection, with the connection's TLS facts, over its channel to the
dispatcher.  It loads no web code.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["TLSFront", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.tlsfront.front import TLSFront, start_role

__getattr__ = lazy_face(__name__, {"TLSFront": "front", "start_role": "front"})
