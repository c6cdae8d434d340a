# -*- test-case-name: tests.pubd.test_publisher -*-
"""
The template publisher (OKWS's pubd): the only process that reads the templates.

Service instances have no access to the template directory; they ask the
publisher for each template by name over their templates channel
(L{okws_twisted.wire.templatechannel}) and compile what it sends.  The publisher
refuses names that are malformed or lead out of the tree
(L{okws_twisted.pubd.tree}), watches the tree (L{okws_twisted.pubd.watch})
and tells every peer which names changed, so the next render uses the new
text without a restart.

It also renders the site's error pages (C{errors/<status>.html}, falling back
to the defaults shipped in the package) and pushes them to every peer: the
dispatcher, which must never load jinja2, shows them as they are, with each
response's message put in.  The package defaults are read once at start-up,
so a publisher later jailed in the template tree still has them.

A peer that breaks its channel's rules (L{okws_twisted.wire.limits}), or
whose channel goes away while the publisher runs, is reported to the launcher
(``lost``), which relaunches it.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Iterator

from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config import SiteConfig
from okws_twisted.interfaces import IChildRole
from okws_twisted.pubd.tree import TemplateTree
from okws_twisted.pubd.watch import TemplateWatcher
from okws_twisted.templating import (
    TreeLoader,
    default_error_templates,
    render_error_pages,
)
from okws_twisted.wire import control, limits, templatechannel
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.templatechannel import Get, Outgoing, TemplateAbsent

#: Names listed in one "templates changed" log line at most.
_LOGGED_NAMES = 20
#: Bytes of names in one ``changed`` notice at most (a large change is sent in several).
_CHANGED_BYTES = 1 << 20


class _Peer:
    """The publisher's templates channel to one process (a service instance or the dispatcher)."""

    def __init__(self, publisher: "Publisher", name: str, sock: socket.socket, pid: object = None) -> None:
        self.publisher = publisher
        self.name = name
        self.pid = pid
        # Only a peer that asks for templates holds any to invalidate (the
        # dispatcher never asks; it gets the error pages only).
        self.asked = False
        self.channel = MessageChannel(publisher.reactor, sock, self._received, self._lost, name=f"templates:{name}", limits=limits.TEMPLATES_PUBLISHER)

    def send(self, message: Outgoing) -> None:
        if self.channel.connected:
            try:
                self.channel.send(*message)
            except error.ConnectionDone:
                pass
            except ValueError as e:
                # Over what the peer accepts: never sent, or the peer would be cut off.
                self.publisher.log.error("not sent to {peer}: {error}", peer=self.name, error=e)

    def _received(self, batch: list[Message]) -> None:
        for msg in batch:
            try:
                if msg.kind != templatechannel.GET:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
                request = templatechannel.parse_get(msg)
            except ChannelError as e:
                msg.close_fds()
                self.publisher.log.error("bad message from {peer}: {error}", peer=self.name, error=e)
                continue
            self.asked = True
            self.send(self.publisher.answer(request, self.name))

    def _lost(self, reason: Failure) -> None:
        self.publisher.peer_lost(self, reason)


