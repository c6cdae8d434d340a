"""
Tests for L{okws_twisted.wire.channel}: seqpacket message channels with fd passing.

The wire format (L{encode}, L{decode}, continuation joining) is tested as pure
logic.  L{MessageChannel} is tested over real C{SOCK_SEQPACKET} socket pairs
driven by the real reactor: passed descriptors are checked on the receiving
side by the kernel (C{fstat}, reading what was written through them), and
closed descriptors by the end of file seen on the other end of a pipe.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import resource
import struct
import termios
import threading
import time

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from okws_twisted.wire import channel, dbchannel, dbvalues
from okws_twisted.wire.channel import (
    CHUNK,
    MAX_FDS,
    ChannelLimits,
    VERSION,
    ChannelError,
    ChannelViolation,
    Message,
    MessageChannel,
    decode,
    encode,
    read_one_blocking,
    socketpair,
)

HEADER = struct.Struct("!BH")
#: Limits that let every test message through.
ANY_SIZE = ChannelLimits(max_payload=1 << 30)
CONT = HEADER.pack(VERSION, 9) + b'{"k":"+"}'


def raw(meta: object, payload: bytes = b"", version: int = VERSION) -> bytes:
    """One datagram with the given metadata, built without L{encode}."""
    head = json.dumps(meta, separators=(",", ":")).encode()
    return HEADER.pack(version, len(head)) + head + payload


def send_raw(sock: socket.socket, datagram: bytes, fds: tuple[int, ...] = ()) -> None:
    """Send one datagram, with C{fds} riding on it, bypassing L{MessageChannel}."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([datagram], anc)


def open_fds() -> int:
    """How many descriptors this process holds, as the kernel counts them."""
    return len(os.listdir("/proc/self/fd"))


def pipe_closed_everywhere(read_end: int) -> bool:
    """C{True} if no process holds the write end of the pipe any more (EOF)."""
    os.set_blocking(read_end, False)
    try:
        return os.read(read_end, 1) == b""
    except BlockingIOError:
        return False


