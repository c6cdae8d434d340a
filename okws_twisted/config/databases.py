# -*- test-case-name: tests.test_config -*-
"""A site's databases (OKWS's ezdb configuration): the C{[db:NAME]} sections.

Each section is one database and one database proxy process: where the
database is (C{url}), the named queries services may be granted (C{queries},
aiosql's format), an optional idempotent C{schema} run at each start, and the
proxy's limits.  L{DatabaseConfig} validates itself at construction, like
every config value; the checks that read files (the queries and schema, the
password file) are made once, by the launcher, in L{parse_database}.

The texts of the queries and schema files travel inside the config, so the
proxy runs exactly what was checked; only the proxy of that database is sent
them (L{okws_twisted.config.site.SiteConfig.to_json}): no service ever
receives SQL.  Pure logic: stdlib only, no I/O except in L{parse_database}.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from okws_twisted.config.errors import ConfigError, _FieldError, _suggest
from okws_twisted.config.numbers import _Number

__all__ = ["DB_PREFIX", "DatabaseConfig", "parse_database"]

DB_PREFIX = "db:"
_DB_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

_DB_NUMBERS: dict[str, _Number] = {
    "pool": _Number(int, 1, "connections", maximum=64),
    "query_timeout": _Number(float, 0, "seconds", maximum=3600, exclusive=True),
    "queue_max": _Number(int, 1, "calls", maximum=100_000),
    "max_call_bytes": _Number(int, 1024, "bytes", maximum=64 * 1024 * 1024),
    "max_result_bytes": _Number(int, 64 * 1024, "bytes", maximum=256 * 1024 * 1024),
    "uid": _Number(int, 0, "uid", maximum=2**31 - 2),
    "gid": _Number(int, 0, "gid", maximum=2**31 - 2),
}
DB_KEYS = ("url", "password_file", "queries", "schema", *_DB_NUMBERS)

#: Query parameters of a PostgreSQL url that would put a secret, or a file the jailed
#: proxy cannot read, in the config.
_PG_REFUSED = ("password", "passfile", "sslpassword")


@dataclass(frozen=True)
class DatabaseConfig:
    """One C{[db:NAME]} section, checked.

    @ivar path: for SQLite, the database file (absolute); "" for PostgreSQL.
    @ivar queries: the queries file (absolute); C{queries_text} its text.
    @ivar schema: the schema file (absolute) or ""; C{schema_text} its text.
    """

    name: str
    url: str
    queries: str
    path: str = ""
    schema: str = ""
    password_file: str = ""
    pool: int = 4
    query_timeout: float = 10.0
    queue_max: int = 200
    max_call_bytes: int = 1024 * 1024
    max_result_bytes: int = 8 * 1024 * 1024
    uid: int = 0
    gid: int = 0
    queries_text: str = ""
    schema_text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _DB_NAME.fullmatch(self.name):
            raise _FieldError(
                None, f"database name {self.name!r} must match [a-z][a-z0-9_-]{{0,31}} (lower case, starting with a letter)"
            )
        engine, _written = check_url(self.url)
        if engine == "sqlite" and not (isinstance(self.path, str) and os.path.isabs(self.path)):
            raise _FieldError("url", f"the SQLite file must be an absolute path here, got {self.path!r}")
        if engine == "postgresql" and self.path:
            raise _FieldError("url", "a PostgreSQL database has no file")
        if self.password_file and engine != "postgresql":
            raise _FieldError("password_file", "is for postgresql urls only (SQLite has no password)")
        for key in ("queries", "schema", "password_file"):
            value = getattr(self, key)
            if not isinstance(value, str) or (value and not os.path.isabs(value)):
                raise _FieldError(key, f"expected an absolute path, got {value!r}")
        if not self.queries:
            raise _FieldError("queries", "missing; expected the file of named queries, e.g. sql/queries.sql")
        for key in ("queries_text", "schema_text"):
            if not isinstance(getattr(self, key), str):
                raise _FieldError(key, "expected text")
        for key, number in _DB_NUMBERS.items():
            problem = number.check(getattr(self, key))
            if problem:
                raise _FieldError(key, problem)
            if number.kind is float:
                object.__setattr__(self, key, float(getattr(self, key)))

    @property
    def engine(self) -> str:
        """C{"sqlite"} or C{"postgresql"}."""
        return check_url(self.url)[0]

    @property
    def section(self) -> str:
        return DB_PREFIX + self.name

    @property
    def socket_dir(self) -> str:
        """For PostgreSQL over a Unix socket, the server's socket directory; else ""."""
        if self.engine != "postgresql":
            return ""
        parts = urlsplit(self.url)
        hosts = parse_qs(parts.query).get("host", [])
        host = hosts[-1] if hosts else unquote(parts.hostname or "")
        return host if host.startswith("/") else ""

    @property
    def digest(self) -> str:
        """A short fingerprint of the queries and schema texts (for logs and status)."""
        text = self.queries_text + "\0" + self.schema_text
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    def without_sql(self) -> "DatabaseConfig":
        """The same, without the texts of the queries and schema (what other processes get)."""
        import dataclasses

        return dataclasses.replace(self, queries_text="", schema_text="")


