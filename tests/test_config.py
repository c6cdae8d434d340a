"""Tests for L{okws_twisted.config}: the site's ini file, its defaults and its errors."""

from __future__ import annotations

import os
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from okws_twisted.config import (
    DEFAULT_LISTEN,
    ConfigError,
    Listener,
    ServiceConfig,
    SiteConfig,
    load,
    host_pattern_matches,
    normalize_host,
    normalize_path,
    parse,
    parse_listener,
)

BASE = "/srv/site"

SERVICE = """
[service:hello]
resource = services.hello:Hello
paths = /hello /hi
"""


def site(okws: str = "", services: str = SERVICE) -> SiteConfig:
    """Parse an [okws] body plus service sections, as the file C{site.ini} in L{BASE}."""
    return parse("[okws]\n" + textwrap.dedent(okws) + textwrap.dedent(services), "site.ini", BASE)


class ConfigErrorTests(SynchronousTestCase):
    """The error's text is one line naming what it can."""

    def test_allParts(self) -> None:
        e = ConfigError("site.ini", "service:hello", "paths", "bad")
        self.assertEqual(str(e), "site.ini: [service:hello] paths: bad")
        self.assertEqual((e.file, e.section, e.key, e.message),
                         ("site.ini", "service:hello", "paths", "bad"))

    def test_noSectionNoKey(self) -> None:
        self.assertEqual(str(ConfigError("a.ini", None, None, "gone")), "a.ini: gone")
        self.assertEqual(str(ConfigError("a.ini", "okws", None, "x")), "a.ini: [okws] x")

    def test_oneLine(self) -> None:
        self.assertEqual(str(ConfigError("a.ini", None, "k", "two\nlines")), "a.ini: k: two lines")


class ErrorMixin:
    """Assert that parsing fails with an exact message."""

    def assertConfigError(self, text: str, expected: str) -> ConfigError:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        e = case.assertRaises(ConfigError, parse, text, "site.ini", BASE)
        case.assertEqual(str(e), expected)
        case.assertNotIn("\n", str(e))
        return e


class DefaultsTests(SynchronousTestCase):
    """The minimal site gets the documented defaults."""

    def test_minimal(self) -> None:
        config = site()
        self.assertEqual(config.file, "site.ini")
        self.assertEqual(config.base_dir, BASE)
        self.assertEqual(config.log_dir, "/srv/site/logs")
        self.assertEqual(config.templates, "/srv/site/templates")
        self.assertEqual(
            config.listen,
            (Listener(kind="tcp", port=8080, interface="127.0.0.1", description=DEFAULT_LISTEN),),
        )
        self.assertEqual(config.listen[0].backlog, 2048)
        expected = {
            "max_head": 16384, "max_request_line": 8192, "max_headers": 100,
            "head_timeout": 30.0, "queue_max": 40, "queue_timeout": 30.0, "retry_after": 5,
            "restart_delay_min": 1.0, "restart_delay_max": 60.0, "stable_after": 30.0,
            "drain_timeout": 10.0, "kill_timeout": 5.0, "keepalive_timeout": 60.0,
            "template_timeout": 5.0, "body_timeout": 60.0, "body_min_rate": 1024,
        }
        self.assertEqual({key: getattr(config, key) for key in expected}, expected)

    def test_serviceDefaults(self) -> None:
        (service,) = site().services
        self.assertEqual(
            service,
            ServiceConfig(name="hello", resource="services.hello:Hello", paths=("/hello", "/hi"), isolation="connection"),
        )
        self.assertEqual((service.instances, service.max_body), (1, 2 * 1024 * 1024))
        self.assertEqual((service.hosts, service.isolation), ((), "connection"))

    def test_everyKey(self) -> None:
        config = site("""\
            listen = tcp:9000
            log_dir = /var/log/okws
            templates = tpl
            max_head = 32_768
            max_request_line = 4096
            max_headers = 50
            head_timeout = 2.5
            queue_max = 0
            queue_timeout = 10
            retry_after = 1
            restart_delay_min = 0.5
            restart_delay_max = 0.5
            stable_after = 120
            drain_timeout = 0
            kill_timeout = 0.
            keepalive_timeout = .5
            template_timeout = 1.5
            body_min_rate = 0
            """, services="""
            [service:hello]
            resource = services.hello:Hello
            paths = /
            instances = 64
            max_body = 0
            """)
        self.assertEqual(config.log_dir, "/var/log/okws")
        self.assertEqual(config.templates, "/srv/site/tpl")
        self.assertEqual(config.max_head, 32768)
        self.assertEqual(config.head_timeout, 2.5)
        self.assertIsInstance(config.queue_timeout, float)
        self.assertEqual(config.queue_max, 0)
        self.assertEqual(config.drain_timeout, 0.0)
        self.assertEqual(config.keepalive_timeout, 0.5)
        self.assertEqual(config.template_timeout, 1.5)
        self.assertEqual(config.body_min_rate, 0)
        self.assertEqual((config.services[0].instances, config.services[0].max_body), (64, 0))

    def test_commentsAndContinuations(self) -> None:
        config = site("""\
            # a comment
            ; another
            listen = tcp:8001  # the first
              tcp:8002 ; the second
              # a comment inside the value
              unix:okws.sock
            """, services="""
            [service:hello]   # trailing comment
            resource = services.hello:Hello
            paths =
              /a
              /b /c
            """)
        self.assertEqual([l.description for l in config.listen],
                         ["tcp:8001", "tcp:8002", "unix:okws.sock"])
        self.assertEqual(config.services[0].paths, ("/a", "/b", "/c"))

    def test_keysAreCaseSensitive(self) -> None:
        e = self.assertRaises(ConfigError, site, "Listen = tcp:1\n")
        self.assertEqual(str(e), "site.ini: [okws] Listen: unknown key; did you mean listen?")


