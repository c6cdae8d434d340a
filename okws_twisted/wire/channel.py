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

The reader drains the queued messages at each wakeup (``recvmsg`` until
``EAGAIN``, or until the batch holds L{ChannelLimits.max_batch} bytes) and
hands the whole batch to the receiver at once, so a receiver can acknowledge
a batch with one message.  (When the first datagram leaves nothing queued,
by the kernel's count, ``FIONREAD``, the reader stops there: most wakeups
bring one message, and an ``EAGAIN`` is an exception.)

Metadata is compact JSON.  A protocol's frequent kinds whose metadata is the
kind alone are registered (L{register_kinds}): their header is written and
read without JSON, as the same bytes.

Every end has L{ChannelLimits}, checked before anything is kept: the peer is
another process, and every message from a less privileged one is an
attacker's input.  A payload larger than C{max_payload} (declared by the first
datagram of a split message, or carried by a single one), metadata larger than
C{max_meta}, anything that is not a valid datagram, and a peer that stops
reading while more than C{max_queued} bytes wait for it all close the channel
with L{ChannelViolation}.  The table of limits per channel kind is
L{okws_twisted.wire.limits}.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import termios
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
# Plain ints: socket's are IntFlag members, and C{int & IntFlag} runs enum's Python C{__rand__}
# (about a microsecond per test, on every datagram read).
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_FIONREAD = termios.FIONREAD
_NOTHING_QUEUED = bytes(array.array("i", [0]).itemsize)
#: The most metadata any okws process sends in one datagram (L{encode} refuses more).
MAX_META = _MAX_META


class ChannelError(Exception):
    """The peer sent something that is not a valid message of this protocol."""


class ChannelViolation(error.ConnectionLost):
    """Why a channel was closed: the peer broke the protocol or a limit.

    A receiver's C{lost} callback tells it from the peer simply going away
    (L{error.ConnectionDone}, or a plain L{error.ConnectionLost} for a reset).
    """


@dataclass(frozen=True)
class ChannelLimits:
    """What one end of a channel accepts and holds; see L{okws_twisted.wire.limits}.

    @ivar max_payload: the largest payload of one message from the peer, split
        or not, in bytes.  A split message declares its size in its first
        datagram, so a larger one is refused before any of it is kept.
    @ivar max_meta: the largest metadata of one datagram, in bytes.
    @ivar max_batch: payload bytes handed to the receiver at one wakeup (the
        batch always holds at least one message); the rest stays in the
        kernel until the next wakeup.
    @ivar max_queued: bytes this end keeps for a peer that does not read; more
        closes the channel (queued datagrams hold duplicates of their fds).
    @ivar send_max_payload: the largest payload L{MessageChannel.send} sends
        (the peer's C{max_payload}); a larger one is a bug on this side and
        raises L{ValueError}.  L{None}: not checked here.
    """

    max_payload: int
    max_meta: int = MAX_META
    max_batch: int = 1 << 20
    max_queued: int = 64 << 20
    send_max_payload: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_payload", "max_meta", "max_batch", "max_queued"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")


@dataclass(slots=True)
class Message:
    """One received message: its kind, metadata, payload and passed fds.

    The receiver owns C{fds}: it must close each one (or hand it on).  Treat it as read-only
    (it is not frozen only because a frozen dataclass costs four times as much to build, and
    one is built for every message).
    """

    kind: str
    meta: dict[str, Any]
    payload: bytes = b""
    fds: tuple[int, ...] = field(default=())
    #: Some fds that rode on this message never arrived (this process is at
    #: its descriptor limit: the kernel cut them, C{MSG_CTRUNC}).
    fds_lost: bool = False

    def close_fds(self) -> None:
        """Close the fds that came with a message the receiver will not use."""
        _close_fds(self.fds)


#: One compact encoder for every message (json.dumps with separators builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: The metadata's decoder (C{json.loads} on bytes first guesses their encoding: it is UTF-8).
_DECODER = json.JSONDecoder()


