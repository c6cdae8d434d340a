# -*- test-case-name: tests.wire.test_relay -*-
"""
The relay: two stream transports joined, with back-pressure both ways (OKWS's okssld's relay).

Two processes relay bytes between a client and another socket: the TLS front (the client's TLS
session <-> one end of a socket pair to the dispatcher) and the dispatcher for services with
C{isolation = request} (the client's connection <-> one end of a socket pair to a service
instance).  Both use L{Splice}, the one relay.

A splice never buffers without bound: each side is the other's streaming producer, so a side
that does not read (its write buffer over the transport's high-water mark) pauses reading from
the other side, and the kernel's socket buffers push back on the peer from there.  Its owner
may also hold reading from a side (L{Splice.hold}: the dispatcher reads no more of a client's
requests while a response is outstanding); reading resumes only when neither the owner nor
back-pressure holds it.

By default the bytes one side receives are written to the other as they are, and when one
side is lost the other is closed once its buffered bytes are sent (L{Splice.lost}); an owner
that relays with rules of its own (the dispatcher frames what it relays) gives its own
forwarding functions and decides about closes itself, after L{Splice.part}.

The sides are Twisted transports providing C{ITransport}, C{IConsumer} and C{IPushProducer}
(a TLS transport, Twisted's own Unix transport, L{okws_twisted.wire.transport.SocketTransport}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["Splice"]


@implementer(IPushProducer)
class _Flow:
    """Reading from one side, as the other side's producer: paused while the other cannot write."""

    __slots__ = ("_splice", "_side")

    def __init__(self, splice: "Splice", side: Any) -> None:
        self._splice = splice
        self._side = side

    def pauseProducing(self) -> None:
        self._splice._pushed[id(self._side)] = True
        self._side.pauseProducing()

    def resumeProducing(self) -> None:
        self._splice._pushed[id(self._side)] = False
        self._splice._update(self._side)

    def stopProducing(self) -> None:
        # The consumer (the other side) is gone: its protocol tells the splice's owner, which
        # decides (L{Splice.lost}, or a policy of its own).
        pass


class Splice:
    """Two transports C{a} and C{b}, each the other's producer, bytes forwarded between them."""

    def __init__(
        self,
        a: Any,
        b: Any,
        a_to_b: Callable[[bytes], None] | None = None,
        b_to_a: Callable[[bytes], None] | None = None,
    ) -> None:
        """
        @param a_to_b: what to do with bytes read from C{a} (default: write them to C{b}).
        @param b_to_a: likewise, bytes read from C{b}.
        """
        self.a = a
        self.b = b
        self._a_to_b = a_to_b or b.write
        self._b_to_a = b_to_a or a.write
        self._held = {id(a): False, id(b): False}
        self._pushed = {id(a): False, id(b): False}
        self.joined = True
        # Back-pressure both ways: each transport pauses the other when its write buffer is full.
        b.registerProducer(_Flow(self, a), True)
        a.registerProducer(_Flow(self, b), True)

    def from_a(self, data: bytes) -> None:
        """The protocol on C{a} received C{data}."""
        self._a_to_b(data)

    def from_b(self, data: bytes) -> None:
        """The protocol on C{b} received C{data}."""
        self._b_to_a(data)

    def hold(self, side: Any) -> None:
        """Read nothing more from C{side} until L{release}."""
        self._held[id(side)] = True
        side.pauseProducing()

    def release(self, side: Any) -> None:
        """Read from C{side} again (unless the other side's back-pressure still holds it)."""
        self._held[id(side)] = False
        self._update(side)

    def _update(self, side: Any) -> None:
        if not self.joined:
            return
        key = id(side)
        if self._held[key] or self._pushed[key]:
            side.pauseProducing()
        else:
            side.resumeProducing()

    def part(self) -> None:
        """Unjoin the two transports: no back-pressure between them any more; both stay open."""
        if not self.joined:
            return
        self.joined = False
        self.a.unregisterProducer()
        self.b.unregisterProducer()

    def lost(self, side: Any) -> None:
        """C{side} is gone: close the other once what is written to it is sent."""
        other = self.b if side is self.a else self.a
        self.part()
        other.loseConnection()