class RelativePathTests(SynchronousTestCase):
    """Relative paths resolve against the config file's directory."""

    def test_againstBaseDir(self) -> None:
        config = site("log_dir = ../logs\ntemplates = ./t/\nlisten = unix:run/s.sock\n")
        self.assertEqual(config.log_dir, "/srv/logs")
        self.assertEqual(config.templates, "/srv/site/t")
        self.assertEqual(config.listen[0].path, "/srv/site/run/s.sock")

    def test_absoluteKept(self) -> None:
        config = site("log_dir = /var/log/x\nlisten = unix:/run/okws.sock\n")
        self.assertEqual(config.log_dir, "/var/log/x")
        self.assertEqual(config.listen[0].path, "/run/okws.sock")

    def test_relativeBaseDir(self) -> None:
        config = parse("[okws]\n" + SERVICE, "site.ini", "conf")
        self.assertEqual(config.base_dir, os.path.abspath("conf"))

    def test_load(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "site.ini")
        with open(path, "w") as f:
            f.write("[okws]\nlog_dir = l\n" + SERVICE)
        config = load(path)
        self.assertEqual(config.file, path)
        self.assertEqual(config.base_dir, directory)
        self.assertEqual(config.log_dir, os.path.join(directory, "l"))

    def test_loadRelativeName(self) -> None:
        """The file is named as given; the base directory is still absolute."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "site.ini")
        with open(path, "w") as f:
            f.write("[okws]\n" + SERVICE)
        config = load(path)
        self.assertEqual(config.file, path)
        self.assertEqual(config.base_dir, os.path.abspath(directory))


class LoadErrorTests(SynchronousTestCase):
    """Unreadable files are config errors naming the file."""

    def test_missing(self) -> None:
        e = self.assertRaises(ConfigError, load, "no/such/site.ini")
        self.assertEqual(str(e), "no/such/site.ini: cannot read: No such file or directory")

    def test_directory(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        e = self.assertRaises(ConfigError, load, directory)
        self.assertEqual(str(e), f"{directory}: cannot read: Is a directory")

    def test_notUtf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[okws]\n\xff\n")
        e = self.assertRaises(ConfigError, load, path)
        self.assertEqual(str(e), f"{path}: not UTF-8 text (byte 7)")


class ListenerParseTests(SynchronousTestCase):
    """Each listener form parses to the right L{Listener}."""

    def test_tcp(self) -> None:
        listener = parse_listener("tcp:80", BASE)
        self.assertEqual(
            (listener.kind, listener.port, listener.interface, listener.path, listener.backlog),
            ("tcp", 80, "0.0.0.0", None, 2048),
        )
        self.assertEqual(listener.description, "tcp:80")

    def test_tcpOptions(self) -> None:
        listener = parse_listener("tcp:8080:interface=127.0.0.1:backlog=10", BASE)
        self.assertEqual((listener.port, listener.interface, listener.backlog),
                         (8080, "127.0.0.1", 10))

    def test_keywordForm(self) -> None:
        self.assertEqual(
            parse_listener("tcp:port=8080:interface=127.0.0.1", BASE),
            Listener(kind="tcp", port=8080, interface="127.0.0.1",
                     description="tcp:port=8080:interface=127.0.0.1"),
        )
        listener = parse_listener("unix:address=s.sock", BASE)
        self.assertEqual(listener.path, "/srv/site/s.sock")

    def test_tcp6(self) -> None:
        listener = parse_listener("tcp6:443", BASE)
        self.assertEqual((listener.kind, listener.port, listener.interface), ("tcp6", 443, "::"))
        listener = parse_listener("tcp6:8080:interface=\\:\\:1:backlog=5", BASE)
        self.assertEqual((listener.interface, listener.backlog), ("::1", 5))

    def test_interfaceCanonical(self) -> None:
        listener = parse_listener("tcp6:80:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1", BASE)
        self.assertEqual(listener.interface, "::1")

    def test_unix(self) -> None:
        listener = parse_listener("unix:/run/okws.sock", BASE)
        self.assertEqual((listener.kind, listener.path, listener.mode, listener.port,
                          listener.interface), ("unix", "/run/okws.sock", 0o666, None, ""))
        self.assertEqual(parse_listener("unix:/s:mode=0600:backlog=7", BASE).mode, 0o600)
        self.assertEqual(parse_listener("unix:/s:mode=640", BASE).mode, 0o640)

    def test_unixEscapedColon(self) -> None:
        self.assertEqual(parse_listener("unix:/run/a\\:b", BASE).path, "/run/a:b")

    def test_canonicalDescription(self) -> None:
        self.assertEqual(Listener(kind="tcp6", port=1, interface="::1").description,
                         "tcp6:1:interface=\\:\\:1:backlog=2048")
        self.assertEqual(Listener(kind="unix", path="/a:b", mode=0o600).description,
                         "unix:/a\\:b:mode=600:backlog=2048")

    def test_errors(self) -> None:
        cases = {
            "ssl:443": "an ssl listener needs privateKey=KEY.pem",
            "ssl:443:certKey=c.pem": "an ssl listener needs privateKey=KEY.pem",
            "ssl:443:privateKey=k.pem:method=TLSv1": "unknown option 'method' for ssl; options are "
                                                     "port, interface, backlog, privateKey, certKey",
            "haproxy:ssl:443:privateKey=k.pem": "haproxy:ssl: is not supported; put the PROXY listener "
                                                "and the TLS listener on separate ports",
            "tls:443:/etc/keys": "unexpected '/etc/keys': after the first field give options by name "
                                 "(path=, interface=, backlog=)",
            "tls:443": "a tls listener needs path=DIR, a directory of PEM files (key and certificate chain)",
            "tls:443:path=k:privateKey=k.pem": "unknown option 'privateKey' for tls; options are "
                                               "port, path, interface, backlog",
            "haproxy:tls:443:path=k": "haproxy:tls: is not supported; put the PROXY listener "
                                      "and the TLS listener on separate ports",
            "npipe:foo": "npipe listeners are not supported yet; "
                         "supported now: tcp, tcp6, unix, ssl, tls, systemd",
            "systemd:domain=INET": "a systemd listener needs index=N or name=NAME (one of them)",
            "systemd:domain=INET:index=0:name=http": "a systemd listener needs index=N or name=NAME (one of them)",
            "systemd:domain=IPX:index=0": "domain must be one of INET, INET6, UNIX, got 'IPX'",
            "systemd:index=0": "missing the domain (domain=INET, INET6 or UNIX)",
            "systemd:domain=INET:index=-1": "index must be a whole number, got '-1'",
            "systemd:domain=INET:port=80": "unknown option 'port' for systemd; options are domain, index, name",
            "8080": "a bare port; write tcp:8080:interface=ADDR",
            "tcp": "missing the port",
            "tcp:": "missing the port",
            "tcp:http": "port must be a whole number, got 'http'",
            "tcp:-1": "port must be a whole number, got '-1'",
            "tcp:65536": "port must be a whole number from 0 to 65535, got 65536",
            "tcp:80:127.0.0.1": "unexpected '127.0.0.1': after the first field give "
                                "options by name (interface=, backlog=)",
            "tcp:80:interface=::1": "an IPv6 interface needs tcp6, with each ':' escaped as "
                                    "'\\:', e.g. tcp6:80:interface=\\:\\:1",
            "tcp:80:interface=localhost": "interface must be an IPv4 address like 127.0.0.1, "
                                          "got 'localhost'",
            "tcp:80:interface=": "interface is empty; leave it out to listen on every address",
            "tcp6:80:interface=::1": "escape each ':' of an IPv6 interface as '\\:', "
                                     "e.g. interface=\\:\\:1",
            "tcp6:80:interface=127.0.0.1": "interface must be an IPv6 address like \\:\\:1 "
                                           "(escape each ':' as '\\:'), got '127.0.0.1'",
            "tcp:80:backlog=0": "backlog must be a whole number from 1 to 65535, got 0",
            "tcp:80:backlog=1:backlog=2": "option 'backlog' is given twice",
            "tcp:80:port=81": "port is given twice",
            "tcp:80:mode=600": "unknown option 'mode' for tcp; options are port, interface, "
                               "backlog",
            "unix:/s:mode=999": "mode must be octal permissions like 666, got '999'",
            "unix:/s:mode=7777": "mode must be octal permissions from 0 to 777, got 0o7777",
            "unix:/s:lockfile=0": "unknown option 'lockfile' for unix; options are address, "
                                  "mode, backlog",
            "unix:/" + "a" * 107: f"the socket path '/{'a' * 107}' is longer than 107 bytes, "
                                  "the limit of a Unix socket address; use a shorter path",
            "tcp:80\\": "ends with a lone backslash",
            "": "expected KIND:... with KIND one of tcp, tcp6, unix, systemd",
        }
        for description, message in cases.items():
            e = self.assertRaises(ValueError, parse_listener, description, BASE)
            self.assertEqual(str(e), f"{description!r}: {message}")


class ListenerConfigTests(SynchronousTestCase, ErrorMixin):
    """The listen key: several endpoints, defaults, duplicates."""

    def test_several(self) -> None:
        config = site("listen = tcp:80\n  tcp6:80\n  unix:/run/s\n")
        self.assertEqual([l.kind for l in config.listen], ["tcp", "tcp6", "unix"])

    def test_portZeroRepeats(self) -> None:
        config = site("listen = tcp:0:interface=127.0.0.1\n  tcp:0:interface=127.0.0.1\n")
        self.assertEqual(len(config.listen), 2)

    def test_unsupportedKind(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = npipe:foo\n" + SERVICE,
            "site.ini: [okws] listen: 'npipe:foo': npipe listeners are not "
            "supported yet; supported now: tcp, tcp6, unix, ssl, tls, systemd",
        )

    def test_systemd(self) -> None:
        """Socket activation, as Twisted's systemd: endpoint: by index or by name, PROXY or not."""
        config = site("listen = systemd:domain=INET:index=0\n  haproxy:systemd:domain=INET6:name=http\n")
        first, second = config.listen
        self.assertEqual((first.kind, first.domain, first.fd_index, first.proxy), ("systemd", "INET", 0, False))
        self.assertEqual((second.domain, second.fd_name, second.proxy), ("INET6", "http", True))
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)

    def test_systemdTwice(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = systemd:domain=INET:index=0\n  systemd:INET:index=0\n" + SERVICE,
            "site.ini: [okws] listen: 'systemd:INET:index=0' is listed twice (as 'systemd:domain=INET:index=0')",
        )

    def test_ssl(self) -> None:
        config = site("listen = ssl:443:privateKey=keys/k.pem:certKey=/etc/c.pem\n"
                      "  ssl:8443:interface=\\:\\:1:privateKey=both.pem\n  tcp:80\n")
        first, second, plain = config.listen
        self.assertEqual((first.kind, first.port, first.tls), ("tcp", 443, True))
        self.assertEqual((first.private_key, first.cert_key), ("/srv/site/keys/k.pem", "/etc/c.pem"))
        self.assertEqual((second.kind, second.interface), ("tcp6", "::1"))
        self.assertEqual(second.cert_key, "/srv/site/both.pem")
        self.assertFalse(plain.tls)
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)
        self.assertEqual(
            Listener(kind="tcp", port=443, private_key="/k", cert_key="/c").description,
            "ssl:443:interface=0.0.0.0:backlog=2048:privateKey=/k:certKey=/c",
        )

    def test_tlsDirectory(self) -> None:
        config = site("listen = tls:443:path=certs\n  tls:8443:path=/etc/okws/certs:interface=\\:\\:1:backlog=10\n")
        first, second = config.listen
        self.assertEqual((first.kind, first.port, first.tls, first.sni_dir), ("tcp", 443, True, "/srv/site/certs"))
        self.assertIsNone(first.private_key)
        self.assertEqual((second.kind, second.interface, second.backlog, second.sni_dir), ("tcp6", "::1", 10, "/etc/okws/certs"))
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)
        self.assertEqual(
            Listener(kind="tcp", port=443, sni_dir="/c").description,
            "tls:443:path=/c:interface=0.0.0.0:backlog=2048",
        )
        with self.assertRaises(ValueError):
            Listener(kind="tcp", port=443, sni_dir="/c", private_key="/k", cert_key="/k")
        with self.assertRaises(ValueError):
            Listener(kind="tcp", port=443, sni_dir="relative")

    def test_sslOverlapsTcp(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = tcp:443\n  ssl:443:privateKey=k.pem\n" + SERVICE,
            "site.ini: [okws] listen: 'ssl:443:privateKey=k.pem' is listed twice (as 'tcp:443')",
        )

    def test_duplicate(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = tcp:80\n  tcp:80:interface=0.0.0.0\n" + SERVICE,
            "site.ini: [okws] listen: 'tcp:80:interface=0.0.0.0' is listed twice (as 'tcp:80')",
        )

    def test_duplicateUnix(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = unix:s.sock\n  unix:/srv/site/s.sock\n" + SERVICE,
            "site.ini: [okws] listen: 'unix:/srv/site/s.sock' is listed twice (as 'unix:s.sock')",
        )

    def test_wildcardOverlap(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = tcp:80:interface=127.0.0.1\n  tcp:80\n" + SERVICE,
            "site.ini: [okws] listen: 'tcp:80' overlaps 'tcp:80:interface=127.0.0.1': "
            "0.0.0.0 already covers every address on port 80",
        )

    def test_differentInterfacesSamePort(self) -> None:
        config = site("listen = tcp:80:interface=127.0.0.1\n  tcp:80:interface=127.0.0.2\n")
        self.assertEqual(len(config.listen), 2)

    def test_empty(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten =\n" + SERVICE,
            "site.ini: [okws] listen: expected one or more endpoints, one per line, got none",
        )