def check_url(url: object) -> tuple[str, str]:
    """The engine of a database url and, for SQLite, its file as written; raise L{_FieldError}.

    C{sqlite:///rel/path} is relative to the site's directory, C{sqlite:////abs/path}
    absolute.  C{postgresql://user@host:port/db} or C{postgresql:///db?host=/socket/dir}.
    A password in the url is refused: it belongs in C{password_file}, which only the
    proxy reads.
    """
    if not isinstance(url, str) or not url.strip():
        raise _FieldError("url", "missing; expected sqlite:///data/site.db or postgresql://user@host/dbname")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise _FieldError("url", f"{url!r}: a sqlite url has no host; write sqlite:///relative/path or sqlite:////absolute/path")
        if parts.query or parts.fragment:
            raise _FieldError("url", f"{url!r}: a sqlite url takes no ?options")
        path = unquote(parts.path)
        if path.startswith("/"):
            path = path[1:]
        if not path or path.endswith("/"):
            raise _FieldError("url", f"{url!r} names no database file")
        if path == ":memory:" or path.startswith("file:"):
            raise _FieldError("url", f"{url!r}: an in-memory database cannot be shared by a proxy; name a file")
        return "sqlite", path
    if scheme in ("postgresql", "postgres"):
        try:
            password = parts.password
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as e:
            raise _FieldError("url", f"{url!r}: {e}") from None
        query = parse_qs(parts.query, keep_blank_values=True)
        if password is not None or any(key in query for key in _PG_REFUSED):
            raise _FieldError("url", "a password in the url is refused: put it in password_file, which only the proxy reads")
        if not parts.path.strip("/"):
            raise _FieldError("url", f"{url!r} names no database (postgresql://user@host/DBNAME)")
        return "postgresql", ""
    raise _FieldError("url", f"{url!r}: unknown scheme {parts.scheme!r}; expected sqlite: or postgresql:")


