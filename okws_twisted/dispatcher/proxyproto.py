# -*- test-case-name: tests.dispatcher.test_proxyproto -*-
"""
The PROXY protocol (HAProxy's, versions 1 and 2): pure parsing, no I/O.

A load balancer in front of okws that connects on a listener marked
C{haproxy:} sends one PROXY header before the first HTTP byte, saying whose
connection this really is.  The dispatcher feeds the first bytes of such a
connection to a L{ProxyHeaderReader} before its HTTP head reader; the source
address it returns replaces the balancer's address everywhere (the handoff to
services, the access log).

The reader is strict, as the specification asks of a receiver: the header
must be complete and well formed, v1 is at most 107 bytes, a v2 header at most
L{MAX_V2_LENGTH}; anything else raises L{ProxyError} and the connection is
closed.  A v2 C{LOCAL} command (the balancer's own health checks) and a v1
C{UNKNOWN} or v2 C{UNSPEC}/Unix source leave the connection's own address in
place (L{ProxyHeader.source} is C{None}).  v2 TLVs are skipped.

Addresses are plain tuples, C{("tcp" | "tcp6", host, port)} (the handoff
channel's wire form of an address), so the module needs no Twisted: the
config module, which must stay free of it, uses L{trusted_networks}.

Reference: U{https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
#: The largest v2 header accepted: 16 fixed bytes, the longest (Unix) address
#: block of 216 bytes, and room for a few TLVs.
MAX_V2_LENGTH = 1024

_V2_FAMILIES = {
    0x00: None,  # UNSPEC
    0x11: ("tcp4", 12),
    0x21: ("tcp6", 36),
    0x31: ("unix", 216),
}


#: An address as C{("tcp", "203.0.113.7", 5555)} or C{("tcp6", "2001:db8::7", 5555)}.
Address = tuple[str, str, int]


class ProxyError(ValueError):
    """The bytes are not a valid PROXY header; close the connection."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed PROXY header.

    @ivar version: 1 or 2.
    @ivar source: the client's address, or C{None} to keep the connection's own
        (v2 C{LOCAL}, v1 C{UNKNOWN}, v2 C{UNSPEC} or Unix addresses).
    @ivar destination: the address the client connected to, or C{None} likewise.
    @ivar length: how many bytes the header took.
    """

    version: int
    source: Address | None
    destination: Address | None
    length: int


class ProxyHeaderReader:
    """Collects the first bytes of a connection until its PROXY header is complete.

    L{feed} returns C{None} while more bytes are needed, then C{(header, rest)}
    once, with C{rest} the bytes after the header (the start of the HTTP
    request).  It never buffers more than the largest valid header.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        if self._done:
            raise ProxyError("the PROXY header was already read")
        buf = self._buffer + data
        self._buffer = b""
        result = parse(buf)
        if result is None:
            self._buffer = buf
            return None
        self._done = True
        return result, buf[result.length:]


def parse(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY header at the start of C{data}; C{None} if it is not complete yet.

    @raise ProxyError: if C{data} cannot start with a valid PROXY header.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] and data:
        if len(data) < len(V2_SIGNATURE):
            return None
        return _parse_v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        if len(data) < len(V1_PREFIX):
            return None
        return _parse_v1(data)
    raise ProxyError("the connection did not start with a PROXY header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyError("a PROXY v1 line longer than 107 bytes or not ended by CRLF")
        return None
    line = data[:end]
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        # The balancer does not know (or will not say); the rest of the line is ignored.
        return ProxyHeader(1, None, None, end + 2)
    if len(fields) != 6:
        raise ProxyError(f"a PROXY v1 line needs 6 fields separated by single spaces, got {line[:V1_MAX]!r}")
    _, proto, src, dst, sport, dport = fields
    if proto == b"TCP4":
        version, kind = 4, "tcp"
    elif proto == b"TCP6":
        version, kind = 6, "tcp6"
    else:
        raise ProxyError(f"unknown PROXY v1 protocol {proto!r}")
    source = (kind, _v1_address(src, version), _v1_port(sport))
    destination = (kind, _v1_address(dst, version), _v1_port(dport))
    return ProxyHeader(1, source, destination, end + 2)


def _v1_address(text: bytes, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyError(f"bad address {text!r} in a PROXY v1 line") from None
    if addr.version != version:
        raise ProxyError(f"{text!r} is not an IPv{version} address")
    return str(addr)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyError(f"bad port {text!r} in a PROXY v1 line")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    ver_cmd, family, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError(f"PROXY v2 header with unknown command {command}")
    total = V2_FIXED + length
    if total > MAX_V2_LENGTH:
        raise ProxyError(f"PROXY v2 header of {total} bytes, more than {MAX_V2_LENGTH}")
    if len(data) < total:
        return None
    if command == 0:
        # LOCAL: the balancer's own connection (a health check); the block is ignored.
        return ProxyHeader(2, None, None, total)
    if family not in _V2_FAMILIES:
        raise ProxyError(f"PROXY v2 header with unsupported family/protocol 0x{family:02x}")
    kind = _V2_FAMILIES[family]
    if kind is None:
        return ProxyHeader(2, None, None, total)
    name, need = kind
    if length < need:
        raise ProxyError(f"PROXY v2 {name} address block of {length} bytes, less than {need}")
    block = data[V2_FIXED:V2_FIXED + need]
    if name == "tcp4":
        src, dst, sport, dport = struct.unpack("!4s4sHH", block)
        source: Address = ("tcp", str(ipaddress.IPv4Address(src)), sport)
        destination: Address = ("tcp", str(ipaddress.IPv4Address(dst)), dport)
    elif name == "tcp6":
        src, dst, sport, dport = struct.unpack("!16s16sHH", block)
        source = ("tcp6", str(ipaddress.IPv6Address(src)), sport)
        destination = ("tcp6", str(ipaddress.IPv6Address(dst)), dport)
    else:
        # A Unix-socket client of the balancer: there is no network address to keep.
        return ProxyHeader(2, None, None, total)
    # Whatever follows the address block is TLVs, which okws does not use.
    return ProxyHeader(2, source, destination, total)