class PathTests(SynchronousTestCase, ErrorMixin):
    """Service paths: normalisation, rejection, clashes."""

    def test_normalize(self) -> None:
        self.assertEqual(normalize_path("/"), "/")
        self.assertEqual(normalize_path("/a/"), "/a")
        self.assertEqual(normalize_path("/a/b"), "/a/b")
        self.assertEqual(normalize_path("/caf%C3%A9"), "/caf%C3%A9")

    def test_rejected(self) -> None:
        cases = {
            "a": "'a' must start with '/'",
            "": "'' must start with '/'",
            "/a b": "'/a b' may contain only printable ASCII without spaces; "
                    "percent-encode other characters as clients send them",
            "/café": "'/café' may contain only printable ASCII without spaces; "
                     "percent-encode other characters as clients send them",
            "/a?b": "'/a?b' contains '?'; a path prefix has no query or fragment",
            "/a#b": "'/a#b' contains '#'; a path prefix has no query or fragment",
            "//": "'//' contains an empty segment ('//')",
            "/a//b": "'/a//b' contains an empty segment ('//')",
            "/a/./b": "'/a/./b' contains a '.' or '..' segment",
            "/..": "'/..' contains a '.' or '..' segment",
        }
        for path, message in cases.items():
            e = self.assertRaises(ValueError, normalize_path, path)
            self.assertEqual(str(e), message)

    def test_dotsInNamesAllowed(self) -> None:
        self.assertEqual(normalize_path("/a.b/..c"), "/a.b/..c")

    def test_claimedTwice(self) -> None:
        self.assertConfigError(
            "[okws]\n" + SERVICE + "[service:other]\nresource = a:B\npaths = /x /hi/\n",
            "site.ini: [service:other] paths: '/hi' is already claimed by [service:hello]",
        )

    def test_listedTwiceInOneService(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /x /x/\n",
            "site.ini: [service:a] paths: '/x/' is listed twice (as '/x')",
        )

    def test_badPathInIni(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /ok hello\n",
            "site.ini: [service:a] paths: 'hello' must start with '/'",
        )

    def test_noPaths(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths =\n",
            "site.ini: [service:a] paths: expected one or more paths like /hello, got none",
        )