def compact_encoder(encoder: json.JSONEncoder, sample: Any, encoding: str) -> Callable[[Any], bytes]:
    """C{encoder.encode(obj).encode(encoding)}, without the C encoder C{encode} builds afresh for
    every call.

    C{JSONEncoder.encode} makes a new C encoder object per call, about half of what encoding
    a small object costs (a handoff's metadata, a database call).  Where the standard library
    has that C encoder (CPython), one is made here with C{encoder}'s own settings, checked
    against C{encoder.encode} on C{sample}, and reused; otherwise C{encoder.encode}.  No
    circular-reference check: only for objects okws builds itself, never a peer's input.
    (C{json.encoder.c_make_encoder} is CPython's private name: tests/wire/test_channel.py
    C{FastJSONTests} fails if the fast path is lost.)
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None and encoder.indent is None and not encoder.sort_keys and not encoder.skipkeys:
        quote = json.encoder.encode_basestring_ascii if encoder.ensure_ascii else json.encoder.encode_basestring
        try:
            one = make(None, encoder.default, quote, None, encoder.key_separator, encoder.item_separator,
                       False, False, encoder.allow_nan)
            if "".join(one(sample, 0)) == encoder.encode(sample):
                return lambda obj: "".join(one(obj, 0)).encode(encoding)
        except Exception:  # pragma: no cover - another Python's json module
            pass
    return lambda obj: encoder.encode(obj).encode(encoding)  # pragma: no cover


def fast_decoder(decoder: json.JSONDecoder) -> Callable[[bytes], Any]:
    """C{decoder.decode(data.decode("utf-8"))}, minus C{decode}'s Python wrapper for text that is
    one JSON value exactly.

    C{JSONDecoder.decode} skips whitespace around the value with two regular expressions and
    wraps C{raw_decode}: more than the scan of a short object.  The scan is tried at offset 0
    first; text it does not take whole (leading or trailing whitespace, or no value at all)
    goes to C{decoder.decode}, which raises its usual errors.  Same values, same exceptions
    (bytes that are not UTF-8: C{UnicodeDecodeError}, a C{ValueError}).
    (C{JSONDecoder.scan_once} is undocumented: C{FastJSONTests} pins it.)
    """
    scan = decoder.scan_once
    decode = decoder.decode

    def loads(data: bytes) -> Any:
        text = data.decode("utf-8")
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decode(text)
        if end != len(text):
            return decode(text)
        return value

    return loads


_encode_meta = compact_encoder(
    _ENCODER, {"k": "conn", "id": 7, "peer": ["tcp", "127.0.0.1", 1], "x": [True, None, 1.5, "\u00e9\n\""], "e": {}},
    "ascii",
)
_decode_meta = fast_decoder(_DECODER)

#: Kinds often sent with no other metadata: C{{"k": kind}}'s datagram header and the kind, both ways
#: (L{register_kinds}).
_KIND_HEADS: dict[str, bytes] = {}
_HEAD_KINDS: dict[bytes, str] = {}


def register_kinds(*kinds: str) -> None:
    """Messages of these kinds whose metadata is the kind alone skip JSON both ways.

    The header is encoded once here by the encoder every message uses, so the bytes are the
    ones L{encode} would write and L{decode} would read: the same messages are accepted and
    refused.  For a protocol's hot message kinds (the database channel's).
    """
    for kind in kinds:
        head = _encode_meta({"k": kind})
        _KIND_HEADS[kind] = _HEADER.pack(VERSION, len(head)) + head
        _HEAD_KINDS[head] = kind


def encode(meta: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    """Encode one logical message into the datagrams that carry it."""
    if len(payload) <= CHUNK and len(meta) == 1:
        kind = meta.get("k")
        if type(kind) is str:
            header = _KIND_HEADS.get(kind)
            if header is not None:
                return [header + payload]
    if len(payload) > CHUNK:
        meta = dict(meta, more=len(payload))
        first, rest = payload[:CHUNK], payload[CHUNK:]
    else:
        first, rest = payload, b""
    head = _encode_meta(meta)
    if len(head) > _MAX_META:
        raise ValueError("message metadata too large")
    out = [_HEADER.pack(VERSION, len(head)) + head + first]
    cont = _HEADER.pack(VERSION, len(_CONT)) + _CONT
    for i in range(0, len(rest), CHUNK):
        out.append(cont + rest[i : i + CHUNK])
    return out


def decode(datagram: bytes, max_meta: int = MAX_META) -> tuple[dict[str, Any], bytes]:
    """Decode one datagram into its metadata and payload; raise L{ChannelError}."""
    if len(datagram) < _HEADER.size:
        raise ChannelError("short message")
    version, length = _HEADER.unpack_from(datagram)
    if version != VERSION:
        raise ChannelError(f"unsupported channel version {version}")
    if length > max_meta:
        raise ChannelError(f"{length} bytes of metadata, over this channel's limit of {max_meta}")
    end = _HEADER.size + length
    if end > len(datagram):
        raise ChannelError("truncated metadata")
    head = datagram[_HEADER.size : end]
    kind = _HEAD_KINDS.get(head)
    if kind is not None:
        return {"k": kind}, datagram[end:]
    try:
        meta = _decode_meta(head)
    except (ValueError, RecursionError) as e:
        # RecursionError: JSON nested deeper than the parser goes.
        raise ChannelError(f"bad metadata: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("k"), str):
        raise ChannelError("metadata without a kind")
    return meta, datagram[end:]


class _Assembler:
    """Joins a payload split over continuation datagrams back into one message.

    C{limits.max_payload} bounds the size a first message may declare (and
    the payload of a single datagram), so a peer cannot make the receiver
    hold more than that.  A running total keeps the work per continuation
    constant: joining is linear in the message's size.
    """

    def __init__(self, limits: ChannelLimits) -> None:
        self.limits = limits
        self.partial: tuple[dict[str, Any], list[bytes], int, tuple[int, ...], bool] | None = None
        self.have = 0

    def add(self, data: bytes, fds: tuple[int, ...], fds_lost: bool = False) -> Message | None:
        meta, payload = decode(data, self.limits.max_meta)
        if self.partial is not None:
            if meta["k"] != "+" or fds or fds_lost:
                raise ChannelError("expected a continuation")
            first, parts, want, pfds, lost = self.partial
            self.have += len(payload)
            if self.have > want:
                raise ChannelError("continuation overruns the declared size")
            parts.append(payload)
            if self.have < want:
                return None
            self.partial = None
            return Message(first["k"], first, b"".join(parts), pfds, lost)
        if meta["k"] == "+":
            raise ChannelError("unexpected continuation")
        more = meta.pop("more", None)
        limit = self.limits.max_payload
        if more is not None:
            if not isinstance(more, int) or isinstance(more, bool) or more <= len(payload):
                raise ChannelError("bad continuation size")
            if more > limit:
                raise ChannelError(f"a {more}-byte payload is over this channel's limit of {limit}")
            self.partial = (meta, [payload], more, fds, fds_lost)
            self.have = len(payload)
            return None
        if len(payload) > limit:
            raise ChannelError(f"a {len(payload)}-byte payload is over this channel's limit of {limit}")
        return Message(meta["k"], meta, payload, fds, fds_lost)

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
    @param lost: called once with a L{Failure} when the channel closes: the
        peer went away (L{error.ConnectionDone}, or L{error.ConnectionLost}
        for a reset), broke the protocol or a limit (L{ChannelViolation}), or
        this end called L{close} (then L{closed_here} is true).
    @param limits: what this end accepts from the peer and queues for it.

    @ivar closed_here: C{True} once L{close} was called on this end.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorFDSet,
        sock: socket.socket,
        receive: Callable[[list[Message]], None],
        lost: Callable[[Failure], None] = lambda reason: None,
        name: str = "channel",
        *,
        limits: ChannelLimits,
    ) -> None:
        sock.setblocking(False)
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._receive = receive
        self._lost = lost
        self._name = name
        self._outq: deque[tuple[bytes, tuple[int, ...]]] = deque()
        self._queued = 0
        self.limits = limits
        self._assembler = _Assembler(limits)
        self._inq = bytearray(_NOTHING_QUEUED)
        self.connected = True
        self.closed_here = False
        reactor.addReader(self)

    def set_limits(self, limits: ChannelLimits) -> None:
        """New limits from the next datagram on (after a reload)."""
        self.limits = limits
        self._assembler.limits = limits

    # -- sending

    def send(self, meta: dict[str, Any], payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """Send one message.  The caller keeps ownership of C{fds}: they may be
        closed as soon as this returns (queued messages carry duplicates)."""
        if not self.connected:
            raise error.ConnectionDone(f"{self._name} is closed")
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} fds per message")
        limit = self.limits.send_max_payload
        if limit is not None and len(payload) > limit:
            raise ValueError(f"{self._name}: a {len(payload)}-byte payload is over the peer's limit of {limit}")
        datagrams = encode(meta, payload)
        if not fds and len(datagrams) == 1:
            self._send_one(datagrams[0], ())
            return
        fdt = tuple(fds)
        for i, dgram in enumerate(datagrams):
            self._send_one(dgram, fdt if i == 0 else ())

    def _send_one(self, dgram: bytes, fds: tuple[int, ...]) -> None:
        if not self._outq:
            try:
                if fds:
                    self._sendmsg(dgram, fds)
                else:
                    self._sock.send(dgram)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._fail(e)
                return
            self._reactor.addWriter(self)
        self._queued += len(dgram)
        if self._queued > self.limits.max_queued:
            self._fail(ChannelViolation(f"{self._name}: the peer reads nothing ({self._queued} bytes waiting)"))
            return
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
                self._fail(e)
                return None
            self._outq.popleft()
            self._queued -= len(dgram)
            _close_fds(fds)
        self._reactor.removeWriter(self)
        return None

    # -- receiving

    def doRead(self) -> object:
        batch: list[Message] = []
        size = 0
        result: object = None
        max_batch = self.limits.max_batch
        recvmsg = self._sock.recvmsg
        for i in range(_MAX_MESSAGES_PER_WAKEUP):
            if size >= max_batch:
                break  # the rest waits in the kernel: other descriptors get their turn
            if i == 1 and not self._more_queued():
                break
            try:
                data, anc, flags, _addr = recvmsg(_RECV_SIZE, _ANC_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                result = error.ConnectionLost(f"{self._name}: {e}")
                break
            fds = _fds_from(anc) if anc else ()
            if not data and not fds:
                result = error.ConnectionDone(f"{self._name}: peer closed")
                break
            if flags & _MSG_TRUNC:
                _close_fds(fds)
                result = ChannelViolation(f"{self._name}: a datagram longer than any valid message")
                break
            try:
                # MSG_CTRUNC: this process is out of descriptors and the kernel
                # dropped some that rode on the message.  The message itself is
                # whole: its receiver decides (a service refuses that one
                # connection), so the channel stays open.
                msg = self._assembler.add(data, fds, bool(flags & _MSG_CTRUNC))
            except ChannelError as e:
                _close_fds(fds)
                result = ChannelViolation(f"{self._name}: {e}")
                break
            if msg is not None:
                batch.append(msg)
                size += len(msg.payload)
        if batch:
            self._receive(batch)
        if result is not None and self.connected:
            if not isinstance(result, error.ConnectionDone):
                self.log.warn("{name}: {reason}", name=self._name, reason=result)
            # Closed here rather than by the reactor, which would replace the
            # reason with a generic one: the receiver's C{lost} gets the real one.
            self._lose(result)  # type: ignore[arg-type]
        return None

    def _more_queued(self) -> bool:
        """Whether another datagram may wait, after the first of a wakeup was read.

        Most wakeups bring one message: the kernel's count of queued bytes (C{FIONREAD}, one
        C{ioctl}) says so for a third of what reading on to C{EAGAIN} costs (an exception).  A
        batch still drains to C{EAGAIN}.  A zero-length datagram counts no bytes: it is read at
        the next wakeup (the reactor polls level-triggered), as is anything that arrives after.
        """
        try:
            fcntl.ioctl(self._fd, _FIONREAD, self._inq, True)
        except OSError:
            return True  # the next read tells
        return self._inq != _NOTHING_QUEUED

    # -- lifecycle

    def _fail(self, e: Exception) -> None:
        if not isinstance(e, error.ConnectionLost):
            e = error.ConnectionLost(f"{self._name}: {e}")
        self._lose(e)

    def _lose(self, reason: Exception) -> None:
        if not self.connected:
            return
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        self.connectionLost(Failure(reason))

    def refuse(self, why: str) -> None:
        """Close because the peer broke this protocol's rules.

        For what only the receiver can judge (a message well formed but not
        allowed): the C{lost} callback gets a L{ChannelViolation}, as for
        anything the channel itself refuses.
        """
        self.log.warn("{name}: {why}", name=self._name, why=why)
        self._lose(ChannelViolation(f"{self._name}: {why}"))

    def close(self) -> None:
        """Close this end; queued messages that were not sent are dropped."""
        if not self.connected:
            return
        self.closed_here = True
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        self.connectionLost(Failure(error.ConnectionDone(f"{self._name}: closed")))

    def connectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        while self._outq:
            _close_fds(self._outq.popleft()[1])
        self._queued = 0
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


def read_one_blocking(sock: socket.socket, timeout: float | None, limits: ChannelLimits) -> Message:
    """Read one whole message from a blocking socket, within C{limits}.

    A child calls this once, before its reactor runs, to receive its
    configuration; it raises L{ChannelError} on EOF or a bad message.
    """
    sock.settimeout(timeout)
    assembler = _Assembler(limits)
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
