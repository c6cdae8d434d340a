"""Tests for L{okws_twisted.dispatcher.proxyproto}: PROXY protocol v1 and v2 headers, strictly."""

from __future__ import annotations

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import is_trusted, trusted_networks
from okws_twisted.dispatcher.proxyproto import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeaderReader,
    parse,
)


def v2(command: int = 1, family: int = 0x11, block: bytes | None = None, tlvs: bytes = b"", version: int = 2) -> bytes:
    """A v2 header; by default TCP4 from 203.0.113.7:5555 to 10.0.0.1:80."""
    if block is None:
        if family == 0x21:
            block = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", 5555, 443)
        else:
            block = socket.inet_aton("203.0.113.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 5555, 80)
    body = block + tlvs
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", len(body)) + body


class V1Tests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n"
        header = parse(line + b"GET / HTTP/1.1\r\n")
        assert header is not None
        self.assertEqual(header.version, 1)
        self.assertEqual(header.source, ("tcp", "203.0.113.7", 5555))
        self.assertEqual(header.destination, ("tcp", "10.0.0.1", 80))
        self.assertEqual(header.length, len(line))

    def test_tcp6(self) -> None:
        header = parse(b"PROXY TCP6 2001:db8::7 ::1 5555 443\r\n")
        assert header is not None
        self.assertEqual(header.source, ("tcp6", "2001:db8::7", 5555))

    def test_unknown(self) -> None:
        """UNKNOWN keeps the connection's own address; the rest of the line is ignored."""
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
            header = parse(line)
            assert header is not None
            self.assertIsNone(header.source)
            self.assertEqual(header.length, len(line))

    def test_incomplete(self) -> None:
        line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n"
        for n in range(len(line)):
            self.assertIsNone(parse(line[:n]), line[:n])

    def test_bad(self) -> None:
        for line in (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80 9\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 5555 80\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 5555 80\r\n",
            b"PROXY TCP6 203.0.113.7 ::1 5555 80\r\n",
            b"PROXY TCP4 203.0.113.999 10.0.0.1 5555 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 0555 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 80\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 5555 80\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\n",
            b"proxy TCP4 203.0.113.7 10.0.0.1 5555 80\r\n",
            b"GET / HTTP/1.1\r\n",
        ):
            self.assertRaises(ProxyError, parse, line)

    def test_tooLong(self) -> None:
        """No CRLF within 107 bytes is an error, not a reason to wait."""
        self.assertRaises(ProxyError, parse, b"PROXY TCP4 " + b"1" * 200)


class V2Tests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        data = v2()
        header = parse(data + b"GET")
        assert header is not None
        self.assertEqual(header.version, 2)
        self.assertEqual(header.source, ("tcp", "203.0.113.7", 5555))
        self.assertEqual(header.destination, ("tcp", "10.0.0.1", 80))
        self.assertEqual(header.length, len(data))

    def test_tcp6(self) -> None:
        header = parse(v2(family=0x21))
        assert header is not None
        self.assertEqual(header.source, ("tcp6", "2001:db8::7", 5555))

    def test_tlvsSkipped(self) -> None:
        tlvs = b"\x01\x00\x08http/1.1" + b"\x04\x00\x00"
        data = v2(tlvs=tlvs)
        header = parse(data + b"GET")
        assert header is not None
        self.assertEqual(header.length, len(data))
        self.assertEqual(header.source, ("tcp", "203.0.113.7", 5555))

    def test_local(self) -> None:
        """LOCAL (a health check): the address block, whatever it says, is ignored."""
        for family in (0x00, 0x11, 0x77):
            data = v2(command=0, family=family, block=b"junk")
            header = parse(data)
            assert header is not None
            self.assertIsNone(header.source)
            self.assertEqual(header.length, len(data))

    def test_unspecAndUnix(self) -> None:
        for family, block in ((0x00, b""), (0x31, b"\0" * 216)):
            header = parse(v2(family=family, block=block))
            assert header is not None
            self.assertIsNone(header.source)

    def test_incomplete(self) -> None:
        data = v2(tlvs=b"\x04\x00\x00")
        for n in range(len(data)):
            self.assertIsNone(parse(data[:n]), n)

    def test_bad(self) -> None:
        for data in (
            v2(version=1),
            v2(version=3),
            v2(command=2),
            v2(family=0x12),  # UDP4
            v2(family=0x22),
            v2(family=0x13),
            v2(block=b"\x01\x02\x03"),  # shorter than an IPv4 block
            v2(family=0x21, block=b"\0" * 12),
        ):
            self.assertRaises(ProxyError, parse, data)

    def test_bounded(self) -> None:
        """A length past the bound is refused as soon as the fixed part arrives."""
        fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH)
        self.assertRaises(ProxyError, parse, fixed)
        self.assertIsNotNone(parse(v2(tlvs=b"\x04" + struct.pack("!H", MAX_V2_LENGTH - 16 - 12 - 3) + b"\0" * (MAX_V2_LENGTH - 16 - 12 - 3))))


class ReaderTests(SynchronousTestCase):
    def test_byteByByte(self) -> None:
        reader = ProxyHeaderReader()
        data = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n"
        result = None
        for i in range(len(data)):
            result = reader.feed(data[i:i + 1])
            if result is not None:
                break
        assert result is not None
        header, rest = result
        self.assertEqual(header.source, ("tcp", "203.0.113.7", 5555))
        self.assertEqual(rest, b"")
        self.assertEqual(i + 1, header.length)

    def test_rest(self) -> None:
        reader = ProxyHeaderReader()
        result = reader.feed(v2() + b"GET / HTTP/1.1\r\n\r\n")
        assert result is not None
        self.assertEqual(result[1], b"GET / HTTP/1.1\r\n\r\n")

    def test_notProxy(self) -> None:
        self.assertRaises(ProxyError, ProxyHeaderReader().feed, b"GET / HTTP/1.1\r\n")
        self.assertRaises(ProxyError, ProxyHeaderReader().feed, b"\r\n\r\n\x00X")


class TrustTests(SynchronousTestCase):
    def test_networks(self) -> None:
        nets = trusted_networks(["127.0.0.1", "::1", "10.0.0.0/8"])
        self.assertTrue(is_trusted("127.0.0.1", nets))
        self.assertTrue(is_trusted("10.1.2.3", nets))
        self.assertTrue(is_trusted("::1", nets))
        self.assertTrue(is_trusted("::ffff:10.9.9.9", nets))
        self.assertFalse(is_trusted("127.0.0.2", nets))
        self.assertFalse(is_trusted("11.0.0.1", nets))
        self.assertFalse(is_trusted("not an address", nets))

    def test_badNetwork(self) -> None:
        self.assertRaises(ValueError, trusted_networks, ["10.0.0.1/8"])
        self.assertRaises(ValueError, trusted_networks, ["example.com"])