class ErrorTests(SynchronousTestCase, ErrorMixin):
    """Every mistake is one line naming the file, section and key."""

    def test_noOkwsSection(self) -> None:
        self.assertConfigError(
            SERVICE, "site.ini: no [okws] section; it is required (it may be empty)"
        )

    def test_noService(self) -> None:
        self.assertConfigError(
            "[okws]\n", "site.ini: no [service:NAME] or [static:NAME] section; at least one is required"
        )

    def test_unknownSection(self) -> None:
        self.assertConfigError(
            "[okws]\n[services:hello]\n",
            "site.ini: [services:hello] unknown section; did you mean [service:hello]? "
            "(sections are [okws], [service:NAME], [static:NAME] and [db:NAME])",
        )
        self.assertConfigError(
            "[okw]\n", "site.ini: [okw] unknown section; did you mean [okws]? "
            "(sections are [okws], [service:NAME], [static:NAME] and [db:NAME])",
        )
        self.assertConfigError(
            "[okws]\n[DEFAULT]\nlog_dir = x\n",
            "site.ini: [DEFAULT] unknown section (sections are [okws], [service:NAME], [static:NAME] and [db:NAME])",
        )

    def test_unknownKey(self) -> None:
        self.assertConfigError(
            "[okws]\nmax_heads = 1\n" + SERVICE,
            "site.ini: [okws] max_heads: unknown key; did you mean max_head?",
        )
        self.assertConfigError(
            "[okws]\nwhatever = 1\n" + SERVICE, "site.ini: [okws] whatever: unknown key"
        )
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /\ninstance = 2\n",
            "site.ini: [service:a] instance: unknown key; did you mean instances?",
        )

    def test_keyInWrongSection(self) -> None:
        self.assertConfigError(
            "[okws]\npaths = /\n" + SERVICE,
            "site.ini: [okws] paths: unknown key here; paths belongs in a [service:NAME] section",
        )
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /\nmax_head = 1\n",
            "site.ini: [service:a] max_head: unknown key here; max_head belongs in [okws]",
        )

    def test_badNumbers(self) -> None:
        cases = [
            ("max_head = big", "max_head: expected a whole number of bytes (or K, M, G), 1 or more, "
                               "got 'big'"),
            ("max_head = 0", "max_head: expected a whole number of bytes (or K, M, G), 1 or more, got '0'"),
            ("max_headers = -3", "max_headers: expected a whole number of headers, 1 or more, "
                                 "got '-3'"),
            ("max_request_line = 1.5", "max_request_line: expected a whole number of bytes (or K, M, G), "
                                       "1 or more, got '1.5'"),
            ("head_timeout = 0", "head_timeout: expected a number of seconds above 0, got '0'"),
            ("head_timeout = nan", "head_timeout: expected a number of seconds above 0, "
                                   "got 'nan'"),
            ("queue_timeout = 1e3", "queue_timeout: expected a number of seconds above 0, "
                                    "got '1e3'"),
            ("queue_max = -1", "queue_max: expected a whole number of connections, 0 or more, "
                               "got '-1'"),
            ("retry_after = 0", "retry_after: expected a whole number of seconds, 1 or more, "
                                "got '0'"),
            ("drain_timeout = -1", "drain_timeout: expected a number of seconds, 0 or more, "
                                   "got '-1'"),
            ("kill_timeout =", "kill_timeout: expected a number of seconds, 0 or more, got ''"),
            ("stable_after = 30s", "stable_after: expected a number of seconds above 0, "
                                   "got '30s'"),
            ("keepalive_timeout = 0", "keepalive_timeout: expected a number of seconds above 0, "
                                      "got '0'"),
            ("restart_delay_min = 0", "restart_delay_min: expected a number of seconds above 0, "
                                      "got '0'"),
            ("template_timeout = 0", "template_timeout: expected a number of seconds above 0, "
                                     "got '0'"),
            ("body_min_rate = 1.5", "body_min_rate: expected a whole number of bytes per second, "
                                    "0 or more, got '1.5'"),
            ("body_min_rate = -1", "body_min_rate: expected a whole number of bytes per second, "
                                   "0 or more, got '-1'"),
        ]
        for line, message in cases:
            self.assertConfigError(f"[okws]\n{line}\n" + SERVICE, f"site.ini: [okws] {message}")

    def test_serviceNumbers(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /\ninstances = 65\n",
            "site.ini: [service:a] instances: expected a whole number of instances from 1 to 64, "
            "got '65'",
        )
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /\nmax_body = -1\n",
            "site.ini: [service:a] max_body: expected a whole number of bytes (or K, M, G), 0 or more, "
            "got '-1'",
        )

    def test_restartDelays(self) -> None:
        self.assertConfigError(
            "[okws]\nrestart_delay_min = 90\n" + SERVICE,
            "site.ini: [okws] restart_delay_min: 90 is above restart_delay_max (60)",
        )
        self.assertConfigError(
            "[okws]\nrestart_delay_max = 0.5\n" + SERVICE,
            "site.ini: [okws] restart_delay_max: 0.5 is below restart_delay_min (1)",
        )
        self.assertConfigError(
            "[okws]\nrestart_delay_min = 9\nrestart_delay_max = 8\n" + SERVICE,
            "site.ini: [okws] restart_delay_min: 9 is above restart_delay_max (8)",
        )

    def test_requestLineAboveHead(self) -> None:
        self.assertConfigError(
            "[okws]\nmax_head = 4096\n" + SERVICE,
            "site.ini: [okws] max_head: 4096 is below max_request_line (8192), "
            "which would answer 431 before 414",
        )

    def test_emptyDirectory(self) -> None:
        self.assertConfigError(
            "[okws]\nlog_dir =\n" + SERVICE,
            "site.ini: [okws] log_dir: expected a directory, got nothing",
        )

    def test_directoryOnOneLine(self) -> None:
        """An indented line after a blank one continues the value; a directory must not."""
        self.assertConfigError(
            "[okws]\nlog_dir = logs\n\n  templates = t\n" + SERVICE,
            "site.ini: [okws] log_dir: expected one directory on one line, "
            "got 'logs\\n\\ntemplates = t'",
        )

    def test_serviceName(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:Hello]\nresource = a:B\npaths = /\n",
            "site.ini: [service:Hello] service name 'Hello' must match [a-z][a-z0-9_-]{0,31} "
            "(lower case, starting with a letter, at most 32 characters)",
        )
        for name in ("", "1a", "a" * 33, "a.b", "-a"):
            e = self.assertRaises(
                ConfigError, parse,
                f"[okws]\n[service:{name}]\nresource = a:B\npaths = /\n", "site.ini", BASE,
            )
            self.assertEqual((e.section, e.key), (f"service:{name}", None))
        self.assertEqual(site(services="[service:a" + "b" * 31 + "]\nresource = a:B\n"
                              "paths = /\n").services[0].name, "a" + "b" * 31)

    def test_resource(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = services.hello.Hello\npaths = /\n",
            "site.ini: [service:a] resource: expected package.module:Class, "
            "got 'services.hello.Hello'",
        )
        for bad in ("a:b:C", ":C", "a:", "a..b:C", "1a:C", "a:class", "a b:C", "a:B.", ""):
            e = self.assertRaises(
                ConfigError, parse,
                f"[okws]\n[service:a]\nresource = {bad}\npaths = /\n", "site.ini", BASE,
            )
            self.assertEqual((e.section, e.key), ("service:a", "resource"))
        config = site(services="[service:a]\nresource = pkg.sub.mod:Outer.Inner\npaths = /\n")
        self.assertEqual(config.services[0].resource, "pkg.sub.mod:Outer.Inner")

    def test_missingServiceKeys(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\npaths = /\n",
            "site.ini: [service:a] resource: missing; expected package.module:Class",
        )
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\n",
            "site.ini: [service:a] paths: missing; expected /hello /hi",
        )

    def test_duplicateSection(self) -> None:
        self.assertConfigError(
            "[okws]\n" + SERVICE + SERVICE,
            "site.ini: [service:hello] line 7: this section appears twice",
        )

    def test_duplicateKey(self) -> None:
        e = self.assertConfigError(
            "[okws]\nlog_dir = a\nlog_dir = b\n" + SERVICE,
            "site.ini: [okws] log_dir: line 3: this key appears twice in the section",
        )
        self.assertEqual((e.file, e.section, e.key), ("site.ini", "okws", "log_dir"))

    def test_syntax(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten tcp:80\n" + SERVICE,
            "site.ini: [okws] line 2: cannot parse 'listen tcp:80'; expected [section], "
            "key = value, an indented continuation line or a comment",
        )
        self.assertConfigError(
            "[okws]\nlisten: tcp:80\n" + SERVICE,
            "site.ini: [okws] line 2: cannot parse 'listen: tcp:80'; expected [section], "
            "key = value, an indented continuation line or a comment",
        )

    def test_keyBeforeSection(self) -> None:
        self.assertConfigError(
            "log_dir = x\n[okws]\n", "site.ini: line 1: 'log_dir = x' comes before any [section]"
        )

    def test_noInterpolation(self) -> None:
        config = site(services="[service:a]\nresource = a:B\npaths = /%(x)s /100%25\n")
        self.assertEqual(config.services[0].paths, ("/%(x)s", "/100%25"))


