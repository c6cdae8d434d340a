# -*- test-case-name: tests.service.test_dbclient -*-
"""
The author's side of a database: C{self.db.NAME(**params)} and the errors it fails with.

A L{ServiceResource}'s C{self.db} is a L{Queries}: each attribute is a named
query this service was granted in its C{[db:NAME]}'s queries file, called
with keyword arguments (a C{*!} query with one list of them) and answering a
L{Deferred}.  Behind it is an L{IDatabase}: in a service process the
database proxy's client (L{okws_twisted.service.dbclient.DatabaseClient}),
under L{okws_twisted.testing}, an in-memory SQLite database built from the
same files.  Both read results with L{decode_result}, so a test sees the
types production gives.

The errors, importable from C{okws_twisted}::

    DatabaseError            the base of the three below
      QueryRefused           not granted, unknown, or parameters too large
      DatabaseUnavailable    the proxy or the database away, the queue full, query_timeout passed
      QueryFailed            the database's own error (a constraint, a syntax error), with its message

Left uncaught in a C{render_<METHOD>}, L{DatabaseUnavailable} answers 503 with
C{Retry-After}, the others 500; each is logged with the query and the database.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import Deferred, fail

from okws_twisted.interfaces import IDatabase
from okws_twisted.wire import dbvalues
from okws_twisted.wire.dbchannel import FAILED, REFUSED, UNAVAILABLE, Grant

__all__ = ["DatabaseError", "DatabaseUnavailable", "Queries", "QueryFailed", "QueryRefused", "decode_result"]


class DatabaseError(Exception):
    """A named query did not give a result.

    @ivar query: the query's name.
    @ivar db: the C{[db:NAME]} it was sent to.
    @ivar message: what went wrong, for the log (never shown to a client).
    """

    def __init__(self, message: str, query: str = "", db: str = "") -> None:
        super().__init__(message, query, db)
        self.message = message
        self.query = query
        self.db = db

    def __str__(self) -> str:
        where = f"{self.query} on [db:{self.db}]: " if self.query else ""
        return where + self.message


class QueryRefused(DatabaseError):
    """The query is not one this service was granted (or does not exist), or its parameters are too large.

    Nothing was run.
    """


class DatabaseUnavailable(DatabaseError):
    """The database could not answer in time: the proxy is away (for longer than
    C{query_timeout}), this service's queue is full, or the call ran past
    C{query_timeout} and was cancelled.  A call that was in flight when the proxy
    died may or may not have run; it is never sent twice.

    @ivar retry_after: seconds for the 503's C{Retry-After}.
    """

    def __init__(self, message: str, query: str = "", db: str = "", retry_after: int = 5) -> None:
        super().__init__(message, query, db)
        self.retry_after = retry_after


class QueryFailed(DatabaseError):
    """The database refused the statement (a unique constraint, a type it will not store, a
    syntax error): C{message} is its first line.  The call's transaction was rolled back."""


#: The reply status of the wire -> the error the author sees.
ERROR_CLASSES: dict[str, type[DatabaseError]] = {REFUSED: QueryRefused, UNAVAILABLE: DatabaseUnavailable, FAILED: QueryFailed}


def decode_result(suffix: str, wire: object) -> Any:
    """A result from its wire form, shaped by the query's suffix; raise C{ValueError} if malformed.

    C{""}: a list of dicts; C{^}: one dict or None; C{$}: a value or None;
    C{!} and C{*!}: the number of rows affected; C{<!}: the returned value (the new
    id) or row (a dict), or None.
    """
    if suffix == "$":
        return dbvalues.from_wire(wire)
    if suffix == "":
        return dbvalues.decode_rows(wire)
    if suffix == "^":
        if wire is None:
            return None
        rows = dbvalues.decode_rows(wire)
        if len(rows) != 1:
            raise ValueError("a ^ result is one row")
        return rows[0]
    if suffix in ("!", "*!"):
        if type(wire) is not int:
            raise ValueError("a row count is an int")
        return wire
    if suffix == "<!":
        if type(wire) is dict and set(wire) == {"c", "r"}:  # type: ignore[arg-type]
            rows = dbvalues.decode_rows(wire)
            return rows[0] if rows else None
        return dbvalues.from_wire(wire)
    raise ValueError(f"unknown suffix {suffix!r}")


