# -*- test-case-name: tests.test_config -*-
"""Reading the site's ini file (OKWS's okws_config): every mistake stops the start-up with one
line naming the file, the section and the key.

The launcher calls L{load} before it spawns anything; children never re-read the ini file.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import difflib
import os
import re
from typing import Any

from okws_twisted.config.databases import DB_PREFIX, check_grants, parse_database
from okws_twisted.config.errors import ConfigError, _FieldError, _suggest
from okws_twisted.config.listeners import (
    DEFAULT_LISTEN,
    parse_listener,
    trusted_networks,
)
from okws_twisted.config.site import (
    ISOLATIONS,
    _BOOL_WORDS,
    _FALSE,
    _OKWS_BOOLEANS,
    _OKWS_KEYS,
    _OKWS_NUMBERS,
    _SERVICE_BOOLEANS,
    _SERVICE_KEYS,
    _SERVICE_NUMBERS,
    _SERVICE_PREFIX,
    _STATIC_KEYS,
    _STATIC_NUMBERS,
    _STATIC_PREFIX,
    _MAX_AGE,
    _TRUE,
    STATIC_RESOURCE,
    ServiceConfig,
    SiteConfig,
    parse_access_fields,
)

__all__ = ["load", "parse", "short_control_socket"]



def load(path: str) -> SiteConfig:
    """Read and validate the site's ini file (UTF-8).

    Relative paths inside it resolve against the file's own directory, not the working
    directory, so the site behaves the same wherever it is started from.

    @raise ConfigError: for an unreadable file or any mistake in it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text (byte {e.start})") from None
    return parse(text, path, os.path.dirname(os.path.abspath(path)))


_UNIX_PATH_MAX = 107


def short_control_socket(base_dir: str) -> str:
    """Where the default control socket goes when the site's directory is too deep for one.

    A private runtime directory (created 0700 by the launcher), with a name
    derived from the site's directory so that okws-ctl finds the same one.
    """
    import hashlib

    if os.geteuid() == 0:
        runtime = "/run/okws"
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/okws-{os.geteuid()}"
    digest = hashlib.sha256(base_dir.encode()).hexdigest()[:16]
    return os.path.join(runtime, f"okws-{digest}.ctl")