class ValueTests(SynchronousTestCase):
    """The dataclasses validate themselves, so a bad value cannot travel."""

    def make(self, **overrides: object) -> SiteConfig:
        kwargs: dict[str, object] = {
            "file": "site.ini", "base_dir": BASE, "log_dir": "/l", "templates": "/t",
            "services": (ServiceConfig(name="a", resource="a:B", paths=("/",)),),
        }
        kwargs.update(overrides)
        return SiteConfig(**kwargs)  # type: ignore[arg-type]

    def test_frozen(self) -> None:
        config = self.make()
        self.assertRaises(AttributeError, setattr, config, "max_head", 1)
        self.assertRaises(AttributeError, setattr, config.services[0], "name", "b")
        self.assertEqual(hash(config), hash(self.make()))

    def test_defaultListen(self) -> None:
        self.assertEqual(self.make().listen, (parse_listener(DEFAULT_LISTEN, "/"),))

    def test_siteErrors(self) -> None:
        e = self.assertRaises(ConfigError, self.make, max_head=True)
        self.assertEqual(str(e), "site.ini: [okws] max_head: expected a whole number of bytes (or K, M, G), "
                                 "1 or more, got True")
        e = self.assertRaises(ConfigError, self.make, head_timeout=float("inf"))
        self.assertEqual(e.key, "head_timeout")
        e = self.assertRaises(ConfigError, self.make, log_dir="logs")
        self.assertEqual(str(e), "site.ini: [okws] log_dir: expected an absolute directory, "
                                 "got 'logs'")
        e = self.assertRaises(ConfigError, self.make, services=())
        self.assertEqual(str(e), "site.ini: no [service:NAME] or [static:NAME] section; "
                                 "at least one is required")
        e = self.assertRaises(ConfigError, self.make, restart_delay_min=2.0, restart_delay_max=1.0)
        self.assertEqual(str(e), "site.ini: [okws] restart_delay_min: 2 is above "
                                 "restart_delay_max (1)")
        service = ServiceConfig(name="a", resource="a:B", paths=("/",))
        e = self.assertRaises(ConfigError, self.make, services=(service, service))
        self.assertEqual(str(e), "site.ini: [service:a] this service is defined twice")
        self.assertRaises(ConfigError, self.make, base_dir="relative")
        self.assertRaises(ConfigError, self.make, listen=())

    def test_intForFloat(self) -> None:
        config = self.make(head_timeout=3)
        self.assertEqual(config.head_timeout, 3.0)
        self.assertIsInstance(config.head_timeout, float)

    def test_serviceErrors(self) -> None:
        self.assertRaises(ValueError, ServiceConfig, name="a", resource="a:B", paths="/a")
        self.assertRaises(ValueError, ServiceConfig, name="a", resource="a:B", paths=("/",),
                          instances=0)
        self.assertRaises(ValueError, ServiceConfig, name="A", resource="a:B", paths=("/",))
        service = ServiceConfig(name="a", resource="a:B", paths=["/x/"])  # type: ignore[arg-type]
        self.assertEqual(service.paths, ("/x",))

    def test_listenerErrors(self) -> None:
        self.assertRaises(ValueError, Listener, kind="ssl", port=1)
        self.assertRaises(ValueError, Listener, kind="tcp", port=None)
        self.assertRaises(ValueError, Listener, kind="tcp", port=1, path="/x")
        self.assertRaises(ValueError, Listener, kind="tcp", port=1, mode=0o600)
        self.assertRaises(ValueError, Listener, kind="unix", path="relative")
        self.assertRaises(ValueError, Listener, kind="unix", path="/x", port=1)
        self.assertRaises(ValueError, Listener, kind="tcp", port=True)


