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
    from twisted.python.failure import Failure


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
        L{TemplateFailure} (its C{status} says 500 or
        503) when the template is missing, refused, broken or unreachable."""

    def error_page(status: int, message: str) -> str:
        """The site's HTML page for error C{status}, showing C{message}
        (escaped); the built-in page when the site has none."""


# The failures of ITemplates.render, here rather than in okws_twisted.templating so that a
# service can tell them apart without loading jinja2 (it loads jinja2 at its first template).


class TemplateFailure(Exception):
    """A template could not be rendered: the client gets C{status}, the log the rest.

    @ivar template: the template the problem is in (or that was asked for).
    @ivar lineno: the line in C{template}, if known.
    @ivar cause: the original error with its traceback (through the
        template's lines), for the log.
    """

    status = 500

    def __init__(
        self, message: str, template: str | None = None, lineno: int | None = None, cause: Failure | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.template = template
        self.lineno = lineno
        self.cause = cause

    @property
    def where(self) -> str:
        """C{"hello.html line 3"}, for a log line."""
        if self.template is None:
            return "an unknown template"
        return self.template if self.lineno is None else f"{self.template} line {self.lineno}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class TemplateMissing(TemplateFailure):
    """No template answers to a name (missing, or refused by the publisher)."""


class TemplateBroken(TemplateFailure):
    """A template has a syntax error, or failed while rendering."""


class PublisherUnavailable(TemplateFailure):
    """The publisher did not answer in time and no copy of the template is held."""

    status = 503

    def __init__(self, template: str, waited: float, retry_after: int) -> None:
        super().__init__(f"the template publisher did not answer within {waited:g}s", template)
        self.retry_after = retry_after


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