def parse(text: str, file: str, base_dir: str) -> SiteConfig:
    """Validate ini C{text}; C{file} names it in errors, C{base_dir} anchors relative paths.

    @raise ConfigError: for the first mistake found, in file order: syntax, sections,
        [okws] keys, then each service.
    """
    base_dir = os.path.abspath(base_dir)
    parser = _read_ini(text, file)

    def fail(section: str | None, key: str | None, message: str) -> ConfigError:
        return ConfigError(file, section, key, message)

    for section in parser.sections():
        if section != "okws" and not section.startswith((_SERVICE_PREFIX, _STATIC_PREFIX, DB_PREFIX)):
            raise fail(section, None, "unknown section" + _suggest_section(section))
    if not parser.has_section("okws"):
        raise fail(None, None, "no [okws] section; it is required (it may be empty)")

    okws = parser["okws"]
    _check_keys(okws, "okws", _OKWS_KEYS, _SERVICE_KEYS, "a [service:NAME] section", fail)
    site: dict[str, Any] = {"file": file, "base_dir": base_dir}

    listen_text = okws.get("listen", DEFAULT_LISTEN)
    descriptions = listen_text.split()
    if not descriptions:
        raise fail("okws", "listen", "expected one or more endpoints, one per line, got none")
    listeners = []
    for description in descriptions:
        try:
            listeners.append(parse_listener(description, base_dir))
        except ValueError as e:
            raise fail("okws", "listen", str(e)) from None
    site["listen"] = tuple(listeners)

    for key, default in (("log_dir", "logs"), ("templates", "templates"), ("state_dir", "state")):
        value = okws.get(key, default)
        if not value:
            raise fail("okws", key, "expected a directory, got nothing")
        if "\n" in value:
            raise fail("okws", key, f"expected one directory on one line, got {value!r}")
        site[key] = os.path.normpath(os.path.join(base_dir, value))

    jail_root = okws.get("jail_root", "/var/lib/okws/jails").strip()
    if not jail_root or "\n" in jail_root:
        raise fail("okws", "jail_root", f"expected one directory, got {jail_root!r}")
    site["jail_root"] = os.path.normpath(os.path.join(base_dir, jail_root))
    if "uid_range" in okws:
        m = re.fullmatch(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*", okws["uid_range"])
        if not m or not (0 < int(m.group(1)) < int(m.group(2)) < 2**31 - 1):
            raise fail("okws", "uid_range", f"expected FIRST-LAST with 0 < FIRST < LAST, got {okws['uid_range']!r}")
        site["uid_range"] = (int(m.group(1)), int(m.group(2)))

    control = okws.get("control_socket", "okws.ctl")
    if not control or "\n" in control:
        raise fail("okws", "control_socket", f"expected one path, got {control!r}")
    control = os.path.normpath(os.path.join(base_dir, control))
    if len(control.encode()) > _UNIX_PATH_MAX:
        if "control_socket" in okws:
            raise fail("okws", "control_socket", f"{control!r} is longer than a Unix socket path may be (107 bytes)")
        control = short_control_socket(base_dir)
    site["control_socket"] = control

    if okws.get("admin", "").strip():
        description = okws["admin"].strip()
        try:
            admin = parse_listener(description, base_dir)
        except ValueError as e:
            raise fail("okws", "admin", str(e)) from None
        if admin.proxy:
            raise fail("okws", "admin", f"{description!r}: the admin listener does not take PROXY headers; "
                       "leave out haproxy:")
        if admin.kind == "tcp" and "interface=" not in description:
            # The admin listener serves metrics: loopback unless asked otherwise.
            admin = dataclasses.replace(admin, interface="127.0.0.1")
        for listener in listeners:
            if listener._binds() == admin._binds():
                raise fail("okws", "admin", f"{description!r} is also a public listener ({listener.description}); "
                           "the admin listener must be separate")
        site["admin"] = admin

    for key, number in _OKWS_NUMBERS.items():
        if key not in okws:
            continue
        try:
            value = number.convert(okws[key])
        except _FieldError as e:
            raise fail("okws", key, e.message) from None
        problem = number.check(value, okws[key])
        if problem:
            raise fail("okws", key, problem)
        site[key] = value
    _check_pairs(site, okws, fail)

    for key in _OKWS_BOOLEANS:
        if key in okws:
            word = okws[key].strip().lower()
            if word not in _TRUE + _FALSE:
                raise fail("okws", key, f"expected yes or no, got {okws[key]!r}")
            site[key] = word in _TRUE
    if "access_log_fields" in okws:
        try:
            site["access_log_fields"] = parse_access_fields(okws["access_log_fields"])
        except ValueError as e:
            raise fail("okws", "access_log_fields", str(e)) from None

    if "proxy_trusted" in okws:
        trusted = tuple(okws["proxy_trusted"].split())
        try:
            trusted_networks(trusted)
        except ValueError as e:
            raise fail("okws", "proxy_trusted", str(e)) from None
        site["proxy_trusted"] = trusted
    if "isolation" in okws:
        site["isolation"] = _isolation(okws["isolation"], "okws", fail)
    if "default_host" in okws:
        words = okws["default_host"].split()
        if len(words) != 1:
            raise fail("okws", "default_host", f"expected one host name, got {okws['default_host']!r}")
        site["default_host"] = words[0]

    if "server_header" in okws:
        # Written as is: "server_header =" (nothing) sends no Server field.
        site["server_header"] = okws["server_header"].strip()
    if "health" in okws:
        site["health"] = okws["health"].strip()
    databases = []
    reserved = (base_dir, site["log_dir"], site["templates"])
    for section in parser.sections():
        if section.startswith(DB_PREFIX):
            databases.append(parse_database(parser[section], section, base_dir, fail, reserved))
    site["databases"] = tuple(databases)

    services = []
    for section in parser.sections():
        if section.startswith(_SERVICE_PREFIX):
            services.append(_parse_service(parser[section], section, fail))
        elif section.startswith(_STATIC_PREFIX):
            services.append(_parse_static(parser[section], section, base_dir, fail))
    site["services"] = tuple(services)
    config = SiteConfig(**site)
    _check_static_roots(config, fail)
    for service in config.services:
        database = config.database(service.db)
        if database is not None:
            written = parser[DB_PREFIX + database.name]["queries"].strip()
            check_grants(database, _SERVICE_PREFIX + service.name, service.queries, fail, written)
    return config


def _check_static_roots(site: SiteConfig, fail: Any) -> None:
    """A static pool serves everything under its root: never the site's own files.

    Its root may not be or contain the site directory (site.ini, the services' code), and may
    not overlap the logs, the state (the CSRF secrets), the jails or an SQLite database's
    directory (which the launcher gives to other uids).
    """
    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    private = [("log_dir", site.log_dir), ("state_dir", site.state_dir), ("jail_root", site.jail_root)]
    private += [(f"[db:{d.name}]'s directory", os.path.dirname(d.path)) for d in site.databases if d.path]
    for service in site.services:
        if service.kind != "static":
            continue
        if inside(site.base_dir, service.root):
            raise fail(service.section, "root", f"{service.root!r} holds the site's own directory (site.ini, the "
                       "services' code); serve a directory of its own, e.g. root = static")
        for what, folder in private:
            if inside(service.root, folder) or inside(folder, service.root):
                raise fail(service.section, "root", f"{service.root!r} overlaps {what} ({folder}); "
                           "serve a directory of its own, e.g. root = static")


def _check_pairs(site: dict[str, Any], okws: Any, fail: Any) -> None:
    """Cross-key checks, blaming the key the operator actually wrote."""
    defaults = {f.name: f.default for f in dataclasses.fields(SiteConfig)}

    def value(key: str) -> Any:
        return site.get(key, defaults[key])

    def shown(key: str) -> str:
        return okws[key] if key in okws else f"{value(key):g}"

    for low, high, why in (
        ("restart_delay_min", "restart_delay_max", ""),
        ("max_request_line", "max_head", ", which would answer 431 before 414"),
        ("resume_connections", "max_connections", ""),
    ):
        if value(low) > value(high):
            key, other = (high, low) if high in okws and low not in okws else (low, high)
            relation = "above" if key == low else "below"
            raise fail("okws", key, f"{shown(key)} is {relation} {other} ({shown(other)}){why}")


def _isolation(text: str, section: str, fail: Any) -> str:
    word = text.strip().lower()
    if word not in ISOLATIONS:
        raise fail(section, "isolation", f"expected one of {', '.join(ISOLATIONS)}, got {text!r}")
    return word


def _read_routing(section: Any, name: str, kwargs: dict[str, Any], fail: Any) -> None:
    """C{hosts} and C{isolation}, which services and static pools both take, into C{kwargs}."""
    if "hosts" in section:
        kwargs["hosts"] = tuple(section["hosts"].split())
        if not kwargs["hosts"]:
            raise fail(name, "hosts", "expected one or more host names like www.example.com *.example.org, got none; "
                       "leave hosts out to serve every host")
    if "isolation" in section:
        kwargs["isolation"] = _isolation(section["isolation"], name, fail)


def _parse_service(section: Any, name: str, fail: Any) -> ServiceConfig:
    _check_keys(section, name, _SERVICE_KEYS, _OKWS_KEYS, "[okws]", fail)
    service_name = name[len(_SERVICE_PREFIX):]
    kwargs: dict[str, Any] = {"name": service_name}
    for key, example in (("resource", "package.module:Class"), ("paths", "/hello /hi")):
        if key not in section:
            raise fail(name, key, f"missing; expected {example}")
    kwargs["resource"] = section["resource"]
    kwargs["paths"] = tuple(section["paths"].split())
    _read_routing(section, name, kwargs, fail)
    if "network" in section:
        kwargs["network"] = section["network"].strip()
    if "db" in section:
        kwargs["db"] = section["db"].strip()
    if "queries" in section:
        kwargs["queries"] = tuple(section["queries"].split())
    for key in _SERVICE_BOOLEANS:
        if key in section:
            word = section[key].strip().lower()
            if word not in _BOOL_WORDS:
                raise fail(name, key, f"expected yes or no, got {section[key]!r}")
            kwargs[key] = _BOOL_WORDS[word]
    _read_numbers(section, name, _SERVICE_NUMBERS, kwargs, fail)
    try:
        return ServiceConfig(**kwargs)
    except _FieldError as e:
        raise fail(name, e.key, e.message) from None


def _read_numbers(section: Any, name: str, numbers: dict[str, Any], kwargs: dict[str, Any], fail: Any) -> None:
    """Each of C{numbers} the section gives, read and checked into C{kwargs}; the first mistake fails."""
    for key, number in numbers.items():
        if key in section:
            try:
                kwargs[key] = number.convert(section[key])
            except _FieldError as e:
                raise fail(name, key, e.message) from None
            problem = number.check(kwargs[key], section[key])
            if problem:
                raise fail(name, key, problem)


def _parse_static(section: Any, name: str, base_dir: str, fail: Any) -> ServiceConfig:
    """A C{[static:NAME]} section: a pool serving the files under C{root}."""
    others = tuple(k for k in _SERVICE_KEYS if k not in _STATIC_KEYS)
    for key in section:
        if key in others:
            raise fail(name, key, f"a [static:NAME] section has no {key} (keys: {', '.join(_STATIC_KEYS)})")
    _check_keys(section, name, _STATIC_KEYS, _OKWS_KEYS, "[okws]", fail)
    kwargs: dict[str, Any] = {
        "name": name[len(_STATIC_PREFIX):], "kind": "static", "resource": STATIC_RESOURCE,
        "max_body": 0, "max_processes": 16,
    }
    for key, example in (("root", "static"), ("paths", "/static /favicon.ico")):
        if key not in section or not section[key].strip():
            raise fail(name, key, f"missing; expected {example}")
    root = section["root"].strip()
    if "\n" in root:
        raise fail(name, "root", f"expected one directory on one line, got {root!r}")
    root = os.path.normpath(os.path.join(base_dir, root))
    if not os.path.isdir(root):
        raise fail(name, "root", f"{root!r} is not a directory")
    kwargs["root"] = root
    kwargs["paths"] = tuple(section["paths"].split())
    _read_routing(section, name, kwargs, fail)
    if "lazy" in section:
        word = section["lazy"].strip().lower()
        if word not in _BOOL_WORDS:
            raise fail(name, "lazy", f"expected yes or no, got {section['lazy']!r}")
        kwargs["lazy"] = _BOOL_WORDS[word]
    numbers = {key: _SERVICE_NUMBERS[key] for key in _STATIC_NUMBERS} | {"max_age": _MAX_AGE}
    _read_numbers(section, name, numbers, kwargs, fail)
    try:
        return ServiceConfig(**kwargs)
    except _FieldError as e:
        raise fail(name, e.key, e.message) from None


def _read_ini(text: str, file: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=("#", ";"),  # only after whitespace: " #" or " ;"
        # Blank and comment lines inside a multi-line value keep it going, so a list of
        # listeners or paths can carry comments; values are split on whitespace anyway.
        empty_lines_in_values=True,
        # No section is special: a [DEFAULT] section is just an unknown one.
        default_section="\n",
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        parser.read_string(text, source=file)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(
            file, e.section, None, f"line {e.lineno}: this section appears twice"
        ) from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(
            file, e.section, e.option, f"line {e.lineno}: this key appears twice in the section"
        ) from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            file, None, None, f"line {e.lineno}: {e.line.strip()!r} comes before any [section]"
        ) from None
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        try:  # configparser stores each bad line as its repr()
            line = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            pass
        raise ConfigError(
            file, _section_at(text, lineno), None,
            f"line {lineno}: cannot parse {line.strip()!r}; expected [section], key = value, "
            "an indented continuation line or a comment",
        ) from None
    except configparser.Error as e:  # pragma: no cover - no other error is raised by reading
        raise ConfigError(file, None, None, str(e)) from None
    return parser


def _section_at(text: str, lineno: int) -> str | None:
    """The section a line number falls in, for errors configparser reports without one."""
    section = None
    for line in text.splitlines()[: lineno - 1]:
        match = re.fullmatch(r"\[(.+)\]", line.split(" #")[0].split(" ;")[0].strip())
        if match:
            section = match.group(1)
    return section


def _check_keys(
    section: Any, name: str, valid: tuple[str, ...], elsewhere: tuple[str, ...],
    where_else: str, fail: Any,
) -> None:
    for key in section:
        if key in valid:
            continue
        if key in elsewhere:
            raise fail(name, key, f"unknown key here; {key} belongs in {where_else}")
        raise fail(name, key, "unknown key" + _suggest(key, valid))


def _suggest_section(section: str) -> str:
    allowed = " (sections are [okws], [service:NAME], [static:NAME] and [db:NAME])"
    head, colon, rest = section.partition(":")
    if colon and head.strip().lower() in ("database", "dbs", "sql", "sqlite", "postgresql"):
        return f"; did you mean [db:{rest.strip()}]?{allowed}"
    close = difflib.get_close_matches(head.strip().lower(), ["service", "static"], n=1) if colon else []
    if close:
        return f"; did you mean [{close[0]}:{rest.strip()}]?{allowed}"
    if not colon and difflib.get_close_matches(section.strip().lower(), ["okws"], n=1):
        return f"; did you mean [okws]?{allowed}"
    return allowed