class JsonTests(SynchronousTestCase):
    """The launcher hands children the config as JSON; it comes back equal."""

    def test_roundTrip(self) -> None:
        config = site("""\
            listen = tcp:8080:interface=127.0.0.1
              tcp6:8443:interface=\\:\\:1:backlog=5
              unix:run/s.sock:mode=0600
            head_timeout = 2.5
            queue_max = 7
            """, services=SERVICE + "[service:two]\nresource = a.b:C\npaths = / /x/\n"
                                    "instances = 3\nmax_body = 10\n")
        text = config.to_json()
        again = SiteConfig.from_json(text)
        self.assertEqual(again, config)
        self.assertEqual(again.to_json(), text)
        self.assertEqual(again.listen[1].description, "tcp6:8443:interface=\\:\\:1:backlog=5")
        self.assertIsInstance(again.services, tuple)
        self.assertIsInstance(again.services[1].paths, tuple)

    def test_rejectsOthers(self) -> None:
        good = site().to_json()
        for text in ("", "[]", "{}", good.replace('"format":1', '"format":2'),
                     good.replace('"max_head":16384', '"max_head":-1'),
                     good.replace('"max_head":16384', '"max_head":1,"extra":2'),
                     good.replace('"name":"hello"', '"name":"Hello"')):
            e = self.assertRaises(ValueError, SiteConfig.from_json, text)
            self.assertTrue(str(e).startswith("invalid site config JSON: "), str(e))


class LoggingKeyTests(ErrorMixin, SynchronousTestCase):
    """The log daemon's keys (docs/logging.md)."""

    def test_defaults(self) -> None:
        config = site()
        self.assertEqual(
            (config.access_log, config.access_log_json, config.log_buffer, config.log_max_size, config.log_keep),
            (True, False, 65536, 0, 5),
        )
        self.assertEqual(
            config.access_log_fields,
            ("client", "ident", "user", "time", "request", "status", "bytes", "referer", "user_agent",
             "service", "response_time"),
        )

    def test_everyKey(self) -> None:
        config = site("""\
            access_log = no
            access_log_json = Yes
            access_log_fields = combined request_id
                instance tls
            log_buffer = 1_000
            log_max_size = 10_485_760
            log_keep = 9
            """)
        self.assertEqual((config.access_log, config.access_log_json), (False, True))
        self.assertEqual(config.access_log_fields[-3:], ("request_id", "instance", "tls"))
        self.assertEqual((config.log_buffer, config.log_max_size, config.log_keep), (1000, 10485760, 9))

    def test_booleanSpellings(self) -> None:
        for word, value in (("yes", True), ("on", True), ("true", True), ("1", True),
                            ("no", False), ("OFF", False), ("false", False), ("0", False)):
            self.assertEqual(site(f"access_log = {word}\n").access_log, value, word)

    def test_errors(self) -> None:
        cases = [
            ("access_log = maybe", "access_log: expected yes or no, got 'maybe'"),
            ("access_log_json =", "access_log_json: expected yes or no, got ''"),
            ("access_log_fields = client refferer",
             "access_log_fields: unknown access log field 'refferer'; fields are combined, client, ident, "
             "user, time, request, status, bytes, referer, user_agent, service, instance, request_id, "
             "response_time, tls, host"),
            ("access_log_fields =", "access_log_fields: expected one or more access log fields, e.g. combined"),
            ("log_buffer = 0", "log_buffer: expected a whole number of records, 1 or more, got '0'"),
            ("log_max_size = -1", "log_max_size: expected a whole number of bytes (or K, M, G), 0 or more, got '-1'"),
            ("log_keep = 0", "log_keep: expected a whole number of files from 1 to 1000, got '0'"),
        ]
        for line, message in cases:
            self.assertConfigError(f"[okws]\n{line}\n" + SERVICE, f"site.ini: [okws] {message}")

    def test_constructorChecks(self) -> None:
        good = site()
        for key, value in (("access_log", "yes"), ("access_log_fields", ()), ("access_log_fields", ("nope",)),
                           ("log_buffer", 0), ("log_keep", 1001)):
            kwargs = {f: getattr(good, f) for f in ("file", "base_dir", "log_dir", "templates", "services")}
            self.assertRaises(ConfigError, SiteConfig, **kwargs, **{key: value})

    def test_roundTrip(self) -> None:
        config = site("access_log_fields = status request_id\naccess_log_json = yes\n")
        again = SiteConfig.from_json(config.to_json())
        self.assertEqual(again, config)
        self.assertIsInstance(again.access_log_fields, tuple)


