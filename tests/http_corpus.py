"""
A corpus of raw HTTP/1.1 request cases, written for okws from RFC 9110 and RFC 9112.

Each L{Case} is what one client writes on one fresh connection: one or more
requests (L{Exchange}) in a single write, optionally followed by a half-close
(C{shutdown(SHUT_WR)}).  Each exchange says which response it must get:

  - C{service} set: the request is valid, routed to that service by
    C{path}, and the service answers C{status} (usually 200); the
    connection stays usable.
  - C{service} None: okws itself refuses the request (the dispatcher for a
    first request, the service's framer for a later one on a kept-alive
    connection) with C{status}, says C{Connection: close}, and closes;
    except where C{kept} says the framing is intact (404 and C{OPTIONS *}
    for a kept-alive request with no body): the dispatcher answers and the
    connection stays usable.

The bytes of each exchange are exactly one request as RFC 9112 frames it (head
and body), so the framing tests can check where a reader cuts the stream.

Two consumers:

  - C{tests.test_e2e_frontdoor} sends every case to one live site configured
    with L{SERVICES_INI} and checks every status;
  - C{tests.test_agreement} feeds every case to the dispatcher's reader and to
    the service's framer and checks that they agree with each other and with
    the corpus.

The site uses the default limits (L{MAX_REQUEST_LINE}, L{MAX_HEAD},
L{MAX_HEADERS}, the documented defaults of C{max_request_line}, C{max_head},
C{max_headers}), so the boundary cases also check those defaults.

References: "9112 2.2" is RFC 9112 section 2.2; "9110 5.5" is RFC 9110
section 5.5.  Where okws is stricter than a MUST of the RFC (the RFC allows
a choice, or only says SHOULD), the case's C{why} says so.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CORPUS",
    "Case",
    "Exchange",
    "MAX_BODY",
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_REQUEST_LINE",
    "ROUTES",
    "SERVICES_INI",
    "by_name",
]

#: The services of the site the corpus runs against.
SERVICES_INI = """
[service:hello]
resource = services.hello:Hello
paths = /hello

[service:echo]
resource = tests.sites.echo:Echo
paths = /echo

