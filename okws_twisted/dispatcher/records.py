# -*- test-case-name: tests.dispatcher.test_records -*-
"""
The dispatcher's record of every connection it handed to a service (okd kept none).

A service hands a kept-alive connection back when its next request belongs
elsewhere.  The service may be compromised, so the handback is checked, never
trusted: the dispatcher takes back only a connection it handed to that same
instance and has not had back since, and only if the descriptor is that very
socket (its C{SO_COOKIE}, a 64-bit number the kernel gives each socket and
never reuses, read before the dispatcher closed its own copy).  The client's
address (the PROXY protocol's, where one was read), the local address and the
TLS facts come from the record, never from the service's message.

The dispatcher also hands instances one end of a socket pair for each run of
requests it relays to them (C{isolation = request}); such a record is of kind
L{RELAY}: an instance never hands a pair back (the dispatcher keeps the
client's socket), so a handback naming one is refused.

A record lives from the handoff (L{ConnectionLedger.handed}) until the
connection comes back (L{ConnectionLedger.take_back}), the service reports
it ended (L{ConnectionLedger.ended}: its ``ack`` lists it in C{closed}) or
refused it, or the channel to that instance goes away
(L{ConnectionLedger.holder_gone}).  What an instance holds counts against its
connection cap, so the records of one instance never outnumber its cap: an
instance that never reports its connections ended stops getting new ones,
and the ledger stays bounded however many connections pass through.

L{ConnectionLedger} is pure logic; L{socket_identity} is the one system call.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Hashable

from twisted.internet.interfaces import IAddress

#: C{SO_COOKIE} (Linux 4.12); Python 3.11's socket module lacks the name.
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
_COOKIE = struct.Struct("=Q")

Identity = int | tuple[int, int]

#: A client's own socket, handed off (C{isolation = connection}).
CLIENT = "client"
#: The instance's end of a socket pair the dispatcher relays a client's requests over.
RELAY = "relay"


def socket_identity(fd: int | socket.socket) -> Identity:
    """What tells this socket from every other: its C{SO_COOKIE}.

    The same socket passed between processes or duplicated keeps its
    cookie; another socket never has it.  On a kernel without cookies, the
    socket's C{(st_dev, st_ino)}, unique while the socket exists.  Given the
    socket object the dispatcher already holds, no wrapper is made for the read.

    @raise OSError: if C{fd} is not a socket (C{ENOTSOCK}) or not open.
    """
    if isinstance(fd, socket.socket):
        return _identity(fd)
    # Family and type given: no probing system calls (getsockopt itself fails with ENOTSOCK on
    # anything but a socket).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        return _identity(sock)
    finally:
        sock.detach()


def _identity(sock: socket.socket) -> Identity:
    try:
        return _COOKIE.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, _COOKIE.size))[0]
    except OSError as e:
        if e.errno != getattr(os, "ENOPROTOOPT", 92):
            raise
    st = os.fstat(sock.fileno())
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class ConnectionRecord:
    """The dispatcher's facts about one handed-off connection."""

    id: int
    identity: Identity
    peer: IAddress
    host: IAddress
    tls: dict[str, str] | None
    holder: Hashable
    #: The TLS front's certificate choice (L{okws_twisted.wire.transport.SocketTransport.cert}).
    cert: object = None
    #: L{CLIENT} or L{RELAY}.
    kind: str = CLIENT


class HandbackRefused(Exception):
    """A handback the dispatcher will not take; C{str(e)} says why."""


class ConnectionLedger:
    """Every connection handed to an instance and not yet back or ended, by id.

    States of a record: sent (the ``conn`` message is on its way) -> held
    (the instance acknowledged it) -> gone (back, ended, refused, or its
    holder is gone).  Only a held connection can come back or end.
    """

    def __init__(self) -> None:
        self._records: dict[int, ConnectionRecord] = {}
        self._held: dict[Hashable, set[int]] = {}
        self._acked: set[int] = set()

    def __len__(self) -> int:
        return len(self._records)

    def count(self, holder: Hashable) -> int:
        """How many connections C{holder} has (sent or held): what its cap counts."""
        return len(self._held.get(holder, ()))

    def get(self, conn_id: int) -> ConnectionRecord | None:
        return self._records.get(conn_id)

    def handed(self, record: ConnectionRecord) -> None:
        """A connection was just handed to C{record.holder} under C{record.id}."""
        if record.id in self._records:
            raise ValueError(f"connection {record.id} is already recorded")
        self._records[record.id] = record
        self._held.setdefault(record.holder, set()).add(record.id)

    def acknowledged(self, holder: Hashable, conn_id: int) -> bool:
        """C{holder} acknowledged C{conn_id}; C{False} if it was not sent to C{holder}."""
        record = self._records.get(conn_id)
        if record is None or record.holder != holder:
            return False
        self._acked.add(conn_id)
        return True

    def take_back(self, holder: Hashable, conn_id: int, identity: Identity | None) -> ConnectionRecord:
        """C{holder} hands back C{conn_id} with a socket whose identity is C{identity}.

        Returns the record (and forgets it) if the handback is genuine.

        @param identity: L{socket_identity} of the descriptor that came with
            the handback, L{None} if it is not a socket.
        @raise HandbackRefused: if C{holder} does not hold C{conn_id} now (it
            never did, another instance does, it was already handed back or
            reported ended), if it has not acknowledged it yet, or if the
            descriptor is not that socket.  The record is kept: the
            connection is still the real holder's.
        """
        record = self._records.get(conn_id)
        if record is None:
            raise HandbackRefused(f"connection {conn_id} is not held by any instance (never handed out, or already back)")
        if record.holder != holder:
            raise HandbackRefused(f"connection {conn_id} is held by another instance")
        if record.kind == RELAY:
            raise HandbackRefused(f"connection {conn_id} is a relay pair, which is never handed back")
        if conn_id not in self._acked:
            raise HandbackRefused(f"connection {conn_id} was never acknowledged")
        if identity is None:
            raise HandbackRefused(f"the descriptor handed back as connection {conn_id} is not a socket")
        if identity != record.identity:
            raise HandbackRefused(f"the socket handed back as connection {conn_id} is not that connection")
        self._forget(record)
        return record

    def ended(self, holder: Hashable, ids: list[int]) -> int:
        """C{holder} says these acknowledged connections ended; returns how many it held.

        Ids C{holder} does not hold, or has not acknowledged, are ignored: an
        instance can only give up its own connections.
        """
        dropped = 0
        for conn_id in ids:
            record = self._records.get(conn_id)
            if record is not None and record.holder == holder and conn_id in self._acked:
                self._forget(record)
                dropped += 1
        return dropped

    def drop(self, holder: Hashable, conn_id: int) -> bool:
        """Forget C{conn_id} sent to C{holder} (refused, the handoff failed, or the
        dispatcher closed its end of that relay pair)."""
        record = self._records.get(conn_id)
        if record is None or record.holder != holder:
            return False
        self._forget(record)
        return True

    def holder_gone(self, holder: Hashable) -> int:
        """The channel to C{holder} is gone: forget all it had; returns how many."""
        ids = self._held.pop(holder, set())
        for conn_id in ids:
            del self._records[conn_id]
            self._acked.discard(conn_id)
        return len(ids)

    def _forget(self, record: ConnectionRecord) -> None:
        del self._records[record.id]
        self._acked.discard(record.id)
        held = self._held.get(record.holder)
        if held is not None:
            held.discard(record.id)
            if not held:
                del self._held[record.holder]