class ProxyConfigTests(SynchronousTestCase, ErrorMixin):
    """haproxy: listeners and [okws] proxy_trusted."""

    def test_marked(self) -> None:
        config = site("listen = haproxy:tcp:80:interface=127.0.0.1\n  tcp:81\n  haproxy:unix:/run/s\n")
        self.assertEqual([l.proxy for l in config.listen], [True, False, True])
        self.assertEqual(config.listen[0].port, 80)
        self.assertEqual(config.listen[2].path, "/run/s")

    def test_canonical(self) -> None:
        self.assertEqual(
            Listener(kind="tcp", port=80, proxy=True).description,
            "haproxy:tcp:80:interface=0.0.0.0:backlog=2048",
        )

    def test_sameSocketOnceOnly(self) -> None:
        """The marker does not make a second socket: the same port twice is still an error."""
        self.assertConfigError(
            "[okws]\nlisten = haproxy:tcp:80\n  tcp:80\n" + SERVICE,
            "site.ini: [okws] listen: 'tcp:80' is listed twice (as 'haproxy:tcp:80')",
        )

    def test_trustedDefault(self) -> None:
        self.assertEqual(site().proxy_trusted, ("127.0.0.1", "::1"))

    def test_trusted(self) -> None:
        config = site("listen = haproxy:tcp:80\nproxy_trusted = 10.0.0.0/8\n  192.0.2.5 2001:db8::/32\n")
        self.assertEqual(config.proxy_trusted, ("10.0.0.0/8", "192.0.2.5", "2001:db8::/32"))
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)

    def test_badTrusted(self) -> None:
        self.assertConfigError(
            "[okws]\nproxy_trusted = 10.0.0.1/8\n" + SERVICE,
            "site.ini: [okws] proxy_trusted: '10.0.0.1/8' is not an address or a network like "
            "10.0.0.0/8 (10.0.0.1/8 has host bits set)",
        )
        self.assertConfigError(
            "[okws]\nproxy_trusted = lb.example.com\n" + SERVICE,
            "site.ini: [okws] proxy_trusted: 'lb.example.com' is not an address or a network like "
            "10.0.0.0/8 ('lb.example.com' does not appear to be an IPv4 or IPv6 network)",
        )

    def test_emptyTrustedWithProxyListener(self) -> None:
        self.assertConfigError(
            "[okws]\nlisten = haproxy:tcp:80\nproxy_trusted =\n" + SERVICE,
            "site.ini: [okws] proxy_trusted: is empty, so no load balancer could connect to the "
            "haproxy: listeners; list the balancers' addresses",
        )

    def test_adminNotProxied(self) -> None:
        self.assertConfigError(
            "[okws]\nadmin = haproxy:tcp:9090\n" + SERVICE,
            "site.ini: [okws] admin: 'haproxy:tcp:9090': the admin listener does not take PROXY "
            "headers; leave out haproxy:",
        )


class WallKeyTests(ErrorMixin, SynchronousTestCase):
    """fork, memory_limit, max_processes (per service) and cgroups ([okws]): issue 12."""

    def service(self, lines: str) -> ServiceConfig:
        return site(services="[service:a]\nresource = a:B\npaths = /\n" + lines).services[0]

    def test_defaults(self) -> None:
        s = self.service("")
        self.assertEqual((s.fork, s.memory_limit, s.max_processes), (False, 1 << 30, 64))
        self.assertTrue(site().cgroups)

    def test_values(self) -> None:
        s = self.service("fork = yes\nmemory_limit = 512M\nmax_processes = 200\n")
        self.assertEqual((s.fork, s.memory_limit, s.max_processes), (True, 512 << 20, 200))
        self.assertFalse(site("cgroups = no\n").cgroups)

    def test_sizes_take_suffixes(self) -> None:
        for text, value in (("2G", 2 << 30), ("64m", 64 << 20), ("131072 K", 128 << 20), ("100_000_000", 100_000_000)):
            self.assertEqual(self.service(f"memory_limit = {text}\n").memory_limit, value, text)
        self.assertEqual(site("max_head = 16K\n").max_head, 16384)
        self.assertEqual(self.service("max_body = 1M\n").max_body, 1 << 20)

    def test_errors(self) -> None:
        head = "[okws]\n[service:a]\nresource = a:B\npaths = /\n"
        for line, message in (
            ("memory_limit = 1M", "memory_limit: expected a whole number of bytes (or K, M, G), 64M or more, got '1M'"),
            ("memory_limit = 1.5G", "memory_limit: expected a whole number of bytes (or K, M, G), 64M or more, got '1.5G'"),
            ("memory_limit = 2T", "memory_limit: expected a whole number of bytes (or K, M, G), 64M or more, got '2T'"),
            ("memory_limit = 1GiB", "memory_limit: expected a whole number of bytes (or K, M, G), 64M or more, got '1GiB'"),
            ("max_processes = 8", "max_processes: expected a whole number of processes and threads, 16 or more, got '8'"),
            ("fork = maybe", "fork: expected yes or no, got 'maybe'"),
        ):
            self.assertConfigError(head + line + "\n", f"site.ini: [service:a] {message}")
        self.assertConfigError("[okws]\ncgroups = v2\n" + SERVICE, "site.ini: [okws] cgroups: expected yes or no, got 'v2'")
        self.assertConfigError("[okws]\nfork = yes\n" + SERVICE,
                               "site.ini: [okws] fork: unknown key here; fork belongs in a [service:NAME] section")

    def test_to_children_and_back(self) -> None:
        config = site("cgroups = no\n", "[service:a]\nresource = a:B\npaths = /\nfork = yes\nmemory_limit = 100M\n")
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)


