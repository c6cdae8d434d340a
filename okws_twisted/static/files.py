# -*- test-case-name: tests.static.test_files -*-
"""
What a static file server decides, apart from I/O (nginx's ngx_http_static_module, twisted.web's
C{static.File}; OKWS had no static server).

Which file a request path names (L{relative_path}: dot segments, dotfiles, an encoded C{/} and
NUL are refused), its C{Content-Type} (L{content_type}: our own table, the same in a jail with
no C{/etc/mime.types} and out of one), its validators and what a conditional request gets
(L{etag}, L{precondition}, RFC 9110 section 13.2.2), what a C{Range} header asks for
(L{byte_range}: one range, or the whole file), and which precompressed sibling an
C{Accept-Encoding} allows (L{accepted_codings}).  Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import mimetypes
import os
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache

__all__ = [
    "CODINGS",
    "Part",
    "Unsatisfiable",
    "Whole",
    "accepted_codings",
    "byte_range",
    "compressible",
    "content_type",
    "etag",
    "http_date",
    "precondition",
    "relative_path",
]

# ---------------------------------------------------------------------------------------------
# Paths


def relative_path(segments: list[bytes]) -> bytes | None:
    """The file below the root that these (percent-decoded) path segments name, or L{None} (404).

    twisted.web percent-decodes each segment of C{request.postpath}, so C{%2e%2e} arrives as
    C{..} and C{a%2Fb} as C{a/b}: both are refused here, as are dotfiles (C{.env}, C{.git/}),
    NUL, a backslash and empty segments (C{//}).  A trailing slash names a directory: no
    listings, no index files, so that is refused too.
    """
    if not segments:
        return None
    for seg in segments:
        if not seg or seg[:1] == b"." or b"/" in seg or b"\x00" in seg or b"\\" in seg:
            return None
    return b"/".join(segments)


# ---------------------------------------------------------------------------------------------
# Content-Type

# Our own table: never /etc/mime.types, which a jail does not have (the answer would differ in
# and out of one), and Python's built-in table lacks the web fonts, webp and source maps.
_TYPES = mimetypes.MimeTypes(filenames=())
for _ext, _type in {
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".map": "application/json",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}.items():
    _TYPES.add_type(_type, _ext)

# A name ending in a compression suffix is that compressed file on the wire: it is sent as it
# is, without a Content-Encoding (a .tar.gz download stays a .tar.gz).
_CODED = {
    "gzip": b"application/gzip",
    "br": b"application/x-brotli",
    "bzip2": b"application/x-bzip2",
    "xz": b"application/x-xz",
    "compress": b"application/x-compress",
}
_TEXTUAL = ("application/json", "application/manifest+json", "application/xml", "image/svg+xml", "text/javascript")
_COMPRESSIBLE = (b"text/", b"application/json", b"application/manifest+json", b"application/xml",
                 b"image/svg+xml", b"application/wasm", b"image/x-icon")


@lru_cache(maxsize=4096)
def content_type(name: bytes) -> bytes:
    """C{text/css; charset=utf-8}, C{image/png}; C{application/octet-stream} if unknown.

    Cached: a site serves the same few names again and again.
    """
    guessed, encoding = _TYPES.guess_type(os.fsdecode(name), strict=False)
    if encoding is not None:
        return _CODED.get(encoding, b"application/octet-stream")
    if guessed is None:
        return b"application/octet-stream"
    if guessed.startswith("text/") or guessed in _TEXTUAL or guessed.endswith("+json"):
        guessed += "; charset=utf-8"
    return guessed.encode("ascii")


def compressible(ctype: bytes) -> bool:
    """Worth a precompressed sibling (and so a C{Vary: Accept-Encoding})."""
    return ctype.startswith(_COMPRESSIBLE)


# ---------------------------------------------------------------------------------------------
# Validators and conditional requests


def etag(mtime_ns: int, size: int, coding: bytes = b"") -> bytes:
    """A strong entity tag from the file's mtime and size (as nginx), distinct per content coding."""
    tag = b"%x-%x" % (mtime_ns, size)
    return b'"' + tag + (b"-" + coding if coding else b"") + b'"'


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@lru_cache(maxsize=4096)
def http_date(seconds: float) -> bytes:
    """An IMF-fixdate: C{Sun, 06 Nov 1994 08:49:37 GMT} (cached: files keep their dates)."""
    t = time.gmtime(int(seconds))
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday].encode(), t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )


def _parse_date(value: bytes) -> int | None:
    try:
        when = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return int(when.timestamp())