class EncodeTests(SynchronousTestCase):
    """L{encode} builds the documented datagrams."""

    def test_small(self) -> None:
        self.assertEqual(
            encode({"k": "x", "n": 1}, b"abc"),
            [b"\x01\x00\x0f" + b'{"k":"x","n":1}' + b"abc"],
        )

    def test_noPayload(self) -> None:
        self.assertEqual(encode({"k": "ack"}), [b"\x01\x00\x0b" + b'{"k":"ack"}'])

    def test_exactlyOneChunk(self) -> None:
        payload = b"p" * CHUNK
        (dgram,) = encode({"k": "x"}, payload)
        self.assertEqual(decode(dgram), ({"k": "x"}, payload))

    def test_continuations(self) -> None:
        payload = bytes(range(256)) * (CHUNK * 2 // 256 + 3)
        dgrams = encode({"k": "big"}, payload)
        self.assertEqual(len(dgrams), 3)
        meta, first = decode(dgrams[0])
        self.assertEqual(meta, {"k": "big", "more": len(payload)})
        self.assertEqual(len(first), CHUNK)
        for d in dgrams[1:]:
            self.assertTrue(d.startswith(CONT))
            self.assertEqual(decode(d)[0], {"k": "+"})
        self.assertEqual(first + b"".join(decode(d)[1] for d in dgrams[1:]), payload)

    def test_doesNotChangeCallersMeta(self) -> None:
        meta = {"k": "big"}
        encode(meta, b"x" * (CHUNK + 1))
        self.assertEqual(meta, {"k": "big"})

    def test_metaTooLarge(self) -> None:
        self.assertRaises(ValueError, encode, {"k": "x", "v": "a" * 0x10000})


class MetaEncodingTests(SynchronousTestCase):
    """The reused encoder writes exactly what C{json.JSONEncoder} with compact separators
    writes, and the decoder reads only UTF-8 JSON."""

    def test_sameAsTheStandardEncoder(self) -> None:
        standard = json.JSONEncoder(separators=(",", ":"))
        for meta in (
            {"k": "conn", "id": 1, "peer": ["tcp", "127.0.0.1", 40001], "host": ["tcp6", "::1", 8080]},
            {"k": "ack", "ids": [], "closed": [1, 2, 3], "refused": [4]},
            {"k": "x", "s": "caf\u00e9 \"q\" \\ \n \u2028 \U0001f600", "f": 0.1, "b": [True, False, None], "d": {"a": {}}},
            {"k": "unix", "peer": ["unix", None], "host": ["unix", "/run/\u00fc.sock"]},
        ):
            head = channel.encode(meta)[0][struct.calcsize("!BH"):]
            self.assertEqual(head, standard.encode(meta).encode("ascii"))
            self.assertEqual(decode(channel.encode(meta)[0])[0], meta)

    def test_unencodableRaises(self) -> None:
        self.assertRaises(TypeError, channel.encode, {"k": "x", "v": object()})

    def test_notUtf8Refused(self) -> None:
        raw = b"\xff\xfe{}"
        with self.assertRaises(ChannelError):
            decode(struct.pack("!BH", 1, len(raw)) + raw)


class FastJSONTests(SynchronousTestCase):
    """
    The JSON helpers every channel uses (L{channel.compact_encoder}, L{channel.fast_decoder})
    write and read exactly what C{json}'s own encoder and decoder do, errors included, and
    their fast paths are in use: they rest on CPython's private C{json.encoder.c_make_encoder}
    and undocumented C{JSONDecoder.scan_once}, so an upgrade that changes either fails here.
    """

    VALUES = [
        {"k": "conn", "id": 1, "peer": ["tcp", "127.0.0.1", 40001]},
        [7, "recent", {"limit": 3, "b": {"b": "AA=="}}],
        "caf\u00e9 \"q\" \\ \n \u2028 \U0001f600", 0.1, -3, 10**30, True, None, [], {},
        {"c": ["id", "when"], "r": [[1, {"D": "2024-01-02"}], [2, None]]},
    ]

    def test_encodersAreTheReusedCEncoder(self) -> None:
        c_encoder = json.encoder.c_make_encoder
        self.assertIsNotNone(c_encoder)
        for fast, standard, encoding in ((channel._encode_meta, channel._ENCODER, "ascii"),
                                         (dbvalues.dumps, dbvalues._ENCODER, "utf-8")):
            cells = [c.cell_contents for c in fast.__closure__ or ()]
            self.assertTrue(any(isinstance(c, c_encoder) for c in cells),  # type: ignore[arg-type]
                            "the fast path fell back to JSONEncoder.encode")
            for value in self.VALUES:
                self.assertEqual(fast(value), standard.encode(value).encode(encoding))

    def test_encoderErrors(self) -> None:
        self.assertRaises(TypeError, dbvalues.dumps, {"x": object()})
        self.assertRaises(ValueError, dbvalues.dumps, [float("nan")])

    def test_decoderSameValuesAndErrors(self) -> None:
        texts = [json.dumps(v) for v in self.VALUES] + [
            dbvalues._ENCODER.encode(v) for v in self.VALUES
        ] + [
            " [1]", "[1] ", "\n{}\t", "", " ", "[1] [2]", "[1,]", '{"a":1,}', "{{{", "[" * 50000, "NaN",
            "[Infinity]", '"unterminated', '{"k":"x"}x', "1.5e400", '"\\ud800"', "tru", "[1, 2",
        ]
        for decoder in (channel._DECODER, dbvalues._DECODER):
            fast = channel.fast_decoder(decoder)
            for text in texts:
                try:
                    expected: object = ("value", decoder.decode(text))
                except (ValueError, RecursionError) as e:
                    expected = (type(e), str(e))
                try:
                    got: object = ("value", fast(text.encode("utf-8")))
                except (ValueError, RecursionError) as e:
                    got = (type(e), str(e))
                self.assertEqual(got, expected, text[:40])
            self.assertRaises(UnicodeDecodeError, fast, b'"\xff"')

    def test_scannerIsTheCScanner(self) -> None:
        c_scanner = getattr(json.scanner, "c_make_scanner", None)
        self.assertIsNotNone(c_scanner)
        self.assertIsInstance(channel._DECODER.scan_once, c_scanner)  # type: ignore[arg-type]


class KindHeaderTests(SynchronousTestCase):
    """
    A registered kind's metadata-only header (the database channel's C{calls}, C{replies},
    C{grants}) skips JSON both ways, yet the bytes written are the JSON path's and the same
    datagrams are accepted and refused.
    """

    def test_sameBytesAsTheJSONPath(self) -> None:
        for kind in (dbchannel.CALLS, dbchannel.REPLIES, dbchannel.GRANTS):
            self.assertIn(kind, channel._KIND_HEADS)
            self.assertEqual(encode({"k": kind}, b"[1]"), [raw({"k": kind}, b"[1]")])
            self.assertEqual(encode({"k": kind, "id": 1}), [raw({"k": kind, "id": 1})])
            payload = b"x" * (CHUNK + 1)
            self.assertEqual(encode({"k": kind}, payload)[0], raw({"k": kind, "more": CHUNK + 1}, payload[:CHUNK]))

    def test_decodedFreshEachTime(self) -> None:
        datagram = encode({"k": dbchannel.CALLS}, b"[]")[0]
        meta, payload = decode(datagram)
        self.assertEqual((meta, payload), ({"k": "calls"}, b"[]"))
        meta["more"] = 5
        self.assertEqual(decode(datagram)[0], {"k": "calls"})

    def test_stillRefusedAsBefore(self) -> None:
        head = b'{"k":"calls"}'
        for datagram, text in (
            (HEADER.pack(2, len(head)) + head, "unsupported channel version 2"),
            (HEADER.pack(VERSION, len(head) + 1) + head, "truncated metadata"),
            (HEADER.pack(VERSION, len(head) - 1) + head, "bad metadata"),
        ):
            e = self.assertRaises(ChannelError, decode, datagram)
            self.assertIn(text, str(e))
        e = self.assertRaises(ChannelError, decode, HEADER.pack(VERSION, len(head)) + head, 5)
        self.assertIn("over this channel's limit of 5", str(e))

    def test_otherSpellingsStillDecode(self) -> None:
        for head in (b'{ "k":"calls"}', b'{"k":"calls"} ', b'{"k":"calls","x":1}'):
            self.assertEqual(decode(HEADER.pack(VERSION, len(head)) + head)[0]["k"], "calls")


class QueuedBytesTests(SynchronousTestCase):
    """
    After the first datagram of a wakeup, L{MessageChannel.doRead} asks the kernel how many bytes
    wait (C{FIONREAD}) instead of reading on to C{EAGAIN}: a lone message costs no exception, a
    batch still drains whole.  Driven by hand on a L{MemoryReactorClock}.
    """

    def setUp(self) -> None:
        self.batches: list[list[Message]] = []
        self.lost: list[Failure] = []
        ours, self.theirs = socketpair()
        self.addCleanup(self.theirs.close)
        self.ch = MessageChannel(MemoryReactorClock(), ours, self.batches.append, self.lost.append, name="t",
                                 limits=ANY_SIZE)
        self.addCleanup(self.ch.close)

    def test_kernelCountsEveryQueuedDatagram(self) -> None:
        """What doRead relies on: a seqpacket socket's FIONREAD is non-zero while a datagram with
        bytes waits, and zero once none does."""
        a, b = socketpair()
        with a, b:
            def queued() -> int:
                return struct.unpack("i", fcntl.ioctl(a.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

            self.assertEqual(queued(), 0)
            b.send(b"one")
            b.send(b"two!")
            a.recv(100)
            self.assertGreater(queued(), 0)
            a.recv(100)
            self.assertEqual(queued(), 0)

    def test_loneThenBatch(self) -> None:
        self.theirs.send(raw({"k": "a"}))
        self.ch.doRead()
        for i in range(5):
            self.theirs.send(raw({"k": "b", "i": i}))
        self.ch.doRead()
        self.assertEqual([[m.kind for m in b] for b in self.batches], [["a"], ["b"] * 5])
        self.assertTrue(self.ch.connected)

    def test_splitMessageStillJoinedInOneWakeup(self) -> None:
        for datagram in encode({"k": "big"}, b"z" * (CHUNK * 2)):
            self.theirs.send(datagram)
        self.ch.doRead()
        self.assertEqual([len(m.payload) for b in self.batches for m in b], [CHUNK * 2])

    def test_emptyDatagramAtTheNextWakeup(self) -> None:
        """A zero-length datagram counts no bytes: read at the next wakeup (the reactor polls
        level-triggered), where, as before, it ends the channel."""
        self.theirs.send(raw({"k": "a"}))
        self.theirs.send(b"")
        self.ch.doRead()
        self.assertEqual(len(self.batches), 1)
        self.ch.doRead()
        self.assertFalse(self.ch.connected)
        self.assertIsInstance(self.lost[0].value, error.ConnectionDone)


class DecodeTests(SynchronousTestCase):
    """L{decode} refuses anything that is not a version 1 message with a kind."""

    def test_roundTrip(self) -> None:
        self.assertEqual(decode(raw({"k": "conn", "id": 7}, b"GET /")), ({"k": "conn", "id": 7}, b"GET /"))

    def assertRefused(self, datagram: bytes, text: str) -> None:
        e = self.assertRaises(ChannelError, decode, datagram)
        self.assertIn(text, str(e))

    def test_short(self) -> None:
        self.assertRefused(b"\x01\x00", "short message")

    def test_version(self) -> None:
        self.assertRefused(raw({"k": "x"}, version=2), "unsupported channel version 2")

    def test_truncatedMeta(self) -> None:
        self.assertRefused(HEADER.pack(VERSION, 50) + b'{"k":"x"}', "truncated metadata")

    def test_badJSON(self) -> None:
        self.assertRefused(HEADER.pack(VERSION, 3) + b"{{{", "bad metadata")

    def test_notAnObject(self) -> None:
        self.assertRefused(raw(["k", "x"]), "metadata without a kind")

    def test_noKind(self) -> None:
        self.assertRefused(raw({"id": 1}), "metadata without a kind")

    def test_kindNotAString(self) -> None:
        self.assertRefused(raw({"k": 1}), "metadata without a kind")


class AssemblerTests(SynchronousTestCase):
    """Continuation datagrams are joined, and every misuse is refused."""

    def setUp(self) -> None:
        self.asm = channel._Assembler(ANY_SIZE)

    def test_joins(self) -> None:
        payload = os.urandom(CHUNK * 2 + 10)
        dgrams = encode({"k": "big", "id": 3}, payload)
        self.assertIsNone(self.asm.add(dgrams[0], (5,)))
        self.assertIsNone(self.asm.add(dgrams[1], ()))
        msg = self.asm.add(dgrams[2], ())
        self.assertEqual(msg, Message("big", {"k": "big", "id": 3}, payload, (5,)))

    def test_unexpectedContinuation(self) -> None:
        e = self.assertRaises(ChannelError, self.asm.add, CONT + b"x", ())
        self.assertEqual(str(e), "unexpected continuation")

    def test_continuationExpected(self) -> None:
        self.asm.add(raw({"k": "big", "more": 10}, b"12345"), ())
        e = self.assertRaises(ChannelError, self.asm.add, raw({"k": "other"}), ())
        self.assertEqual(str(e), "expected a continuation")

    def test_continuationWithFds(self) -> None:
        self.asm.add(raw({"k": "big", "more": 10}, b"12345"), ())
        self.assertRaises(ChannelError, self.asm.add, CONT + b"67890", (9,))

    def test_overrun(self) -> None:
        self.asm.add(raw({"k": "big", "more": 10}, b"12345"), ())
        e = self.assertRaises(ChannelError, self.asm.add, CONT + b"678901", ())
        self.assertEqual(str(e), "continuation overruns the declared size")

    def test_badMore(self) -> None:
        for more in ("10", 5, 3, -1, 1.5):
            asm = channel._Assembler(ANY_SIZE)
            self.assertRaises(ChannelError, asm.add, raw({"k": "big", "more": more}, b"12345"), ())

    def test_discardClosesPartialFds(self) -> None:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.asm.add(raw({"k": "big", "more": 10}, b"12345"), (w,))
        self.asm.discard()
        self.assertTrue(pipe_closed_everywhere(r))
        self.assertIsNone(self.asm.partial)


class Receiver:
    """Collects what a L{MessageChannel} delivers: batches, and how it was lost."""

    def __init__(self, owned: set[int]) -> None:
        self.owned = owned
        self.batches: list[list[Message]] = []
        self.lost_reasons: list[Failure] = []
        self._waiting: list[tuple[int, Deferred[list[Message]]]] = []
        self._lost_waiting: list[Deferred[Failure]] = []

    @property
    def messages(self) -> list[Message]:
        return [m for batch in self.batches for m in batch]

    def receive(self, batch: list[Message]) -> None:
        for m in batch:
            self.owned.update(m.fds)
        self.batches.append(batch)
        have = len(self.messages)
        for n, d in list(self._waiting):
            if have >= n:
                self._waiting.remove((n, d))
                d.callback(self.messages)

    def lost(self, reason: Failure) -> None:
        self.lost_reasons.append(reason)
        waiting, self._lost_waiting = self._lost_waiting, []
        for d in waiting:
            d.callback(None)
        pending, self._waiting = self._waiting, []
        for n, d2 in pending:
            d2.errback(AssertionError(
                f"channel lost ({reason.value!r}) after {len(self.messages)} of {n} messages"
            ))

    def wait_for(self, n: int) -> Deferred[list[Message]]:
        """A Deferred that fires with every message once C{n} have arrived."""
        d: Deferred[list[Message]] = Deferred()
        if len(self.messages) >= n:
            d.callback(self.messages)
        else:
            self._waiting.append((n, d))
        return d.addTimeout(8, reactor)

    async def wait_lost(self) -> Failure:
        """The reason the channel was lost, once it is."""
        if not self.lost_reasons:
            d: Deferred[None] = Deferred()
            self._lost_waiting.append(d)
            await d.addTimeout(8, reactor)
        return self.lost_reasons[0]



class ChannelTestCase(TestCase):
    """Two channel ends, or one channel end and a raw peer socket."""

    timeout = 10

    def setUp(self) -> None:
        # Every fd the test holds (pipe ends, received fds).  Closing a number
        # twice could close a descriptor the reactor reuses it for, so each is
        # closed exactly once: by close_fd, or at cleanup.
        self.owned: set[int] = set()
        self.addCleanup(self._close_owned)

    def _close_owned(self) -> None:
        for fd in self.owned:
            os.close(fd)
        self.owned.clear()

    def close_fd(self, fd: int) -> None:
        self.owned.remove(fd)
        os.close(fd)

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.owned.update((r, w))
        return r, w

    def channel(
        self, sock: socket.socket, name: str = "test", limits: ChannelLimits = ANY_SIZE
    ) -> tuple[MessageChannel, Receiver]:
        receiver = Receiver(self.owned)
        ch = MessageChannel(reactor, sock, receiver.receive, receiver.lost, name=name, limits=limits)
        self.addCleanup(ch.close)
        return ch, receiver

    def pair(self) -> tuple[MessageChannel, Receiver, MessageChannel, Receiver]:
        a, b = socketpair()
        ch_a, rec_a = self.channel(a, "a")
        ch_b, rec_b = self.channel(b, "b")
        return ch_a, rec_a, ch_b, rec_b

    def raw_pair(self) -> tuple[MessageChannel, Receiver, socket.socket]:
        """A channel end and its peer as a plain blocking socket."""
        a, b = socketpair()
        self.addCleanup(b.close)
        ch, rec = self.channel(a)
        return ch, rec, b


class MessageChannelTests(ChannelTestCase):
    """Messages and descriptors cross a real socket pair under the real reactor."""

    def test_socketpairIsSeqpacket(self) -> None:
        a, b = socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertEqual((a.family, a.type), (socket.AF_UNIX, socket.SOCK_SEQPACKET))
        self.assertFalse(a.get_inheritable())

    async def test_passesPipe(self) -> None:
        """A pipe end passed and closed by the sender is the same pipe on arrival."""
        ch_a, _, _, rec_b = self.pair()
        r, w = self.pipe()
        ch_a.send({"k": "conn", "id": 1}, b"hello", [w])
        self.close_fd(w)
        (msg,) = await rec_b.wait_for(1)
        self.assertEqual((msg.kind, msg.meta, msg.payload), ("conn", {"k": "conn", "id": 1}, b"hello"))
        (fd,) = msg.fds
        self.assertNotEqual(fd, w)
        self.assertEqual(os.fstat(fd).st_ino, os.fstat(r).st_ino)
        os.write(fd, b"through the passed fd")
        self.assertEqual(os.read(r, 100), b"through the passed fd")
        self.close_fd(fd)
        self.assertTrue(pipe_closed_everywhere(r))

    async def test_passesSocket(self) -> None:
        """A connected socket passed over the channel still talks to its peer."""
        ch_a, _, _, rec_b = self.pair()
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        ch_a.send({"k": "conn"}, b"", [mine.fileno()])
        mine.close()
        (msg,) = await rec_b.wait_for(1)
        self.owned.remove(msg.fds[0])
        passed = socket.socket(fileno=msg.fds[0])
        self.addCleanup(passed.close)
        passed.sendall(b"ping")
        self.assertEqual(peer.recv(10), b"ping")
        peer.sendall(b"pong")
        self.assertEqual(passed.recv(10), b"pong")

    async def test_severalFdsInOrder(self) -> None:
        ch_a, _, _, rec_b = self.pair()
        pipes = [self.pipe() for _ in range(MAX_FDS)]
        ch_a.send({"k": "many"}, b"", [w for _, w in pipes])
        (msg,) = await rec_b.wait_for(1)
        self.assertEqual(len(msg.fds), MAX_FDS)
        for fd, (r, _) in zip(msg.fds, pipes):
            self.assertEqual(os.fstat(fd).st_ino, os.fstat(r).st_ino)

    def test_tooManyFds(self) -> None:
        ch_a, _, _, _ = self.pair()
        pipes = [self.pipe() for _ in range(MAX_FDS + 1)]
        e = self.assertRaises(ValueError, ch_a.send, {"k": "x"}, b"", [w for _, w in pipes])
        self.assertIn(str(MAX_FDS), str(e))

    async def test_bothDirections(self) -> None:
        ch_a, rec_a, ch_b, rec_b = self.pair()
        ch_a.send({"k": "to-b"}, b"1")
        ch_b.send({"k": "to-a"}, b"2")
        (to_b,) = await rec_b.wait_for(1)
        (to_a,) = await rec_a.wait_for(1)
        self.assertEqual((to_b.kind, to_b.payload, to_a.kind, to_a.payload), ("to-b", b"1", "to-a", b"2"))

    async def test_largePayload(self) -> None:
        """A 1 MB payload (and its fd) arrives as one message, byte for byte."""
        ch_a, _, _, rec_b = self.pair()
        r, w = self.pipe()
        payload = os.urandom(1024 * 1024)
        ch_a.send({"k": "big", "id": 9}, payload, [w])
        self.close_fd(w)
        await rec_b.wait_for(1)
        (msg,) = rec_b.messages
        self.assertEqual((msg.kind, msg.meta), ("big", {"k": "big", "id": 9}))
        self.assertEqual(len(msg.payload), len(payload))
        self.assertTrue(msg.payload == payload, "the payload changed on the way")
        (fd,) = msg.fds
        self.assertEqual(os.fstat(fd).st_ino, os.fstat(r).st_ino)

    async def test_largePayloadsInterleaveWithSmall(self) -> None:
        """Small messages sent after a large one arrive after it, whole."""
        ch_a, _, _, rec_b = self.pair()
        big = os.urandom(300 * 1024)
        ch_a.send({"k": "small", "i": 0})
        ch_a.send({"k": "big", "i": 1}, big)
        ch_a.send({"k": "small", "i": 2}, b"x")
        msgs = await rec_b.wait_for(3)
        self.assertEqual([(m.kind, m.meta["i"]) for m in msgs], [("small", 0), ("big", 1), ("small", 2)])
        self.assertTrue(msgs[1].payload == big)
        self.assertEqual(msgs[2].payload, b"x")

    async def test_largeMetaWithLargePayload(self) -> None:
        """
        Metadata far below encode's 64 KiB limit with a payload over one
        chunk: send either refuses it or it arrives whole; it never kills the
        channel.  (Fails while the first datagram can be larger than the
        receiver's buffer.)
        """
        ch_a, _, _, rec_b = self.pair()
        meta = {"k": "big", "note": "n" * 10000}
        payload = os.urandom(100 * 1024)
        try:
            ch_a.send(meta, payload)
            refused = False
        except ValueError:
            refused = True
        ch_a.send({"k": "after"})
        msgs = await rec_b.wait_for(1 if refused else 2)
        self.assertEqual(rec_b.lost_reasons, [])
        if not refused:
            self.assertEqual(msgs[0].meta, meta)
            self.assertTrue(msgs[0].payload == payload)
        self.assertEqual(msgs[-1].kind, "after")

    async def test_oneBatchPerWakeup(self) -> None:
        """Messages queued before the reactor runs reach the receiver in one call."""
        ch_a, _, _, rec_b = self.pair()
        for i in range(100):
            ch_a.send({"k": "m", "i": i}, b"%d" % i)
        self.assertNotIn(ch_a, reactor.getWriters(), "the socket buffer filled; test needs fewer messages")
        await rec_b.wait_for(100)
        self.assertEqual(len(rec_b.batches), 1)
        self.assertEqual([m.meta["i"] for m in rec_b.batches[0]], list(range(100)))
        self.assertEqual([m.payload for m in rec_b.batches[0]], [b"%d" % i for i in range(100)])

    async def test_peerCloses(self) -> None:
        ch, rec, peer = self.raw_pair()
        peer.close()
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionDone))
        self.assertFalse(ch.connected)
        self.assertEqual(ch.fileno(), -1)
        self.assertNotIn(ch, reactor.getReaders())
        self.assertEqual(len(rec.lost_reasons), 1)

    async def test_messagesBeforeCloseDelivered(self) -> None:
        ch, rec, peer = self.raw_pair()
        for d in encode({"k": "last"}, b"words"):
            send_raw(peer, d)
        peer.close()
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionDone))
        self.assertEqual([(m.kind, m.payload) for m in rec.messages], [("last", b"words")])

    def test_close(self) -> None:
        ch, rec, peer = self.raw_pair()
        ch.close()
        self.assertFalse(ch.connected)
        self.assertEqual(len(rec.lost_reasons), 1)
        self.assertTrue(rec.lost_reasons[0].check(error.ConnectionDone))
        self.assertNotIn(ch, reactor.getReaders())
        self.assertRaises(error.ConnectionDone, ch.send, {"k": "x"})
        ch.close()
        self.assertEqual(len(rec.lost_reasons), 1)
        peer.settimeout(2)
        self.assertEqual(peer.recv(100), b"")

    async def test_malformedClosesAndClosesItsFds(self) -> None:
        """
        Garbage from the peer: the messages before it are delivered, the
        channel closes with an error, and the fds that rode on the garbage
        are closed (no descriptor is left behind).
        """
        ch, rec, peer = self.raw_pair()
        r, w = self.pipe()
        # Count while the reactor runs: trial's reactor holds a waker pipe only then.
        await deferLater(reactor, 0)
        before = open_fds()
        send_raw(peer, encode({"k": "fine"})[0])
        send_raw(peer, b"\x07garbage that is not a message", (w,))
        self.close_fd(w)
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionLost))
        self.assertEqual([m.kind for m in rec.messages], ["fine"])
        self.assertTrue(pipe_closed_everywhere(r), "the fd in the bad message is still open")
        # w closed by us, the channel's socket closed: two fewer than before.
        self.assertEqual(open_fds(), before - 2)

    async def test_badContinuationClosesEveryFd(self) -> None:
        """A continuation that overruns: the first part's fd is closed too."""
        ch, rec, peer = self.raw_pair()
        r1, w1 = self.pipe()
        send_raw(peer, raw({"k": "big", "more": 10}, b"12345"), (w1,))
        self.close_fd(w1)
        send_raw(peer, CONT + b"too many bytes")
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionLost))
        self.assertEqual(rec.messages, [])
        self.assertTrue(pipe_closed_everywhere(r1))

    async def test_partialMessageDiscardedOnClose(self) -> None:
        """The peer goes away in the middle of a long message: its fd is closed."""
        ch, rec, peer = self.raw_pair()
        r, w = self.pipe()
        send_raw(peer, raw({"k": "big", "more": 100}, b"first part"), (w,))
        self.close_fd(w)
        peer.close()
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionDone))
        self.assertEqual(rec.messages, [])
        self.assertTrue(pipe_closed_everywhere(r))

    async def test_oversizedDatagram(self) -> None:
        """A datagram larger than any valid one closes the channel, fds closed."""
        ch, rec, peer = self.raw_pair()
        r, w = self.pipe()
        send_raw(peer, raw({"k": "x"}, b"y" * (CHUNK + 8192)), (w,))
        self.close_fd(w)
        reason = await rec.wait_lost()
        self.assertTrue(reason.check(error.ConnectionLost))
        self.assertTrue(pipe_closed_everywhere(r))

    def fill(self, ch: MessageChannel, extra: int) -> tuple[list[tuple[int, bool]], int]:
        """
        Send messages, each with a fresh pipe's write end that is closed right
        after C{send}, until the socket buffer is full and C{extra} more were
        queued.  Returns each message's (pipe read end, was it queued) and the
        number of messages.
        """
        sent: list[tuple[int, bool]] = []
        queued = 0
        payload = b"q" * 4000
        while queued <= extra:
            self.assertLess(len(sent), 5000, "the socket buffer never filled")
            r, w = self.pipe()
            ch.send({"k": "m", "i": len(sent)}, payload, [w])
            self.close_fd(w)
            is_queued = ch in reactor.getWriters()
            sent.append((r, is_queued))
            queued += is_queued
        return sent, len(sent)

    async def test_fullBufferQueuesInOrderWithLiveFds(self) -> None:
        """
        Once the socket buffer is full, send queues; every message still
        arrives in order and each queued fd is the caller's pipe although the
        caller closed its own copy as soon as send returned.
        """
        ch_a, _, _, rec_b = self.pair()
        # Nobody reads b until the test yields to the reactor.
        sent, n = self.fill(ch_a, extra=30)
        self.assertGreater(sum(q for _, q in sent), 30)
        self.assertGreater(sum(not q for _, q in sent), 0)
        msgs = await rec_b.wait_for(n)
        self.assertEqual([m.meta["i"] for m in msgs], list(range(n)))
        for msg, (r, was_queued) in zip(msgs, sent):
            (fd,) = msg.fds
            self.assertEqual(os.fstat(fd).st_ino, os.fstat(r).st_ino)
            os.write(fd, b"%d" % msg.meta["i"])
            self.assertEqual(os.read(r, 10), b"%d" % msg.meta["i"])
            self.close_fd(fd)
            self.assertTrue(pipe_closed_everywhere(r), f"an extra copy of fd {msg.meta['i']} is open")
        rec_b.batches.clear()
        self.assertNotIn(ch_a, reactor.getWriters())

    def test_closeClosesQueuedCopies(self) -> None:
        """Closing with queued messages closes their duplicated fds."""
        a, b = socketpair()
        self.addCleanup(b.close)
        ch, rec = self.channel(a)
        sent, _ = self.fill(ch, extra=5)
        ch.close()
        self.assertNotIn(ch, reactor.getWriters())
        for r, was_queued in sent:
            # In-flight fds are held by b's receive queue until b closes.
            self.assertEqual(pipe_closed_everywhere(r), was_queued)
        b.close()
        self.assertTrue(all(pipe_closed_everywhere(r) for r, _ in sent))

    async def test_sendToClosedPeerLosesChannel(self) -> None:
        """Sending to a peer that is gone closes the channel instead of raising."""
        ch, rec, peer = self.raw_pair()
        reactor.removeReader(ch)  # keep the reader from seeing the EOF first
        peer.close()
        ch.send({"k": "x"})
        self.assertEqual(len(rec.lost_reasons), 1)
        self.assertTrue(rec.lost_reasons[0].check(error.ConnectionLost))
        self.assertFalse(ch.connected)


