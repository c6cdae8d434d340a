"""The database proxies (OKWS's database proxies, C{ezdb}): the only processes that reach a database.

One process per C{[db:NAME]} section holds that database (the SQLite file, or the PostgreSQL
connection and its password) and runs, for each service instance, only the named queries that
service was granted, with bound parameters.  Channels: db (one per service instance with
C{db = NAME}, L{okws_twisted.wire.dbchannel}), log (to the log daemon), control (to the
launcher).  It loads no service code, no twisted.web and no jinja2.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["DatabaseProxy", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.dbproxy.proxy import DatabaseProxy, start_role

__getattr__ = lazy_face(__name__, {"DatabaseProxy": "proxy", "start_role": "proxy"})
