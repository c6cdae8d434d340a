# -*- test-case-name: tests.wire.test_channel -*-
"""
Message channels between okws processes (OKWS's okld/okd RPC channels).

Every channel between two okws processes (launcher to child control,
dispatcher to service handoff) is one end of a ``SOCK_SEQPACKET`` Unix socket
pair.  A seqpacket message arrives whole or not at all, together with the
file descriptors that rode on it, so a message needs no stream framing and a
passed connection can never be paired with the wrong message.

Wire format of one message (version 1)::

    u8 version | u16 meta length | meta (compact JSON object) | payload bytes

``meta["k"]`` names the message kind; each protocol (``handoff``, ``control``)
defines its own kinds.  A payload larger than L{CHUNK} is sent as a first
message with ``meta["more"]`` set to the total payload size, followed by
continuation messages of kind ``"+"`` carrying the rest; the receiver joins
them, so callers never see the split.

The reader drains every queued message at each wakeup (``recvmsg`` until
``EAGAIN``) and hands the whole batch to the receiver at once, so a receiver
can acknowledge a batch with one message.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from twisted.internet import error
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

VERSION = 1
CHUNK = 60 * 1024
MAX_FDS = 16
_HEADER = struct.Struct("!BH")
_RECV_SIZE = CHUNK + 4096
# The largest metadata whose datagram still fits the reader's buffer.
_MAX_META = _RECV_SIZE - _HEADER.size - CHUNK
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
_MAX_MESSAGES_PER_WAKEUP = 256
_CONT = b'{"k":"+"}'


class ChannelError(Exception):
    """The peer sent something that is not a valid message of this protocol."""


@dataclass(frozen=True)
class Message:
    """One received message: its kind, metadata, payload and passed fds.

    The receiver owns C{fds}: it must close each one (or hand it on).
    """

    kind: str
    meta: dict[str, Any]
    payload: bytes = b""
    fds: tuple[int, ...] = field(default=())

    def close_fds(self) -> None:
        """Close the fds that came with a message the receiver will not use."""
        _close_fds(self.fds)


def encode(meta: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    """Encode one logical message into the datagrams that carry it."""
    if len(payload) > CHUNK:
        meta = dict(meta, more=len(payload))
        first, rest = payload[:CHUNK], payload[CHUNK:]
    else:
        first, rest = payload, b""
    head = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    if len(head) > _MAX_META:
        raise ValueError("message metadata too large")
    out = [_HEADER.pack(VERSION, len(head)) + head + first]
    cont = _HEADER.pack(VERSION, len(_CONT)) + _CONT
    for i in range(0, len(rest), CHUNK):
        out.append(cont + rest[i : i + CHUNK])
    return out


def decode(datagram: bytes) -> tuple[dict[str, Any], bytes]:
    """Decode one datagram into its metadata and payload; raise L{ChannelError}."""
    if len(datagram) < _HEADER.size:
        raise ChannelError("short message")
    version, length = _HEADER.unpack_from(datagram)
    if version != VERSION:
        raise ChannelError(f"unsupported channel version {version}")
    end = _HEADER.size + length
    if end > len(datagram):
        raise ChannelError("truncated metadata")
    try:
        meta = json.loads(datagram[_HEADER.size : end])
    except ValueError as e:
        raise ChannelError(f"bad metadata: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("k"), str):
        raise ChannelError("metadata without a kind")
    return meta, datagram[end:]


class _Assembler:
    """Joins a payload split over continuation datagrams back into one message.

    C{max_payload} (if given) bounds the size a first message may declare, so
    a peer cannot make the receiver hold an unbounded payload.
    """

    def __init__(self, max_payload: int | None = None) -> None:
        self.max_payload = max_payload
        self.partial: tuple[dict[str, Any], list[bytes], int, tuple[int, ...]] | None = None

    def add(self, data: bytes, fds: tuple[int, ...]) -> Message | None:
        meta, payload = decode(data)
        if self.partial is not None:
            if meta["k"] != "+" or fds:
                raise ChannelError("expected a continuation")
            first, parts, want, pfds = self.partial
            parts.append(payload)
            have = sum(map(len, parts))
            if have > want:
                raise ChannelError("continuation overruns the declared size")
            if have < want:
                return None
            self.partial = None
            return Message(first["k"], first, b"".join(parts), pfds)
        if meta["k"] == "+":
            raise ChannelError("unexpected continuation")
        more = meta.pop("more", None)
        if more is not None:
            if not isinstance(more, int) or more <= len(payload):
                raise ChannelError("bad continuation size")
            if self.max_payload is not None and more > self.max_payload:
                raise ChannelError(f"a {more}-byte payload is over this channel's limit of {self.max_payload}")
            self.partial = (meta, [payload], more, fds)
            return None
        return Message(meta["k"], meta, payload, fds)

    def discard(self) -> None:
        if self.partial is not None:
            _close_fds(self.partial[3])
            self.partial = None


def _fds_from(anc: list[tuple[int, int, bytes]]) -> tuple[int, ...]:
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return tuple(fds)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of seqpacket sockets, close-on-exec, for a new channel."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@implementer(IReadDescriptor, IWriteDescriptor)
class MessageChannel:
    """One end of a seqpacket channel, driven by the reactor.

    @param receive: called with a list of L{Message} for every batch drained
        at one wakeup.
    @param lost: called once with a L{Failure} when the channel closes (peer
        gone, protocol error, or L{close}).
    @param max_payload: the largest payload accepted from the peer (L{None}:
        no limit); a larger one is a protocol error that closes the channel.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        sock: socket.socket,
        receive: Callable[[list[Message]], None],
        lost: Callable[[Failure], None] = lambda reason: None,
        name: str = "channel",
        max_payload: int | None = None,
    ) -> None:
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._receive = receive
        self._lost = lost
        self._name = name
        self._outq: deque[tuple[bytes, tuple[int, ...]]] = deque()
        self._assembler = _Assembler(max_payload)
        self.connected = True
        reactor.addReader(self)

    # -- sending

    def send(self, meta: dict[str, Any], payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send one message.  The caller keeps ownership of C{fds}: they may be
        closed as soon as this returns (queued messages carry duplicates)."""
        if not self.connected:
            raise error.ConnectionDone(f"{self._name} is closed")
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} fds per message")
        datagrams = encode(meta, payload)
        fdt = tuple(fds)
        for i, dgram in enumerate(datagrams):
            self._send_one(dgram, fdt if i == 0 else ())

    def _send_one(self, dgram: bytes, fds: tuple[int, ...]) -> None:
        if not self._outq:
            try:
                self._sendmsg(dgram, fds)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._fail(e)
                return
            self._reactor.addWriter(self)
        self._outq.append((dgram, tuple(os.dup(fd) for fd in fds)))

    def _sendmsg(self, dgram: bytes, fds: tuple[int, ...]) -> None:
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            self._sock.sendmsg([dgram], anc)
        else:
            self._sock.send(dgram)

    def doWrite(self) -> object:
        while self._outq:
            dgram, fds = self._outq[0]
            try:
                self._sendmsg(dgram, fds)
            except BlockingIOError:
                return None
            except OSError as e:
                return error.ConnectionLost(f"{self._name}: {e}")
            self._outq.popleft()
            _close_fds(fds)
        self._reactor.removeWriter(self)
        return None

    # -- receiving

    def doRead(self) -> object:
        batch: list[Message] = []
        result: object = None
        for _ in range(_MAX_MESSAGES_PER_WAKEUP):
            try:
                data, anc, flags, _addr = self._sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                result = error.ConnectionLost(f"{self._name}: {e}")
                break
            fds = _fds_from(anc)
            if not data and not fds:
                result = error.ConnectionDone(f"{self._name}: peer closed")
                break
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_fds(fds)
                result = error.ConnectionLost(f"{self._name}: truncated message")
                break
            try:
                msg = self._assembler.add(data, fds)
            except ChannelError as e:
                _close_fds(fds)
                result = error.ConnectionLost(f"{self._name}: {e}")
                break
            if msg is not None:
                batch.append(msg)
        if batch:
            self._receive(batch)
        if result is not None and not isinstance(result, error.ConnectionDone):
            # The reactor replaces this reason with a generic one: say it here.
            self.log.warn("{name}: {reason}", name=self._name, reason=result)
        return result

    # -- lifecycle

    def _fail(self, e: Exception) -> None:
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        self.connectionLost(Failure(error.ConnectionLost(f"{self._name}: {e}")))

    def close(self) -> None:
        """Close this end; queued messages that were not sent are dropped."""
        if not self.connected:
            return
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        self.connectionLost(Failure(error.ConnectionDone(f"{self._name}: closed")))

    def connectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        while self._outq:
            _close_fds(self._outq.popleft()[1])
        self._assembler.discard()
        self._sock.close()
        self._lost(reason)

    @property
    def backlog(self) -> int:
        """Datagrams queued because the peer is not reading (each at most L{CHUNK} bytes of payload):
        a sender that must not buffer without bound checks this and gives up on the peer."""
        return len(self._outq)

    def fileno(self) -> int:
        return self._fd if self.connected else -1

    def logPrefix(self) -> str:
        return self._name


def read_one_blocking(sock: socket.socket, timeout: float | None = None) -> Message:
    """Read one whole message from a blocking socket.

    A child calls this once, before its reactor runs, to receive its
    configuration; it raises L{ChannelError} on EOF or a bad message.
    """
    sock.settimeout(timeout)
    assembler = _Assembler()
    while True:
        data, anc, flags, _ = sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
        fds = _fds_from(anc)
        if not data and not fds:
            raise ChannelError("channel closed before the first message")
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ChannelError("truncated message")
            msg = assembler.add(data, fds)
        except ChannelError:
            _close_fds(fds)
            assembler.discard()
            raise
        if msg is not None:
            return msg