class LimitTests(SynchronousTestCase):
    """
    Every end refuses, before keeping anything, what is over its limits; a
    refusal closes the channel with L{ChannelViolation}.  Driven by hand on a
    L{MemoryReactorClock}: the datagrams are real, the wakeups are the test's.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.batches: list[list[Message]] = []
        self.lost: list[Failure] = []

    def channel(self, limits: ChannelLimits) -> tuple[MessageChannel, socket.socket]:
        ours, theirs = socketpair()
        self.addCleanup(theirs.close)
        ch = MessageChannel(self.reactor, ours, self.batches.append, self.lost.append, name="t", limits=limits)
        self.addCleanup(ch.close)
        return ch, theirs

    def assertViolation(self, ch: MessageChannel, text: str) -> None:
        self.assertFalse(ch.connected)
        [reason] = self.lost
        self.assertIsInstance(reason.value, ChannelViolation)
        self.assertIn(text, reason.getErrorMessage())
        self.assertFalse(ch.closed_here)

    def test_singleDatagramOverLimit(self) -> None:
        """A payload in one datagram is held to max_payload too, not only a split one."""
        ch, theirs = self.channel(ChannelLimits(max_payload=10))
        theirs.send(raw({"k": "x"}, b"y" * 10))
        theirs.send(raw({"k": "x"}, b"y" * 11))
        ch.doRead()
        self.assertEqual([len(m.payload) for b in self.batches for m in b], [10])
        self.assertViolation(ch, "a 11-byte payload is over this channel's limit of 10")

    def test_declaredSizeRefusedAtOnce(self) -> None:
        """10^12 bytes announced: refused at the first datagram, nothing kept."""
        ch, theirs = self.channel(ChannelLimits(max_payload=1 << 20))
        theirs.send(raw({"k": "x", "more": 10**12}, b"y" * CHUNK))
        ch.doRead()
        self.assertViolation(ch, "over this channel's limit")
        self.assertIsNone(ch._assembler.partial)

    def test_noPayloadAtAll(self) -> None:
        ch, theirs = self.channel(ChannelLimits(max_payload=0))
        theirs.send(raw({"k": "get", "id": 1}))
        theirs.send(raw({"k": "get", "id": 2}, b"!"))
        ch.doRead()
        self.assertEqual(len(self.batches[0]), 1)
        self.assertViolation(ch, "a 1-byte payload")

    def test_metadataOverLimit(self) -> None:
        ch, theirs = self.channel(ChannelLimits(max_payload=0, max_meta=100))
        theirs.send(raw({"k": "x", "pad": "p" * 100}))
        ch.doRead()
        self.assertViolation(ch, "bytes of metadata, over this channel's limit of 100")

    def test_deeplyNestedMetadata(self) -> None:
        """JSON nested deeper than the parser goes is a bad message, not a crash of the reader."""
        ch, theirs = self.channel(ChannelLimits(max_payload=0, max_meta=65536))
        head = b"[" * 50000
        theirs.send(HEADER.pack(VERSION, len(head)) + head)
        ch.doRead()
        self.assertViolation(ch, "bad metadata")

    def test_garbage(self) -> None:
        ch, theirs = self.channel(ChannelLimits(max_payload=1000))
        theirs.send(b"\x00" * 64)
        ch.doRead()
        self.assertViolation(ch, "unsupported channel version")

    def test_reassemblyIsLinear(self) -> None:
        """
        Joining costs the same per continuation however many came before: 50,000
        one-byte continuations (which re-summing every piece turns into more
        than a billion additions) are joined in well under the bound.
        """
        n = 50_000
        asm = channel._Assembler(ChannelLimits(max_payload=n + 1))
        self.assertIsNone(asm.add(raw({"k": "x", "more": n + 1}, b"a"), ()))
        piece = CONT + b"b"
        started = time.monotonic()
        for _ in range(n - 1):
            self.assertIsNone(asm.add(piece, ()))
        msg = asm.add(piece, ())
        elapsed = time.monotonic() - started
        self.assertEqual(msg.payload, b"a" + b"b" * n)  # type: ignore[union-attr]
        self.assertLess(elapsed, 5.0, f"joining {n} continuations took {elapsed:.1f}s")

    def test_batchBounded(self) -> None:
        """One wakeup hands on about max_batch bytes; the rest waits in the kernel for the next."""
        ch, theirs = self.channel(ChannelLimits(max_payload=1000, max_batch=2500))
        for i in range(8):
            theirs.send(raw({"k": "x", "i": i}, b"z" * 1000))
        ch.doRead()
        self.assertEqual([m.meta["i"] for m in self.batches[0]], [0, 1, 2])
        ch.doRead()
        ch.doRead()
        self.assertEqual([m.meta["i"] for b in self.batches for m in b], list(range(8)))
        self.assertTrue(ch.connected)

    def test_peerThatDoesNotReadCutOff(self) -> None:
        """Past max_queued bytes waiting for a peer that reads nothing, the channel closes,
        and the duplicated descriptors of what was queued are closed with it."""
        ch, theirs = self.channel(ChannelLimits(max_payload=0, max_queued=64 * 1024))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        while ch.connected:
            ch.send({"k": "m"}, b"q" * 4000, [w])
        os.close(w)
        self.assertViolation(ch, "the peer reads nothing")
        theirs.close()  # what reached the kernel's queue goes with it
        os.set_blocking(r, False)
        self.assertEqual(os.read(r, 1), b"", "a queued copy of the fd is still open")

    def test_sendOverPeersLimitIsABug(self) -> None:
        ch, _theirs = self.channel(ChannelLimits(max_payload=0, send_max_payload=5))
        ch.send({"k": "x"}, b"12345")
        self.assertRaises(ValueError, ch.send, {"k": "x"}, b"123456")
        self.assertTrue(ch.connected)

    def test_outOfDescriptorsKeepsTheChannel(self) -> None:
        """
        A process at its descriptor limit gets the message without (some of) its
        fds (MSG_CTRUNC): the message is delivered, marked, and the channel stays
        open, so one connection is lost, not every connection on the channel.
        """
        ch, theirs = self.channel(ChannelLimits(max_payload=100))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        send_raw(theirs, raw({"k": "conn", "id": 1}), (w, w, w))
        send_raw(theirs, raw({"k": "conn", "id": 2}), (w,))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.dup(0)
        os.close(lowest_free)
        # No new descriptor can be made: the next one would be lowest_free.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            ch.doRead()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        msgs = [m for b in self.batches for m in b]
        for m in msgs:
            m.close_fds()
        self.assertTrue(ch.connected)
        self.assertEqual([(m.meta["id"], m.fds_lost) for m in msgs], [(1, True), (2, True)])


class LimitsTableTests(SynchronousTestCase):
    """L{okws_twisted.wire.limits}: each end sends at most what the other end accepts."""

    def test_endsAgree(self) -> None:
        from okws_twisted.wire import limits

        pairs = [
            (limits.handoff(16384), limits.handoff(16384)),
            (limits.TEMPLATES_PUBLISHER, limits.TEMPLATES_PEER),
            (limits.CONTROL_LAUNCHER, limits.CONTROL_CHILD),
            (limits.LOG_DAEMON, limits.LOG_SENDER),
            (limits.TLS_DISPATCHER, limits.TLS_FRONT),
        ]
        for a, b in pairs:
            self.assertEqual((a.send_max_payload, b.send_max_payload), (b.max_payload, a.max_payload))

    def test_handoffCarriesOneReadPastTheHead(self) -> None:
        from okws_twisted.wire import limits, templatechannel, transport

        self.assertGreaterEqual(limits.PIPELINE_MAX, transport.READ_SIZE)
        self.assertEqual(limits.handoff_payload(16384), 16384 + limits.PIPELINE_MAX)
        self.assertGreaterEqual(limits.PUBLISHED_MAX, templatechannel.MAX_TEMPLATE_BYTES)


class ReadOneBlockingTests(SynchronousTestCase):
    """L{read_one_blocking}: a child's first message, before any reactor runs."""

    def setUp(self) -> None:
        self.a, self.b = socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_oneMessage(self) -> None:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        send_raw(self.a, encode({"k": "config", "role": "service"}, b"{}")[0], (w,))
        os.close(w)
        send_raw(self.a, encode({"k": "second"})[0])
        msg = read_one_blocking(self.b, 2, ANY_SIZE)
        self.assertEqual((msg.kind, msg.meta, msg.payload), ("config", {"k": "config", "role": "service"}, b"{}"))
        self.assertEqual(os.fstat(msg.fds[0]).st_ino, os.fstat(r).st_ino)
        os.close(msg.fds[0])
        self.assertEqual(read_one_blocking(self.b, 2, ANY_SIZE).kind, "second")

    def test_continuations(self) -> None:
        payload = os.urandom(CHUNK * 3 + 7)

        def send() -> None:
            for d in encode({"k": "config"}, payload):
                self.a.sendall(d)

        t = threading.Thread(target=send)
        t.start()
        try:
            msg = read_one_blocking(self.b, 5, ANY_SIZE)
        finally:
            t.join(5)
        self.assertEqual((msg.kind, msg.meta), ("config", {"k": "config"}))
        self.assertTrue(msg.payload == payload)

    def test_eof(self) -> None:
        self.a.close()
        e = self.assertRaises(ChannelError, read_one_blocking, self.b, 2, ANY_SIZE)
        self.assertEqual(str(e), "channel closed before the first message")

    def test_timeout(self) -> None:
        self.assertRaises(TimeoutError, read_one_blocking, self.b, 0.05, ANY_SIZE)

    def test_malformed(self) -> None:
        self.a.send(b"\x01\x00")
        self.assertRaises(ChannelError, read_one_blocking, self.b, 2, ANY_SIZE)

    def test_oversizedDatagramRefused(self) -> None:
        """
        A datagram longer than the read buffer must not come back silently
        cut short.  (Fails while read_one_blocking ignores MSG_TRUNC.)
        """
        self.a.send(raw({"k": "config"}, b"z" * (CHUNK + 8192)))
        try:
            msg = read_one_blocking(self.b, 2, ANY_SIZE)
        except ChannelError:
            return
        self.fail(f"got a {len(msg.payload)}-byte payload of {CHUNK + 8192} sent")