def check_call(grant: Grant, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """The wire parameters of a call of C{name}, checked as a Python call would be; raise C{TypeError}.

    A C{*!} query takes one positional list of parameter dicts; every other
    query exactly its declared parameters, as keywords.  Every value must be of
    a type the database channel carries (L{okws_twisted.wire.dbvalues}).
    """
    if grant.suffix == "*!":
        expected = ", ".join(grant.params)
        if kwargs or len(args) != 1 or not isinstance(args[0], (list, tuple)):
            raise TypeError(f"{name}() (a *! query) takes one list of parameter dicts, each with ({expected})")
        out = []
        for item in args[0]:
            if not isinstance(item, Mapping):
                raise TypeError(f"{name}(): each parameter set is a dict of ({expected}), not {type(item).__name__}")
            out.append(_check_names(grant, name, item))
        return out
    if args:
        raise TypeError(f"{name}() takes keyword arguments only: {name}({', '.join(p + '=...' for p in grant.params)})")
    return _check_names(grant, name, kwargs)


def _check_names(grant: Grant, name: str, params: Mapping[str, Any]) -> dict[str, object]:
    if params.keys() != set(grant.params):
        missing = [p for p in grant.params if p not in params]
        extra = sorted(str(p) for p in params if p not in grant.params)
        problems = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        if extra:
            problems.append("unexpected " + ", ".join(extra))
        raise TypeError(f"{name}() takes ({', '.join(grant.params)}): {'; '.join(problems)}")
    if not params:
        return {}
    try:
        return dbvalues.check_params(params)
    except dbvalues.ValueRefused as e:
        raise TypeError(f"{name}(): {e}") from None


def check_values(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a value the channel does not carry, before the query's grant is known."""
    sets: Sequence[Mapping[str, Any]] = [kwargs]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        sets = [s for s in args[0] if isinstance(s, Mapping)]
    for params in sets:
        dbvalues.check_params(params)


#: The query methods a L{Queries} keeps, at most (its two own attributes included).
CACHED = 258


class Queries:
    """C{self.db}: each granted query by name, as a method answering a L{Deferred}.

    C{self.db.recent_messages(limit=20)}; C{await} it in an C{async def}.
    Nothing here is sent before the values are checked: a value of a type the
    channel does not carry, or a wrong parameter name, raises C{TypeError} at
    the call.
    """

    def __init__(self, database: IDatabase | None, service: str = "") -> None:
        self._database = database
        self._service = service

    def __getattr__(self, name: str) -> Callable[..., Deferred[Any]]:
        # Called for a name not yet in the instance's dict only: the method made here is kept
        # there (C{self.db} is one L{Queries} per database), so a page's calls build nothing but
        # the call itself.  At most L{CACHED} names are kept: names come from the author's code,
        # but getattr with a request's value would otherwise grow it without bound.
        if name.startswith("_"):
            raise AttributeError(name)
        database = self._database

        def call(*args: Any, **kwargs: Any) -> Deferred[Any]:
            if database is None:
                return fail(QueryRefused("this resource has no database: give its service db = NAME and queries = "
                                         "... in site.ini (in a test, pass db= to okws_twisted.testing.render)", name))
            return database.call(name, args, kwargs)

        call.__name__ = name
        if len(self.__dict__) < CACHED:
            self.__dict__[name] = call
        return call

    def __repr__(self) -> str:
        name = getattr(self._database, "name", None)
        return f"<okws database {name!r}>" if name else "<okws: no database>"