def parse_database(section: Any, name: str, base_dir: str, fail: Callable[[str | None, str | None, str], ConfigError],
                   reserved: tuple[str, ...]) -> DatabaseConfig:
    """One C{[db:NAME]} section of the ini file, with its files read and checked.

    @param reserved: directories the SQLite file's directory may not be or contain
        (the site's own directory, its logs and templates): the launcher gives that
        directory to the proxy's uid alone.
    """
    from okws_twisted.sqlqueries import QueriesError, parse

    kwargs: dict[str, Any] = {"name": name[len(DB_PREFIX):]}
    if not _DB_NAME.fullmatch(kwargs["name"]):
        raise fail(name, None, f"database name {kwargs['name']!r} must match [a-z][a-z0-9_-]{{0,31}}")
    for key in section:
        if key not in DB_KEYS:
            raise fail(name, key, "unknown key" + _suggest(key, DB_KEYS))
    for key in ("url", "queries"):
        if not section.get(key, "").strip():
            raise fail(name, key, "missing; expected " + ("sqlite:///data/site.db" if key == "url" else "a file of named queries"))
    url = section["url"].strip()
    try:
        engine, path = check_url(url)
    except _FieldError as e:
        raise fail(name, "url", e.message) from None
    kwargs["url"] = url

    def file_key(key: str) -> str:
        value = section[key].strip()
        if "\n" in value:
            raise fail(name, key, f"expected one path, got {value!r}")
        return os.path.normpath(os.path.join(base_dir, value))

    if engine == "sqlite":
        kwargs["path"] = os.path.normpath(os.path.join(base_dir, path))
        folder = os.path.dirname(kwargs["path"])
        for other in reserved:
            if folder == other or other.startswith(folder.rstrip("/") + "/"):
                raise fail(name, "url", f"the database's directory {folder} is given to the proxy alone, so it must "
                           f"hold nothing else of the site (it contains {other}); use a directory of its own, "
                           "e.g. sqlite:///data/site.db")
    elif importlib.util.find_spec("psycopg") is None:
        raise fail(name, "url", "postgresql needs psycopg 3: pip install 'okws-twisted[postgresql]'")

    for key, number in _DB_NUMBERS.items():
        if key in section:
            try:
                kwargs[key] = number.convert(section[key].strip())
            except _FieldError as e:
                raise fail(name, key, e.message) from None
            problem = number.check(kwargs[key], section[key])
            if problem:
                raise fail(name, key, problem)

    if "password_file" in section:
        if engine != "postgresql":
            raise fail(name, "password_file", "is for postgresql urls only (SQLite has no password)")
        kwargs["password_file"] = file_key("password_file")
        try:
            with open(kwargs["password_file"], "rb") as f:
                first = f.readline().strip()
        except OSError as e:
            raise fail(name, "password_file", f"cannot read {kwargs['password_file']}: {e.strerror or e}") from None
        if not first:
            raise fail(name, "password_file", f"{kwargs['password_file']} is empty; it holds the password on its first line")

    written = section["queries"].strip()
    kwargs["queries"] = file_key("queries")
    try:
        with open(kwargs["queries"], encoding="utf-8") as f:
            kwargs["queries_text"] = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise fail(name, "queries", f"cannot read the queries file {written}: {getattr(e, 'strerror', None) or e}") from None
    try:
        parse(kwargs["queries_text"], written)
    except QueriesError as e:
        raise fail(name, "queries", str(e)) from None
    if "schema" in section:
        kwargs["schema"] = file_key("schema")
        try:
            with open(kwargs["schema"], encoding="utf-8") as f:
                kwargs["schema_text"] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(name, "schema", f"cannot read the schema file {section['schema'].strip()}: "
                       f"{getattr(e, 'strerror', None) or e}") from None
    try:
        return DatabaseConfig(**kwargs)
    except _FieldError as e:
        raise fail(name, e.key, e.message) from None


def check_grants(database: DatabaseConfig, service_section: str, granted: tuple[str, ...],
                 fail: Callable[[str | None, str | None, str], ConfigError], written: str) -> None:
    """Every query a service is granted is a query of its database's file, and not a script."""
    from okws_twisted.sqlqueries import parse

    queries = parse(database.queries_text, written)
    for name in granted:
        query = queries.get(name)
        if query is None:
            raise fail(service_section, "queries", f"{name} is not a query of {written} ([{database.section}] queries)"
                       + _suggest(name, [q for q in queries if not queries[q].script]))
        if query.script:
            raise fail(service_section, "queries", f"{name} is a script (#): scripts are never granted")
