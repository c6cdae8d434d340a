# -*- test-case-name: tests.test_sqlqueries -*-
"""
A site's named queries (OKWS's ezdb query set), read with aiosql.

A C{[db:NAME]} section's C{queries} file is what aiosql's current release
parses by default: a parameter list in every name but C{#}, C{*!} and C{<!}::

    -- name: recent_messages(limit)
    SELECT id, text FROM messages ORDER BY id DESC LIMIT :limit;

    -- name: add_message(text)!
    INSERT INTO messages (text) VALUES (:text);

aiosql is used for what it is good at: names, suffixes, parameters.  The
proxy runs the SQL itself (L{okws_twisted.dbproxy.engine}), because aiosql's
own functions answer differently per driver (its sqlite3 C{<!} returns the
last row id even with C{RETURNING}), return generators bound to the
connection, and ignore unknown keyword arguments.

Three readers share this module, which is why it sits outside every process
subpackage: the launcher's config check (a file aiosql refuses stops the
start-up with aiosql's message, the file and the line), the database proxy,
and L{okws_twisted.testing}'s in-memory database.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

#: aiosql's operation names -> the suffix an author writes (and the wire carries).
_SUFFIX = {
    "SELECT": "",
    "SELECT_ONE": "^",
    "SELECT_VALUE": "$",
    "INSERT_UPDATE_DELETE": "!",
    "INSERT_RETURNING": "<!",
    "INSERT_UPDATE_DELETE_MANY": "*!",
    "SCRIPT": "#",
}

_LOCATED = re.compile(r" at \S+:\d+")
_NAME_LINE = re.compile(r"\s*--\s*name\s*:\s*([\w-]+)")


class QueriesError(Exception):
    """The queries file cannot be used; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class NamedQuery:
    """One query of the file: its name, suffix, parameters, SQL (C{:name} style) and line.

    C{params} are the declared names, or for C{*!} and an undeclared C{<!}
    the names the SQL uses, in order.
    """

    name: str
    suffix: str
    params: tuple[str, ...]
    sql: str
    line: int

    @property
    def many(self) -> bool:
        """A C{*!} query: it takes a list of parameter sets."""
        return self.suffix == "*!"

    @property
    def script(self) -> bool:
        """A C{#} script: it takes no parameters and can never be granted."""
        return self.suffix == "#"


def parse(text: str, path: str) -> Mapping[str, NamedQuery]:
    """Every query in C{text} (the file C{path}), by name; raise L{QueriesError}.

    The C{NAME_cursor} aliases aiosql adds for each SELECT are not queries of the file.
    """
    import aiosql

    try:
        loaded = aiosql.from_str(text, "sqlite3")
    except (aiosql.SQLParseException, aiosql.SQLLoadException) as e:
        raise QueriesError(_located(str(e), path, text)) from None
    lines = _name_lines(text)
    out: dict[str, NamedQuery] = {}
    for name in loaded.available_queries:
        fn = getattr(loaded, name)
        if name.endswith("_cursor") and name[: -len("_cursor")] in loaded.available_queries:
            continue
        signature = getattr(fn, "__signature__", None) or inspect.Signature()
        params = tuple(p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        out[name] = NamedQuery(name, _SUFFIX[fn.operation.name], params, fn.sql, lines.get(name, [0])[0])
    if not out:
        raise QueriesError(f"no queries in {path} (each starts with a line like '-- name: recent_messages(limit)')")
    return MappingProxyType(dict(sorted(out.items())))


def load(path: str) -> tuple[str, Mapping[str, NamedQuery]]:
    """Read and parse the queries file C{path}: its text and its queries; raise L{QueriesError}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise QueriesError(f"cannot read the queries file {path}: {getattr(e, 'strerror', None) or e}") from None
    return text, parse(text, path)


def _name_lines(text: str) -> dict[str, list[int]]:
    """The lines of each C{-- name:} comment, by the name aiosql gives it (dashes become underscores)."""
    found: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        m = _NAME_LINE.match(line)
        if m:
            found.setdefault(m.group(1).replace("-", "_"), []).append(number)
    return found


def _located(message: str, path: str, text: str) -> str:
    """aiosql's message with the file and line, whether or not it gave them.

    aiosql calls a string's file C{<unknown>}: the path is put back.  Some of
    its messages (an undeclared or unused parameter, a duplicate name) carry
    no location: the line of that query's C{-- name:} comment is added (the
    second one, for a duplicate).
    """
    message = " ".join(message.split())
    if _LOCATED.search(message.replace("<unknown>", path)):
        return message.replace("<unknown>", path)
    m = re.search(r"query:? (\w+)", message)
    numbers = _name_lines(text).get(m.group(1), []) if m else []
    if numbers:
        return f"{message} at {path}:{numbers[-1]}"
    return f"{message} in {path}"