@implementer(IChildRole)
class Publisher:
    """The publisher's state: the tree, its watcher, the rendered error pages, the peers.

    @param use_inotify: passed to the watcher (C{False} polls).
    """

    log = Logger()

    #: How the publisher tells the launcher something (set by the bootstrap).
    to_launcher: Callable[[dict[str, Any]], None] = staticmethod(lambda meta: None)  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        root: str,
        stopped: Callable[[], None] = lambda: None,
        *,
        use_inotify: bool = True,
        poll_interval: float | None = None,
    ) -> None:
        self.reactor = reactor
        self.tree = TemplateTree(root)
        self.defaults = default_error_templates()
        self.peers: dict[str, _Peer] = {}
        self.pages: dict[int, str] = {}
        watch_args: dict[str, Any] = {"use_inotify": use_inotify}
        if poll_interval is not None:
            watch_args["poll_interval"] = poll_interval
        self.watcher = TemplateWatcher(reactor, root, self.changed, **watch_args)
        self._stopped = stopped

    def start(self) -> None:
        """Render the error pages and start watching the tree."""
        if self.tree.real_root() is None:
            self.log.warn("the template directory {root} does not exist (yet): every template is missing",
                          root=self.tree.root)
        self.pages = self.render_pages()
        mode = self.watcher.start()
        self.log.info("publishing templates from {root} (changes seen by {mode})", root=self.tree.root, mode=mode)

    # -- answering

    def answer(self, request: Get, peer: str) -> Outgoing:
        """The reply to one C{get} from C{peer}."""
        try:
            found = self.tree.read(request.name)
        except TemplateAbsent as e:
            if e.refused:
                self.log.warn("refused template {template!r} to {peer}: {reason}",
                              template=request.name, peer=peer, reason=e.reason)
            return templatechannel.absent(request.id, e.answer())
        return templatechannel.source(request.id, found)

    # -- changes

    def changed(self, names: list[str]) -> None:
        """The watcher saw C{names} change: tell the peers that fetch templates,
        re-render the error pages and send them to every peer if they changed."""
        shown = ", ".join(names[:_LOGGED_NAMES]) + (" ..." if len(names) > _LOGGED_NAMES else "")
        self.log.info("templates changed: {names}", names=shown, count=len(names))
        for part in _parts(names):
            notice = templatechannel.changed(part)
            for peer in list(self.peers.values()):
                if peer.asked:
                    peer.send(notice)
        pages = self.render_pages()
        if pages != self.pages:
            self.pages = pages
            message = templatechannel.pages(pages)
            for peer in list(self.peers.values()):
                peer.send(message)

    def render_pages(self) -> dict[int, str]:
        """The site's error pages, rendered now; problems go to the log."""
        pages, problems = render_error_pages(TreeLoader(self.tree), self.defaults)
        for problem in problems:
            self.log.error(
                "error page template failed, using the default page: {where}: {message}",
                where=problem.where, message=problem.message, template=problem.template, lineno=problem.lineno,
            )
        return pages

    # -- peers (IChildRole)

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel != "templates":
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()
            return
        name = str(meta.get("name"))
        old = self.peers.get(name)
        peer = _Peer(self, name, sock, meta.get("pid"))
        self.peers[name] = peer
        if old is not None:
            old.channel.close()
        peer.send(templatechannel.pages(self.pages))

    def peer_lost(self, peer: _Peer, reason: Failure) -> None:
        if self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
        control.report_lost(self.to_launcher, peer.channel, f"templates:{peer.name}", peer.pid, reason)

    def stats(self) -> dict[str, Any]:
        return {"peers": len(self.peers)}

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: the templates directory cannot move without a restart."""
        if site.templates != self.tree.root:
            self.log.warn("templates moved to {new}; restart okws to publish from there", new=site.templates)

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        self.log.warn("unexpected control message {kind}", kind=kind)

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        self.watcher.stop()
        for peer in list(self.peers.values()):
            peer.channel.close()
        stopped, self._stopped = self._stopped, lambda: None
        stopped()


def _parts(names: list[str]) -> Iterator[list[str]]:
    """C{names} in lists of at most L{_CHANGED_BYTES} bytes of names each."""
    part: list[str] = []
    size = 0
    for name in names:
        if part and size + len(name) > _CHANGED_BYTES:
            yield part
            part, size = [], 0
        part.append(name)
        size += len(name) + 4
    if part:
        yield part


def start_role(
    reactor: Any, site: SiteConfig, meta: dict[str, Any], stopped: Callable[[], None], records: Any = None
) -> Publisher:
    """The publisher child: publish the site's template tree."""
    publisher = Publisher(reactor, site.templates, stopped)
    publisher.start()
    return publisher
