# -*- test-case-name: tests.service.test_csrf -*-
"""
CSRF tokens for a service's forms (OKWS had none; Django's and Rails' CSRF protection do the
same job): a signed double submit, pure logic.

The service sets a random nonce in a cookie (C{HttpOnly}, C{SameSite=Lax}; on TLS named
C{__Host-okws-csrf-NAME} and C{Secure}, on plain HTTP C{okws-csrf-NAME}); each form carries
the token C{b64url(HMAC-SHA256(secret, "okws-csrf" NUL service NUL nonce))}.  A state-changing
request passes when its cookie's nonce is well formed and the token it sends (the form field
C{csrf_token} or the C{X-CSRF-Token} header) is that nonce's token.

 - A page on another site can read neither the cookie nor the token (the same-origin policy),
   so it cannot send a matching pair.
 - A planted cookie (from a sibling subdomain, or a plain-HTTP response) gives no token: the
   token is a MAC under a secret only this service holds.
 - Each service has its own secret, which the launcher makes at the first start and hands to
   that service only: a compromised service can mint tokens for itself, never for another.
   The service's name is in the MAC too, so a token never passes at another service.
 - No state: there is no session store, any instance of the service checks any token, and a
   relaunch keeps the secret (it is a file in C{state_dir}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

__all__ = ["FIELD", "HEADER", "CsrfKey", "cookie_name", "new_nonce", "valid_nonce"]

#: The form field that carries the token.
FIELD = b"csrf_token"
#: The header that carries it for scripts (fetch, JSON APIs).
HEADER = b"x-csrf-token"
#: 144 random bits: 24 base64url characters.
NONCE_BYTES = 18
#: The length of the secret the launcher makes.
SECRET_BYTES = 32
#: A token is 43 characters; anything much longer is not one (and is not compared).
MAX_TOKEN = 128
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def cookie_name(service: str, secure: bool) -> bytes:
    """C{__Host-okws-csrf-NAME} on TLS, C{okws-csrf-NAME} on plain HTTP.

    Browsers refuse a C{__Host-} cookie without C{Secure}, and a C{Secure} cookie from a
    plain-HTTP origin other than loopback; so plain HTTP uses the unprefixed name, and each
    side reads only its own name (a cookie planted over plain HTTP is never read on TLS).
    """
    base = b"okws-csrf-" + service.encode("ascii")
    return b"__Host-" + base if secure else base


def new_nonce() -> bytes:
    return _b64(os.urandom(NONCE_BYTES))


def valid_nonce(value: bytes | None) -> bool:
    """A nonce this module could have made (so a planted oddity is never MACed)."""
    return value is not None and len(value) == 24 and all(c in _B64URL for c in value)


@dataclass(frozen=True)
class CsrfKey:
    """One service's secret, and what it signs and checks."""

    service: str
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise ValueError("a CSRF secret is at least 16 random bytes")

    def __repr__(self) -> str:
        return f"CsrfKey(service={self.service!r}, secret=...)"

    def token(self, nonce: bytes) -> bytes:
        """The token that goes with the cookie's C{nonce}."""
        message = b"okws-csrf\x00" + self.service.encode("ascii") + b"\x00" + nonce
        return _b64(hmac.new(self.secret, message, hashlib.sha256).digest())

    def check(self, nonce: bytes | None, sent: bytes | None) -> str | None:
        """L{None} if C{sent} is the token of the cookie's C{nonce}; else why not (for the log)."""
        if not valid_nonce(nonce):
            return "no CSRF cookie" if not nonce else "a malformed CSRF cookie"
        if not sent:
            return "no CSRF token (form field csrf_token or header X-CSRF-Token)"
        if len(sent) > MAX_TOKEN:
            return "a CSRF token too long to be one"
        assert nonce is not None
        if not hmac.compare_digest(self.token(nonce), sent):
            return "a wrong CSRF token"
        return None