[service:form]
resource = tests.sites.unchecked:UncheckedGuestbook
paths = /form
max_body = 1000
"""

#: Path prefix -> service, as in L{SERVICES_INI}.  No "/" route: other paths get 404.
ROUTES = {"/hello": "hello", "/echo": "echo", "/form": "form"}

#: Each service's max_body (the documented default, 2 MiB, unless set).
DEFAULT_MAX_BODY = 2 * 1024 * 1024
MAX_BODY = {"hello": DEFAULT_MAX_BODY, "echo": DEFAULT_MAX_BODY, "form": 1000}

#: The documented defaults of [okws] max_request_line, max_head, max_headers.
MAX_REQUEST_LINE = 8192
MAX_HEAD = 16384
MAX_HEADERS = 100


@dataclass(frozen=True)
class Exchange:
    """One request as the client writes it, and the response it must get."""

    request: bytes
    status: int
    #: The service that answers; None when okws refuses the request itself.
    service: str | None = None
    #: The path the request is routed by (for valid requests).
    path: bytes | None = None
    #: okws answers this one itself and keeps the connection open.
    kept: bool = False

    @property
    def refused(self) -> bool:
        """okws answers this one itself and then closes the connection."""
        return self.service is None

    @property
    def head_only(self) -> bool:
        """The response has no body (a HEAD request)."""
        return self.request.startswith(b"HEAD ")


@dataclass(frozen=True)
class Case:
    name: str
    rfc: str
    exchanges: tuple[Exchange, ...]
    #: The client half-closes (shutdown(SHUT_WR)) right after writing.
    half_close: bool = False
    why: str = ""

    @property
    def raw(self) -> bytes:
        return b"".join(e.request for e in self.exchanges)

    @property
    def statuses(self) -> tuple[int, ...]:
        return tuple(e.status for e in self.exchanges)

    @property
    def refused(self) -> bool:
        """The last response comes from okws itself, which then closes."""
        return self.exchanges[-1].refused


# -- building requests ---------------------------------------------------------

HOST = b"Host: localhost"


def head(line: bytes, *fields: bytes) -> bytes:
    """A request head: C{line}, then each field line, each ending in CRLF, then CRLF."""
    return b"".join(x + b"\r\n" for x in (line, *fields)) + b"\r\n"


def get(path: bytes, *fields: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    """C{GET path} with a Host field (and C{fields})."""
    return head(b"GET " + path + b" " + version, HOST, *fields)


def post(path: bytes, body: bytes, *fields: bytes) -> bytes:
    """C{POST path} with a Content-Length body."""
    return head(b"POST " + path + b" HTTP/1.1", HOST, b"Content-Length: %d" % len(body), *fields) + body


def chunked(path: bytes, body: bytes, *fields: bytes) -> bytes:
    """C{POST path} with C{body} as the raw chunked message body (chunks, last chunk, trailers)."""
    return head(b"POST " + path + b" HTTP/1.1", HOST, b"Transfer-Encoding: chunked", *fields) + body


def sized_get(total: int) -> bytes:
    """A valid C{GET /hello} head of exactly C{total} bytes (padded with one field)."""
    base = get(b"/hello", b"X-Pad: ")
    return get(b"/hello", b"X-Pad: " + b"p" * (total - len(base)))


def long_line_get(line_length: int) -> bytes:
    """A C{GET /hello?...} whose request line (without CRLF) is C{line_length} bytes."""
    start, end = b"GET /hello?q=", b" HTTP/1.1"
    return get(b"/hello?q=" + b"a" * (line_length - len(start) - len(end)))


def many_fields(count: int) -> bytes:
    """A C{GET /hello} with exactly C{count} header fields, Host included."""
    return get(b"/hello", *(b"X-F%d: v" % i for i in range(count - 1)))


FORM_GET = get(b"/form")
HELLO_GET = get(b"/hello")


# -- case constructors ---------------------------------------------------------


def ok(name: str, rfc: str, request: bytes, service: str, path: bytes, status: int = 200, why: str = "") -> Case:
    """One valid request, answered by C{service}."""
    return Case(name, rfc, (Exchange(request, status, service, path),), why=why)


def refused(name: str, rfc: str, request: bytes, status: int, why: str = "", half_close: bool = False, kept: bool = False) -> Case:
    """One request okws refuses with C{status} and closes (or keeps the connection: C{kept})."""
    return Case(name, rfc, (Exchange(request, status, kept=kept),), half_close=half_close, why=why)


def not_found(name: str, rfc: str, request: bytes, why: str = "") -> Case:
    """A well-formed kept-alive request no service owns: the dispatcher answers 404 and keeps the connection."""
    return refused(name, rfc, request, 404, why, kept=True)


def after_ok(
    name: str,
    rfc: str,
    bad: bytes,
    status: int = 400,
    first: tuple[bytes, str, bytes] = (FORM_GET, "form", b"/form"),
    half_close: bool = False,
    why: str = "",
) -> Case:
    """
    A valid first request, then C{bad} on the same kept-alive connection: the
    service's framer, not the dispatcher, must refuse it.
    """
    request, service, path = first
    return Case(
        name,
        rfc,
        (Exchange(request, 200, service, path), Exchange(bad, status)),
        half_close=half_close,
        why=why,
    )


def pipelined(name: str, rfc: str, *exchanges: tuple[bytes, str, bytes], why: str = "") -> Case:
    """Several valid requests in one write, each answered 200 in order."""
    return Case(name, rfc, tuple(Exchange(r, 200, s, p) for r, s, p in exchanges), why=why)


# -- the corpus ----------------------------------------------------------------

_VALID = [
    ok("get_minimal", "9112 3", HELLO_GET, "hello", b"/hello"),
    ok("get_query", "9112 3.2.1", get(b"/hello?name=corpus&x=%20y/z?w"), "hello", b"/hello"),
    ok("get_below_mount", "9112 3.2.1", get(b"/echo/a/b?c=d"), "echo", b"/echo/a/b"),
    ok("get_trailing_slash", "9112 3.2.1", get(b"/echo/"), "echo", b"/echo/"),
    ok("get_percent_encoded_path", "9110 4.2.3", get(b"/echo/caf%C3%A9"), "echo", b"/echo/caf%C3%A9"),
    ok("get_sub_delims_in_path", "9110 4.1", get(b"/echo/a;b=c,d!$&'()*+@:"), "echo", b"/echo/a;b=c,d!$&'()*+@:"),
    ok("head_minimal", "9110 9.3.2", head(b"HEAD /hello HTTP/1.1", HOST), "hello", b"/hello"),
    ok("http10_without_host", "9112 3.2", head(b"GET /hello HTTP/1.0"), "hello", b"/hello",
       why="Host is required only on HTTP/1.1"),
    ok("http10_keep_alive", "9112 9.3", head(b"GET /hello HTTP/1.0", HOST, b"Connection: keep-alive"), "hello", b"/hello"),
    ok("connection_close", "9112 9.6", get(b"/hello", b"Connection: close"), "hello", b"/hello"),
    ok("one_empty_line_before_request", "9112 2.2", b"\r\n" + HELLO_GET, "hello", b"/hello",
       why="a server SHOULD ignore at least one empty line before the request line"),
    ok("field_name_case_insensitive", "9110 5.1", head(b"GET /hello HTTP/1.1", b"hOsT: localhost"), "hello", b"/hello"),
    ok("field_value_no_ows", "9112 5", head(b"GET /hello HTTP/1.1", b"Host:localhost"), "hello", b"/hello"),
    ok("field_value_ows_around", "9112 5", head(b"GET /hello HTTP/1.1", b"Host: \t localhost \t "), "hello", b"/hello"),
    ok("field_value_with_tab", "9110 5.5", get(b"/hello", b"X-Tab: a\tb"), "hello", b"/hello"),
    ok("field_value_obs_text", "9110 5.5", get(b"/hello", b"X-Latin: caf\xe9 \xff"), "hello", b"/hello",
       why="obs-text (0x80-0xFF) is allowed in field values"),
    ok("field_value_empty", "9110 5.5", get(b"/hello", b"X-Empty:"), "hello", b"/hello"),
    ok("field_name_all_tchars", "9110 5.6.2", get(b"/hello", b"!#$%&'*+-.^_`|~09azAZ: v"), "hello", b"/hello"),
    ok("host_with_port", "9110 7.2", head(b"GET /hello HTTP/1.1", b"Host: localhost:8080"), "hello", b"/hello"),
    ok("host_ipv4", "9110 7.2", head(b"GET /hello HTTP/1.1", b"Host: 127.0.0.1"), "hello", b"/hello"),
    ok("host_ipv6_literal", "9110 7.2", head(b"GET /hello HTTP/1.1", b"Host: [::1]:80"), "hello", b"/hello"),
    ok("method_token_unknown_to_service", "9110 9.1", head(b"PURGE /hello HTTP/1.1", HOST), "hello", b"/hello", 405,
       why="any token is a method; the service answers 405 for one it does not implement"),
    ok("post_to_get_only_service", "9110 15.5.6", post(b"/hello", b"a=b"), "hello", b"/hello", 405),
    ok("get_with_content_length_body", "9110 9.3.1", get(b"/hello", b"Content-Length: 5") + b"hello", "hello", b"/hello"),
    ok("content_length_zero", "9110 8.6", get(b"/hello", b"Content-Length: 0"), "hello", b"/hello"),
    ok("content_length_leading_zeros", "9110 8.6", post(b"/form", b"message=x").replace(b"Length: 9", b"Length: 0009"),
       "form", b"/form"),
    ok("post_form", "9110 9.3.3", post(b"/form", b"message=hi", b"Content-Type: application/x-www-form-urlencoded"),
       "form", b"/form"),
    ok("post_at_max_body", "9110 8.6", post(b"/form", b"m" * 1000), "form", b"/form",
       why="a body of exactly max_body bytes is accepted"),
    ok("post_expect_continue", "9110 10.1.1", post(b"/form", b"message=hi", b"Expect: 100-continue"), "form", b"/form"),
    ok("chunked_simple", "9112 7.1", chunked(b"/form", b"5\r\nhello\r\n0\r\n\r\n"), "form", b"/form"),
    ok("chunked_coding_case_insensitive", "9112 7", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: Chunked")
       + b"5\r\nhello\r\n0\r\n\r\n", "form", b"/form", why="transfer-coding names are case-insensitive"),
    ok("chunked_uppercase_hex_and_leading_zeros", "9112 7.1", chunked(b"/form", b"00A\r\n0123456789\r\n000\r\n\r\n"),
       "form", b"/form"),
    ok("chunked_many_chunks", "9112 7.1", chunked(b"/form", b"".join(b"1\r\n%c\r\n" % c for c in b"message=x") + b"0\r\n\r\n"),
       "form", b"/form"),
    ok("chunked_extensions", "9112 7.1.1", chunked(b"/form", b"5;name=value;flag\r\nhello\r\n0;last=1\r\n\r\n"),
       "form", b"/form"),
    ok("chunked_extension_quoted_string", "9112 7.1.1", chunked(b"/form", b'5;n="a b;c=d"\r\nhello\r\n0\r\n\r\n'),
       "form", b"/form"),
    ok("chunked_trailers", "9112 7.1.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"),
       "form", b"/form"),
    ok("chunked_at_max_body", "9112 7.1", chunked(b"/form", b"3e8\r\n" + b"m" * 1000 + b"\r\n0\r\n\r\n"), "form", b"/form"),
    ok("absolute_form", "9112 3.2.2", get(b"http://localhost/echo/a?x=1"), "echo", b"/echo/a",
       why="routed by the path of the absolute-form target"),
    ok("absolute_form_https_and_case", "9112 3.2.2",
       head(b"GET HTTPS://LOCALHOST:8443/echo/b HTTP/1.1", b"Host: localhost:8443"), "echo", b"/echo/b",
       why="scheme and host are case-insensitive"),
    ok("absolute_form_http10_without_host", "9112 3.2.2", head(b"GET http://localhost/echo/c HTTP/1.0"),
       "echo", b"/echo/c"),
    ok("at_max_request_line", "9112 3", long_line_get(MAX_REQUEST_LINE), "hello", b"/hello",
       why="a request line of exactly max_request_line bytes is accepted"),
    ok("at_max_head", "9112 5", sized_get(MAX_HEAD), "hello", b"/hello",
       why="a head of exactly max_head bytes is accepted"),
    ok("at_max_headers", "9112 5", many_fields(MAX_HEADERS), "hello", b"/hello",
       why="exactly max_headers fields are accepted"),
    pipelined("pipelined_same_service", "9112 9.3.2", (HELLO_GET, "hello", b"/hello"), (get(b"/hello?n=2"), "hello", b"/hello")),
    pipelined("pipelined_two_services", "9112 9.3.2", (HELLO_GET, "hello", b"/hello"), (get(b"/echo/x"), "echo", b"/echo/x")),
    pipelined("pipelined_three_services", "9112 9.3.2",
              (get(b"/echo/1"), "echo", b"/echo/1"),
              (post(b"/form", b"message=2"), "form", b"/form"),
              (HELLO_GET, "hello", b"/hello")),
    pipelined("pipelined_after_post", "9112 9.3.2", (post(b"/form", b"message=1"), "form", b"/form"), (HELLO_GET, "hello", b"/hello")),
    pipelined("pipelined_after_chunked", "9112 9.3.2",
              (chunked(b"/form", b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"), "form", b"/form"),
              (get(b"/echo/next"), "echo", b"/echo/next")),
    pipelined("pipelined_after_head", "9112 9.3.2", (head(b"HEAD /hello HTTP/1.1", HOST), "hello", b"/hello"),
              (HELLO_GET, "hello", b"/hello")),
    pipelined("pipelined_body_looks_like_request", "9112 6.3",
              (post(b"/form", get(b"/echo/smuggled")), "form", b"/form"), (get(b"/echo/real"), "echo", b"/echo/real"),
              why="a body is data however much it looks like a request"),
    pipelined("pipelined_chunk_data_looks_like_request", "9112 7.1",
              (chunked(b"/form", b"%x\r\n" % len(HELLO_GET) + HELLO_GET + b"\r\n0\r\n\r\n"), "form", b"/form"),
              (get(b"/echo/after"), "echo", b"/echo/after")),
    pipelined("pipelined_empty_line_between", "9112 2.2", (HELLO_GET, "hello", b"/hello"),
              (b"\r\n" + get(b"/echo/y"), "echo", b"/echo/y")),
]

_NOT_FOUND = [
    not_found("unrouted_path", "9110 15.5.5", get(b"/nothing/here")),
    not_found("prefix_is_not_a_segment", "9110 15.5.5", get(b"/helloworld")),
    not_found("path_case_sensitive", "9110 4.2.3", get(b"/Hello")),
    not_found("head_unrouted", "9110 9.3.2", head(b"HEAD /nothing HTTP/1.1", HOST)),
    not_found("absolute_form_empty_path", "9112 3.2.2", get(b"http://localhost"),
              why="an empty path is '/', which no service owns here"),
    refused("options_asterisk", "9110 9.3.7", head(b"OPTIONS * HTTP/1.1", HOST), 200, kept=True,
            why="OPTIONS * asks about the server: the dispatcher answers 200 with Allow"),
]

_REQUEST_LINE = [
    refused("request_line_bare_lf", "9112 2.2", b"GET /hello HTTP/1.1\nHost: localhost\r\n\r\n", 400,
            why="okws does not accept a bare LF as a line terminator (the RFC says MAY)"),
    refused("header_bare_lf", "9112 2.2", b"GET /hello HTTP/1.1\r\nHost: localhost\n\r\n", 400),
    refused("all_bare_lf", "9112 2.2", b"GET /hello HTTP/1.1\nHost: localhost\n\n", 400),
    refused("blank_line_bare_lf", "9112 2.2", b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\n", 400),
    refused("bare_cr_in_field_value", "9112 2.2", b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n", 400),
    refused("bare_cr_ends_line", "9112 2.2", b"GET /hello HTTP/1.1\r\nHost: localhost\r\r\n\r\n", 400),
    refused("bare_cr_in_request_line", "9112 2.2", b"GET /hello\rHTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    refused("two_empty_lines_before_request", "9112 2.2", b"\r\n\r\n" + HELLO_GET, 400,
            why="okws ignores exactly one empty line, as twisted.web does"),
    refused("method_invalid_char", "9110 9.1", head(b"GE@T /hello HTTP/1.1", HOST), 400),
    refused("method_non_ascii", "9110 9.1", head(b"G\xc9T /hello HTTP/1.1", HOST), 400),
    refused("method_missing", "9112 3", head(b" /hello HTTP/1.1", HOST), 400),
    refused("request_line_two_spaces", "9112 3", head(b"GET  /hello HTTP/1.1", HOST), 400),
    refused("request_line_tab_separator", "9112 3", head(b"GET\t/hello HTTP/1.1", HOST), 400),
    refused("request_line_trailing_space", "9112 3", head(b"GET /hello HTTP/1.1 ", HOST), 400),
    refused("request_line_no_version", "9112 3", head(b"GET /hello", HOST), 400,
            why="HTTP/0.9 simple requests are not HTTP/1.1"),
    refused("target_empty", "9112 3", head(b"GET  HTTP/1.1", HOST), 400),
    refused("target_space", "9112 3.2", head(b"GET /hel lo HTTP/1.1", HOST), 400),
    refused("target_nul", "9112 3.2", head(b"GET /hello\x00 HTTP/1.1", HOST), 400),
    refused("target_control_char", "9112 3.2", head(b"GET /hello\x01x HTTP/1.1", HOST), 400),
    refused("target_del", "9112 3.2", head(b"GET /hello\x7f HTTP/1.1", HOST), 400),
    refused("target_tab", "9112 3.2", head(b"GET /hel\tlo HTTP/1.1", HOST), 400),
    refused("target_non_ascii", "9112 3.2", head(b"GET /hello/caf\xc3\xa9 HTTP/1.1", HOST), 400),
    refused("target_obs_text_byte", "9112 3.2", head(b"GET /hello/\xff HTTP/1.1", HOST), 400),
    refused("target_relative", "9112 3.2", head(b"GET hello HTTP/1.1", HOST), 400),
    refused("target_relative_dot", "9112 3.2", head(b"GET ../hello HTTP/1.1", HOST), 400),
    refused("target_authority_form_for_get", "9112 3.2.3", head(b"GET localhost:80 HTTP/1.1", HOST), 400,
            why="authority-form is only for CONNECT"),
    refused("target_asterisk_for_get", "9112 3.2.4", head(b"GET * HTTP/1.1", HOST), 400,
            why="asterisk-form is only for OPTIONS"),
    refused("target_fragment", "9110 4.2.5", get(b"/hello#frag"), 400, why="clients never send a fragment"),
    refused("target_dot_segment", "9110 4.2.3", get(b"/hello/../echo"), 400,
            why="okws refuses paths that normalisation would change (dot-segments, RFC 3986 5.2.4)"),
    refused("target_encoded_dot_segment", "9110 4.2.3", get(b"/hello/%2e%2E/echo"), 400),
    refused("target_bad_percent", "9110 4.2.3", get(b"/hello/%zz"), 400),
    refused("target_encoded_nul", "9110 4.2.3", get(b"/hello/%00"), 400),
    refused("absolute_form_userinfo", "9110 4.2.4", get(b"http://user@localhost/echo"), 400,
            why="userinfo in an http(s) URI is an error"),
    refused("absolute_form_other_scheme", "9112 3.2.2", get(b"ftp://localhost/echo"), 400),
    refused("absolute_form_host_mismatch", "9110 7.2", head(b"GET http://other.example/echo HTTP/1.1", HOST), 400,
            why="a client MUST send Host identical to the target's authority; okws refuses a mismatch"),
    refused("connect", "9110 9.3.6", head(b"CONNECT localhost:443 HTTP/1.1", b"Host: localhost:443"), 501,
            why="okws is not a proxy: CONNECT is not implemented (501)"),
    refused("version_lowercase", "9112 2.3", head(b"GET /hello http/1.1", HOST), 400,
            why="HTTP-name is case-sensitive"),
    refused("version_no_minor", "9112 2.3", head(b"GET /hello HTTP/1", HOST), 400),
    refused("version_two_digit_minor", "9112 2.3", head(b"GET /hello HTTP/1.10", HOST), 400),
    refused("version_two_digit_major", "9112 2.3", head(b"GET /hello HTTP/10.1", HOST), 400),
    refused("version_letters", "9112 2.3", head(b"GET /hello HTTP/1.x", HOST), 400),
    refused("version_extra_part", "9112 2.3", head(b"GET /hello HTTP/1.1.1", HOST), 400),
    refused("version_2_0", "9110 15.6.6", head(b"GET /hello HTTP/2.0", HOST), 505),
    refused("version_3_0", "9110 15.6.6", head(b"GET /hello HTTP/3.0", HOST), 505),
    refused("version_0_9", "9110 15.6.6", head(b"GET /hello HTTP/0.9", HOST), 505),
    refused("version_1_2", "9110 6.2", head(b"GET /hello HTTP/1.2", HOST), 505,
            why="okws answers only 1.0 and 1.1 (the RFC says a higher minor SHOULD be read as 1.1)"),
    refused("http2_preface", "9113 3.4", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    refused("request_line_too_long", "9112 3", long_line_get(MAX_REQUEST_LINE + 1), 414),
]

_FIELDS = [
    refused("obs_fold_space", "9112 5.2", get(b"/hello", b"X-A: a", b" b"), 400,
            why="okws rejects obs-fold rather than replacing it with SP"),
    refused("obs_fold_tab", "9112 5.2", get(b"/hello", b"X-A: a", b"\tb"), 400),
    refused("whitespace_before_first_field", "9112 2.2", head(b"GET /hello HTTP/1.1", b" X-A: a", HOST), 400),
    refused("space_before_colon", "9112 5.1", head(b"GET /hello HTTP/1.1", b"Host : localhost"), 400),
    refused("tab_before_colon", "9112 5.1", get(b"/hello", b"X-A\t: a"), 400),
    refused("space_before_colon_content_length", "9112 5.1", post(b"/form", b"abc").replace(b"Length:", b"Length :"), 400),
    refused("field_name_space_inside", "9110 5.1", get(b"/hello", b"X A: b"), 400),
    refused("field_name_invalid_char", "9110 5.1", get(b"/hello", b"X(A): b"), 400),
    refused("field_name_non_ascii", "9110 5.1", get(b"/hello", b"X-\xe9: b"), 400),
    refused("field_name_empty", "9110 5.1", get(b"/hello", b": b"), 400),
    refused("field_line_without_colon", "9112 5", get(b"/hello", b"NoColonHere"), 400),
    refused("field_value_nul", "9110 5.5", get(b"/hello", b"X-A: a\x00b"), 400),
    refused("field_value_control_char", "9110 5.5", get(b"/hello", b"X-A: a\x01b"), 400),
    refused("field_value_escape_char", "9110 5.5", get(b"/hello", b"X-A: \x1b[31m"), 400),
    refused("field_value_del", "9110 5.5", get(b"/hello", b"X-A: a\x7fb"), 400),
    refused("host_missing", "9112 3.2", head(b"GET /hello HTTP/1.1"), 400),
    refused("host_missing_absolute_form", "9112 3.2.2", head(b"GET http://localhost/echo HTTP/1.1"), 400,
            why="a client MUST send Host on HTTP/1.1 even with an absolute-form target"),
    refused("host_repeated_same", "9112 3.2", get(b"/hello", HOST), 400),
    refused("host_repeated_different", "9112 3.2", get(b"/hello", b"Host: other.example"), 400),
    refused("host_repeated_http10", "9112 3.2", head(b"GET /hello HTTP/1.0", HOST, HOST), 400),
    refused("host_invalid_chars", "9112 3.2", head(b"GET /hello HTTP/1.1", b"Host: local/host"), 400),
    refused("host_with_userinfo", "9112 3.2", head(b"GET /hello HTTP/1.1", b"Host: user@localhost"), 400),
    refused("host_port_out_of_range", "9112 3.2", head(b"GET /hello HTTP/1.1", b"Host: localhost:65536"), 400),
    refused("host_empty", "9112 3.2", head(b"GET /hello HTTP/1.1", b"Host:"), 400,
            why="okws refuses an empty Host, as nginx does (RFC 3986's reg-name may be empty)"),
    refused("too_many_fields", "9112 5", many_fields(MAX_HEADERS + 1), 431),
    refused("head_too_large", "9112 5", sized_get(MAX_HEAD + 1), 431),
]

_BODY_HEADERS = [
    refused("content_length_conflicting", "9112 6.3", get(b"/hello", b"Content-Length: 5", b"Content-Length: 6") + b"hello!", 400),
    refused("content_length_repeated_same", "9110 8.6", get(b"/hello", b"Content-Length: 5", b"Content-Length: 5") + b"hello", 400,
            why="okws refuses repeated Content-Length even with equal values (the RFC allows either)"),
    refused("content_length_list", "9110 8.6", get(b"/hello", b"Content-Length: 5, 5") + b"hello", 400),
    refused("content_length_list_conflicting", "9112 6.3", get(b"/hello", b"Content-Length: 5, 6") + b"hello", 400),
    refused("content_length_negative", "9110 8.6", get(b"/hello", b"Content-Length: -1"), 400),
    refused("content_length_plus", "9110 8.6", get(b"/hello", b"Content-Length: +5") + b"hello", 400),
    refused("content_length_hex", "9110 8.6", get(b"/hello", b"Content-Length: 0x5") + b"hello", 400),
    refused("content_length_inner_space", "9110 8.6", get(b"/hello", b"Content-Length: 1 0") + b"0123456789", 400),
    refused("content_length_empty", "9110 8.6", get(b"/hello", b"Content-Length:"), 400),
    refused("content_length_overflow", "9110 8.6", get(b"/hello", b"Content-Length: 99999999999999999999999"), 413,
            why="a length too large to represent is refused, never wrapped"),
    refused("content_length_over_max_body", "9110 15.5.14",
            head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 1001"), 413,
            why="declared body over the service's max_body (1000 for form)"),
    refused("content_length_over_default_max_body", "9110 15.5.14",
            head(b"POST /hello HTTP/1.1", HOST, b"Content-Length: %d" % (DEFAULT_MAX_BODY + 1)), 413,
            why="the default max_body is 2 MiB"),
    refused("content_length_and_chunked", "9112 6.1",
            head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"0\r\n\r\n", 400,
            why="okws rejects (rather than ignoring Content-Length) and closes"),
    refused("chunked_and_content_length", "9112 6.1",
            head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: chunked", b"Content-Length: 5") + b"0\r\n\r\n", 400),
    refused("te_gzip_only", "9112 6.3", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: gzip"), 400),
    refused("te_chunked_not_last", "9112 6.3", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: chunked, gzip"), 400),
    refused("te_gzip_then_chunked", "9112 6.1", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: gzip, chunked"), 400,
            why="okws decodes only chunked; other codings get 400 (the RFC suggests 501 for an unknown coding)"),
    refused("te_unknown_coding", "9112 6.1", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: foo, chunked"), 400),
    refused("te_identity", "9112 6.1", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: identity"), 400,
            why="identity is not a transfer coding (removed in RFC 7230)"),
    refused("te_chunked_twice", "9112 6.1", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: chunked, chunked"), 400),
    refused("te_two_fields", "9112 6.1",
            head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    refused("te_with_parameter", "9112 7", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: chunked;q=1"), 400),
    refused("te_empty", "9112 6.1", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding:"), 400),
    refused("te_control_char", "9110 5.5", head(b"POST /form HTTP/1.1", HOST, b"Transfer-Encoding: \x0bchunked"), 400),
    refused("te_on_http10", "9112 6.1",
            head(b"POST /form HTTP/1.0", HOST, b"Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", 400),
    refused("te_on_http10_with_content_length", "9112 6.1",
            head(b"POST /form HTTP/1.0", HOST, b"Transfer-Encoding: chunked", b"Content-Length: 5") + b"hello", 400),
]

_SERVICE_SIDE = [
    after_ok("second_head_space_before_colon", "9112 5.1", head(b"GET /form HTTP/1.1", b"Host : localhost")),
    after_ok("second_head_bare_lf", "9112 2.2", b"GET /form HTTP/1.1\nHost: localhost\r\n\r\n"),
    after_ok("second_head_content_length_and_chunked", "9112 6.1",
             head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 5", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"),
    after_ok("second_head_conflicting_content_length", "9112 6.3",
             head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 5", b"Content-Length: 6") + b"hello!"),
    after_ok("second_head_for_other_service_malformed", "9112 5.2", get(b"/echo", b"X-A: a", b" folded"),
             why="a later head is checked before it is routed, so the service refuses it"),
    after_ok("second_head_over_max_body", "9110 15.5.14", head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 1001"), 413),
    after_ok("chunk_size_not_hex", "9112 7.1", chunked(b"/form", b"zz\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_empty", "9112 7.1", chunked(b"/form", b"\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_0x_prefix", "9112 7.1", chunked(b"/form", b"0x5\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_negative", "9112 7.1", chunked(b"/form", b"-5\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_plus", "9112 7.1", chunked(b"/form", b"+5\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_leading_space", "9112 7.1", chunked(b"/form", b" 5\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_space_before_extension", "9112 7.1.1", chunked(b"/form", b"5 ;a=b\r\nhello\r\n0\r\n\r\n"),
             why="okws refuses BWS before ';' (the RFC grammar allows it; twisted.web refuses it)"),
    after_ok("chunk_size_too_many_digits", "9112 7.1", chunked(b"/form", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
             why="okws takes at most 16 hex digits"),
    after_ok("chunk_size_bare_lf", "9112 7.1", chunked(b"/form", b"5\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_size_bare_cr", "9112 7.1", chunked(b"/form", b"5\r\rhello\r\n0\r\n\r\n")),
    after_ok("chunk_extension_without_name", "9112 7.1.1", chunked(b"/form", b"5;=x\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_extension_with_space", "9112 7.1.1", chunked(b"/form", b"5;a b\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_extension_control_char", "9112 7.1.1", chunked(b"/form", b"5;a=\x01\r\nhello\r\n0\r\n\r\n")),
    after_ok("chunk_extension_quoted_pair", "9112 7.1.1", chunked(b"/form", b'5;n="a\\"b"\r\nhello\r\n0\r\n\r\n'),
             why="RFC-valid (9110 5.6.4), but twisted.web refuses a backslash in a chunk extension, so the "
             "framer must refuse it first, as it does BWS before ';'"),
    after_ok("chunk_extension_unterminated_quote", "9112 7.1.1", chunked(b"/form", b'5;a="x\r\nhello\r\n0\r\n\r\n')),
    after_ok("chunk_data_longer_than_size", "9112 7.1", chunked(b"/form", b"5\r\nhello!\r\n0\r\n\r\n")),
    after_ok("chunk_data_bare_lf", "9112 7.1", chunked(b"/form", b"5\r\nhello\n0\r\n\r\n")),
    after_ok("chunked_over_max_body", "9110 15.5.14", chunked(b"/form", b"3e9\r\n" + b"m" * 1001 + b"\r\n0\r\n\r\n"), 413),
    after_ok("chunk_size_huge", "9112 7.1", chunked(b"/form", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 413,
             why="a chunk size past max_body is refused at the size line"),
    after_ok("trailer_content_length", "9112 7.1.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n")),
    after_ok("trailer_transfer_encoding", "9112 7.1.2",
             chunked(b"/form", b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n")),
    after_ok("trailer_host", "9112 7.1.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nHost: other.example\r\n\r\n")),
    after_ok("trailer_connection", "9112 7.1.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nConnection: close\r\n\r\n")),
    after_ok("trailer_obs_fold", "9112 5.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n")),
    after_ok("trailer_bare_lf", "9112 2.2", chunked(b"/form", b"5\r\nhello\r\n0\r\nX-A: a\n\r\n")),
    after_ok("body_shorter_than_content_length", "9112 8",
             head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 10") + b"abc", half_close=True,
             why="the client half-closes before the declared body is complete"),
    after_ok("chunked_body_cut_in_data", "9112 8", chunked(b"/form", b"a\r\nabc"), half_close=True),
    after_ok("chunked_body_without_last_chunk", "9112 8", chunked(b"/form", b"5\r\nhello\r\n"), half_close=True),
    after_ok("chunked_body_cut_in_trailers", "9112 8", chunked(b"/form", b"5\r\nhello\r\n0\r\nX-A: a\r\n"), half_close=True),
    refused("first_body_shorter_than_content_length", "9112 8",
            head(b"POST /form HTTP/1.1", HOST, b"Content-Length: 10") + b"abc", 400, half_close=True,
            why="the dispatcher hands off the complete head; the service sees the short body"),
    refused("first_chunk_size_not_hex", "9112 7.1", chunked(b"/form", b"zz\r\nhello\r\n0\r\n\r\n"), 400,
            why="the dispatcher reads only the head: the service's framer refuses the body"),
]

CORPUS: tuple[Case, ...] = tuple(_VALID + _NOT_FOUND + _REQUEST_LINE + _FIELDS + _BODY_HEADERS + _SERVICE_SIDE)


def by_name(name: str) -> Case:
    for case in CORPUS:
        if case.name == name:
            return case
    raise KeyError(name)


def _check() -> None:
    names = [c.name for c in CORPUS]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate case names: {sorted(duplicates)}")
    for case in CORPUS:
        if not case.exchanges or not case.rfc:
            raise ValueError(f"{case.name}: needs exchanges and an RFC reference")
        for e in case.exchanges:
            if e.service is not None and (e.path is None or ROUTES.get(_prefix(e.path)) != e.service):
                raise ValueError(f"{case.name}: {e.path!r} does not route to {e.service!r}")
            if e.refused and e.status < 400 and case.name != "options_asterisk":
                raise ValueError(f"{case.name}: okws only refuses with 4xx/5xx (OPTIONS * aside)")
        if any(e.refused for e in case.exchanges[:-1]):
            raise ValueError(f"{case.name}: only the last exchange may be refused (the connection closes)")


def _prefix(path: bytes) -> str:
    for prefix in ROUTES:
        p = prefix.encode()
        if path == p or path.startswith(p + b"/"):
            return prefix
    return ""


_check()
