"""
The interfaces between okws's parts, gathered in one place (as Twisted's
``internet/interfaces.py`` and Klein's ``_interfaces.py`` do).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Mapping

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IChildRole(Interface):
    """What one okws child process does once started (dispatcher, service, ...).

    The bootstrap (L{okws_twisted.bootstrap}) builds a role from the config the
    launcher sent, tells the launcher it is ready, and passes it what arrives
    on the control channel.  A role module exposes
    C{start_role(reactor, site, meta, stopped, records) -> IChildRole}, where
    C{stopped} is called once the role has finished stopping and C{records} is
    the process's log client (a L{okws_twisted.wire.logsender.RecordSender}; L{None}
    in the log daemon itself).  The bootstrap takes the ``log`` channels for
    the client; a role never sees them.
    """

    def peer(channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        """A new channel of kind C{channel} (e.g. ``"handoff"``) to the peer that
        C{meta} describes (``name``, ``role``, ``pid``, and ``service``/``index``
        for a service instance).  Replaces any earlier channel to that peer.
        The role owns C{sock}."""

    def stop(drain: float, handback: bool) -> None:
        """Stop gracefully: finish work in flight within C{drain} seconds, then
        call C{stopped}.  With C{handback}, a service hands its kept-alive
        connections back to the dispatcher instead of closing them (a
        successor is taking over)."""

    def stats() -> dict[str, Any]:
        """Counters for the launcher's heartbeat answer (JSON-able)."""

    def update_config(site: Any) -> None:
        """The site was reloaded: use this L{SiteConfig} from now on (new
        connections get the new routes and limits)."""

    def control(kind: str, meta: dict[str, Any]) -> None:
        """A role-specific control message from the launcher (e.g. ``retire``)."""


class ITemplates(Interface):
    """The templates a L{okws_twisted.service.resource.ServiceResource} renders with.

    The twisted.web C{Site} serving a resource carries one as its
    C{templates} attribute: in a service process, the templates the
    publisher sends (L{okws_twisted.service.templateclient.PublisherClient}); under
    L{okws_twisted.testing.render}, the ones the test gave.
    """

    def render(name: str, context: Mapping[str, Any]) -> "Deferred[str]":
        """Render template C{name} with C{context}.  Fails with
        L{okws_twisted.service.rendering.TemplateFailure} (its C{status} says 500 or
        503) when the template is missing, refused, broken or unreachable."""

    def error_page(status: int, message: str) -> str:
        """The site's HTML page for error C{status}, showing C{message}
        (escaped); the built-in page when the site has none."""


class IDatabase(Interface):
    """The database a L{okws_twisted.service.resource.ServiceResource}'s C{self.db} calls.

    The twisted.web C{Site} serving a resource carries one as its C{db}
    attribute: in a service process, the database proxy's client
    (L{okws_twisted.service.dbclient.DatabaseClient}); under
    L{okws_twisted.testing.render}, the in-memory database the test gave.
    """

    name = Attribute("The C{[db:NAME]} it reaches (for logs and errors).")

    def call(query: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> "Deferred[Any]":
        """Run the named C{query} with C{kwargs} (a C{*!} query: C{args} is one list of
        parameter dicts).  Fires with the result shaped by the query's suffix
        (L{okws_twisted.service.database.decode_result}); fails with a
        L{okws_twisted.service.database.DatabaseError}.  Raises C{TypeError} at
        once for a value or a parameter name the query cannot take."""