class VirtualHostConfigTests(SynchronousTestCase, ErrorMixin):
    """[service:NAME] hosts, [okws] default_host: spellings, clashes per host, and their errors."""

    def test_normalize(self) -> None:
        for written, canonical in {
            "Admin.Example.COM": "admin.example.com",
            "admin.example.com.": "admin.example.com",
            "*.Example.org": "*.example.org",
            "127.0.0.1": "127.0.0.1",
            "[::1]": "[::1]",
            "xn--caf-dma.example": "xn--caf-dma.example",
            "localhost": "localhost",
        }.items():
            self.assertEqual(normalize_host(written), canonical, written)

    def test_rejected(self) -> None:
        cases = {
            "admin.example.com:8080": "'admin.example.com:8080' has a port; hosts are compared without their port",
            "a.*.example": "'a.*.example': a wildcard is only allowed as the whole first label, as in *.example.com",
            "*": "'*': a wildcard is only allowed as the whole first label, as in *.example.com",
            "café.example": "'café.example' is not a host name (letters, digits and hyphens in dot-separated labels; "
                            "write an international name in its xn-- form)",
            "a..b": "'a..b' is not a host name (letters, digits and hyphens in dot-separated labels; "
                    "write an international name in its xn-- form)",
            "-a.example": "'-a.example' is not a host name (letters, digits and hyphens in dot-separated labels; "
                          "write an international name in its xn-- form)",
            "*.10.0.0.1": "'*.10.0.0.1': a wildcard cannot stand before an IP address",
            "": "expected a host name, got ''",
        }
        for host, message in cases.items():
            e = self.assertRaises(ValueError, normalize_host, host)
            self.assertEqual(str(e), message)

    def test_patternMatches(self) -> None:
        """One or more labels before a wildcard's suffix, as nginx; never the bare suffix or an empty label."""
        self.assertTrue(host_pattern_matches("*.example.org", "a.example.org"))
        self.assertTrue(host_pattern_matches("*.example.org", "a.b.example.org"))
        self.assertFalse(host_pattern_matches("*.example.org", "example.org"))
        self.assertFalse(host_pattern_matches("*.example.org", ".example.org"))
        self.assertFalse(host_pattern_matches("*.example.org", "a..example.org"))
        self.assertFalse(host_pattern_matches("*.example.org", "aexample.org"))
        self.assertTrue(host_pattern_matches("www.example.org", "www.example.org"))
        self.assertFalse(host_pattern_matches("www.example.org", "a.www.example.org"))

    def test_hostsInIni(self) -> None:
        config = site(services=SERVICE + "[service:admin]\nresource = a:B\npaths = /\n"
                      "hosts = Admin.Example.com *.admin.example.com\n")
        self.assertEqual(config.services[0].hosts, ())
        self.assertEqual(config.services[1].hosts, ("admin.example.com", "*.admin.example.com"))
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)
        self.assertIsInstance(SiteConfig.from_json(config.to_json()).services[1].hosts, tuple)

    def test_samePathOnTwoHosts(self) -> None:
        """Two services may both claim / on different hosts, and a host by different paths."""
        config = site(services="""
            [service:www]
            resource = a:B
            paths = /
            hosts = www.example.com
            [service:admin]
            resource = a:B
            paths = /
            hosts = admin.example.com
            [service:admin-api]
            resource = a:B
            paths = /api
            hosts = admin.example.com
            [service:other]
            resource = a:B
            paths = /
            """)
        self.assertEqual([s.name for s in config.services], ["www", "admin", "admin-api", "other"])

    def test_clashOnOneHost(self) -> None:
        self.assertConfigError(
            "[okws]\n[service:a]\nresource = a:B\npaths = /x\nhosts = w.example\n"
            "[service:b]\nresource = a:B\npaths = /y /x/\nhosts = W.example. other.example\n",
            "site.ini: [service:b] paths: '/x' on host w.example is already claimed by [service:a]",
        )

    def test_hostErrors(self) -> None:
        base = "[okws]\n[service:a]\nresource = a:B\npaths = /\n"
        self.assertConfigError(base + "hosts = a.example:443\n",
                               "site.ini: [service:a] hosts: 'a.example:443' has a port; hosts are compared without their port")
        self.assertConfigError(base + "hosts = a.example A.example\n",
                               "site.ini: [service:a] hosts: 'A.example' is listed twice (as 'a.example')")
        self.assertConfigError(base + "hosts =\n",
                               "site.ini: [service:a] hosts: expected one or more host names like www.example.com "
                               "*.example.org, got none; leave hosts out to serve every host")

    def test_defaultHost(self) -> None:
        services = ("[service:www]\nresource = a:B\npaths = /\nhosts = www.example.com\n"
                    "[service:blog]\nresource = a:B\npaths = /\nhosts = *.blog.example.com\n")
        self.assertEqual(site("default_host = WWW.example.com\n", services).default_host, "www.example.com")
        self.assertEqual(site("default_host = me.blog.example.com\n", services).default_host, "me.blog.example.com")
        self.assertIsNone(site("", services).default_host)
        config = site("default_host = www.example.com\n", services)
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)

    def test_defaultHostErrors(self) -> None:
        services = "[service:www]\nresource = a:B\npaths = /\nhosts = www.example.com\n"
        cases = {
            "default_host = nowhere.example.com": "'nowhere.example.com' is not in any service's hosts",
            "default_host = *.example.com": "'*.example.com' must be a host name, not a wildcard",
            "default_host = www.example.com:80": "'www.example.com:80' has a port; hosts are compared without their port",
            "default_host = a b": "expected one host name, got 'a b'",
        }
        for line, message in cases.items():
            self.assertConfigError(f"[okws]\n{line}\n{services}", f"site.ini: [okws] default_host: {message}")
        self.assertConfigError(
            "[okws]\ndefault_host = www.example.com\n" + services + SERVICE,
            "site.ini: [okws] default_host: would never be used: [service:hello] has no hosts, so it serves "
            "every host that no service names",
        )


class IsolationConfigTests(SynchronousTestCase, ErrorMixin):
    """[service:NAME] isolation and the site's default, [okws] isolation."""

    def test_siteDefault(self) -> None:
        services = SERVICE + "[service:b]\nresource = a:B\npaths = /b\nisolation = connection\n"
        config = site("isolation = request\n", services)
        self.assertEqual([s.isolation for s in config.services], ["request", "connection"])
        self.assertEqual(config.isolation, "request")
        self.assertEqual(SiteConfig.from_json(config.to_json()), config)
        self.assertEqual([s.isolation for s in site().services], ["connection"])

    def test_perService(self) -> None:
        config = site(services=SERVICE.replace("paths", "isolation = Request\npaths"))
        self.assertEqual(config.services[0].isolation, "request")

    def test_programmatic(self) -> None:
        """A SiteConfig built in code fills in its default too."""
        config = SiteConfig(file="x.ini", base_dir="/", log_dir="/l", templates="/t", isolation="request",
                            services=(ServiceConfig(name="a", resource="a:B", paths=("/",)),))
        self.assertEqual(config.services[0].isolation, "request")

    def test_errors(self) -> None:
        self.assertConfigError("[okws]\nisolation = process\n" + SERVICE,
                               "site.ini: [okws] isolation: expected one of connection, request, got 'process'")
        self.assertConfigError("[okws]\n" + SERVICE + "isolation = none\n",
                               "site.ini: [service:hello] isolation: expected one of connection, request, got 'none'")