def _tags(value: bytes) -> list[bytes] | None:
    """The entity tags of an C{If-Match} or C{If-None-Match} list; L{None} for C{*}."""
    if value.strip() == b"*":
        return None
    return [t.strip() for t in value.split(b",") if t.strip()]


def _weak_equal(a: bytes, b: bytes) -> bool:
    return a.removeprefix(b"W/") == b.removeprefix(b"W/")


def precondition(method: bytes, headers: dict[bytes, bytes], tag: bytes, mtime: int) -> int | None:
    """412, 304, or L{None} (go on), in RFC 9110 section 13.2.2's order.

    @param headers: the request's headers by lower-case name (the first of each).
    """
    if_match = headers.get(b"if-match")
    if if_match is not None:
        tags = _tags(if_match)
        if tags is not None and tag not in tags:  # strong comparison
            return 412
    else:
        since = headers.get(b"if-unmodified-since")
        when = _parse_date(since) if since is not None else None
        if when is not None and mtime > when:
            return 412
    if_none = headers.get(b"if-none-match")
    if if_none is not None:
        tags = _tags(if_none)
        if tags is None or any(_weak_equal(t, tag) for t in tags):
            return 304 if method in (b"GET", b"HEAD") else 412
    elif method in (b"GET", b"HEAD"):
        since = headers.get(b"if-modified-since")
        when = _parse_date(since) if since is not None else None
        if when is not None and mtime <= when:
            return 304
    return None


# ---------------------------------------------------------------------------------------------
# Range


@dataclass(frozen=True)
class Whole:
    """Send the whole representation: no C{Range}, one that is ignored, or several ranges."""


@dataclass(frozen=True)
class Part:
    """Send bytes C{start} to C{end} (inclusive) as a 206."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class Unsatisfiable:
    """416, with C{Content-Range: bytes */SIZE}."""


def byte_range(value: bytes | None, size: int, if_range: bytes | None, tag: bytes, mtime: int) -> Whole | Part | Unsatisfiable:
    """What to send for a C{Range} header (RFC 9110 section 14).

    One range gives a 206.  Several (C{multipart/byteranges}) are answered with the whole
    representation, which the RFC allows, and which refuses the many-small-ranges
    amplification outright.  A malformed header is ignored (200); an unsatisfiable one is a 416.
    C{If-Range} must match the strong tag or be the exact modification date.
    """
    if value is None:
        return Whole()
    if if_range is not None:
        if if_range.startswith((b'"', b"W/")):
            if if_range != tag:
                return Whole()
        elif _parse_date(if_range) != mtime:
            return Whole()
    unit, sep, spec = value.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return Whole()
    specs = spec.split(b",")
    if len(specs) != 1:
        return Whole()
    first, dash, last = specs[0].strip().partition(b"-")
    if not dash or not _digits(first) or not _digits(last) or not (first or last):
        return Whole()
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return Unsatisfiable()
        return Part(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return Whole()
    if start >= size:
        return Unsatisfiable()
    return Part(start, min(end, size - 1))


def _digits(b: bytes) -> bool:
    return b == b"" or (b.isdigit() and b.isascii() and len(b) <= 19)


# ---------------------------------------------------------------------------------------------
# Precompressed siblings

#: A sibling's suffix and its content coding, in our order of preference.
CODINGS = ((b".br", b"br"), (b".gz", b"gzip"))
_SUFFIX = {coding: suffix for suffix, coding in CODINGS}


@lru_cache(maxsize=256)
def accepted_codings(header: bytes | None) -> tuple[tuple[bytes, bytes], ...]:
    """The (coding, suffix) pairs of L{CODINGS} that C{Accept-Encoding} allows, best first.

    Best by the client's q-value, then by ours (br before gzip); C{*} covers what is not
    named, C{x-gzip} is gzip, and a q-value that is not a number from 0 to 1 refuses.
    Cached: browsers send a few values, the same on every request.
    """
    if header is None:
        return ()
    weights: dict[bytes, float] = {}
    star: float | None = None
    for item in header.split(b","):
        name, *params = [p.strip() for p in item.split(b";")]
        name = name.lower()
        weight = 1.0
        for param in params:
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:
                    weight = 0.0
        if name == b"*":
            star = weight
        elif name == b"x-gzip":
            weights.setdefault(b"gzip", weight)
        elif name:
            weights[name] = weight
    ranked = []
    for order, (_suffix, coding) in enumerate(CODINGS):
        weight = weights.get(coding, star if star is not None else 0.0)
        if weight > 0:
            ranked.append((-weight, order, coding))
    return tuple((coding, _SUFFIX[coding]) for _w, _o, coding in sorted(ranked))
