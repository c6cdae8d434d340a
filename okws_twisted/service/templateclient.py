# -*- test-case-name: tests.service.test_templateclient -*-
"""
A service instance's side of the templates channel (its link to OKWS's pubd).

L{PublisherClient} is the service process's L{ITemplates}: it asks the
publisher for templates by name, keeps what it gets in a
L{okws_twisted.service.templatecache.TemplateCache}, renders through a
L{okws_twisted.service.rendering.TemplateRenderer}, forgets what the publisher says
changed, and keeps the site's error pages the publisher pushes.  The renderer (and
with it jinja2, about 1 MiB) is loaded at the first template a resource renders:
a service that renders none never loads it.

While there is no publisher (it crashed and is being relaunched), requests
for templates wait for the next channel, each for at most C{timeout}
seconds, and are resent on it; a template that was never had then fails with
L{PublisherUnavailable} (a 503).  Everything already held keeps rendering.
A new channel means a new publisher that may have seen changes the old one
never reported, so every held template is checked again on its next use.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.interfaces import ITemplates, PublisherUnavailable
from okws_twisted.service.templatecache import TemplateCache
from okws_twisted.wire import limits, templatechannel
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel
from okws_twisted.wire.errorpage import NO_PAGES, ErrorPages
from okws_twisted.wire.templatechannel import Absent, Source

if TYPE_CHECKING:
    from okws_twisted.service.rendering import TemplateRenderer


@dataclass
class _Request:
    name: str
    answer: Deferred[Source | Absent]
    timer: IDelayedCall


@implementer(ITemplates)
class PublisherClient:
    """Templates from the publisher, for one service process.

    @param timeout: how long one template request may wait for an answer
        (the site's C{template_timeout}).
    @param retry_after: the C{Retry-After} of the 503 when it does not come.
    """

    log = Logger()

    def __init__(self, reactor: Any, timeout: float, retry_after: int) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.retry_after = retry_after
        self.cache = TemplateCache()
        self._renderer: TemplateRenderer | None = None
        self.pages: ErrorPages = NO_PAGES
        self._channel: MessageChannel | None = None
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}

    @property
    def renderer(self) -> TemplateRenderer:
        """The renderer, made (and jinja2 imported) on first use."""
        if self._renderer is None:
            from okws_twisted.service.rendering import TemplateRenderer

            self._renderer = TemplateRenderer(self.cache, self.fetch, lambda: self.connected)
        return self._renderer

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.connected

    # -- ITemplates

    def render(self, name: str, context: Mapping[str, Any]) -> Deferred[str]:
        return self.renderer.render(name, context)

    def error_page(self, status: int, message: str) -> str:
        return self.pages.body(status, message)

    # -- the channel

    def set_channel(self, sock: socket.socket) -> None:
        """A (new) templates channel to the publisher."""
        old = self._channel
        channel: MessageChannel

        def lost(reason: Failure) -> None:
            if self._channel is channel:
                self._channel = None
                self.log.info("templates channel to the publisher closed: {reason}", reason=reason.getErrorMessage())

        channel = MessageChannel(self.reactor, sock, self._received, lost, name="templates:pubd", limits=limits.TEMPLATES_PEER)
        self._channel = channel
        if old is not None:
            old.close()
        self.cache.invalidate_all()
        for request_id, request in self._requests.items():
            self._send(templatechannel.get(request_id, request.name))

    def _send(self, message: templatechannel.Outgoing) -> None:
        if self._channel is not None and self._channel.connected:
            try:
                self._channel.send(*message)
            except error.ConnectionDone:
                pass  # resent on the next channel

    def fetch(self, name: str) -> Deferred[Source | Absent]:
        """Ask the publisher for C{name}: fires with its L{Source} or L{Absent},
        or fails with L{PublisherUnavailable} after C{timeout} seconds."""
        request_id = next(self._ids)

        def cancel(_: Deferred[Source | Absent]) -> None:
            request = self._requests.pop(request_id, None)
            if request is not None and request.timer.active():
                request.timer.cancel()

        answer: Deferred[Source | Absent] = Deferred(cancel)
        timer = self.reactor.callLater(self.timeout, self._expire, request_id)
        self._requests[request_id] = _Request(name, answer, timer)
        self._send(templatechannel.get(request_id, name))
        return answer

    def _expire(self, request_id: int) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return
        self.log.warn(
            "no answer from the template publisher for {template} within {timeout}s",
            template=request.name, timeout=self.timeout,
        )
        request.answer.errback(PublisherUnavailable(request.name, self.timeout, self.retry_after))

    def _received(self, batch: list[Message]) -> None:
        for msg in batch:
            try:
                if msg.kind in templatechannel.REPLIES:
                    self._answered(templatechannel.parse_reply(msg))
                elif msg.kind == templatechannel.CHANGED:
                    self.cache.invalidate(templatechannel.parse_changed(msg))
                elif msg.kind == templatechannel.PAGES:
                    self.pages = ErrorPages(templatechannel.parse_pages(msg))
                    # The dispatcher says so once for the site; every instance saying it too is noise.
                    self.log.debug("received {count} error pages from the publisher", count=len(self.pages.pages))
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                msg.close_fds()
                self.log.error("bad message from the template publisher: {error}", error=e)

    def _answered(self, reply: templatechannel.Reply) -> None:
        request = self._requests.get(reply.id)
        if request is not None and request.name != reply.result.name:
            raise ChannelError(f"answer {reply.id} names {reply.result.name!r}, not {request.name!r}")
        if request is None:
            # Its requester gave up waiting; what it says is still true now.
            if isinstance(reply.result, Source):
                self.cache.store(reply.result)
            else:
                self.cache.store_absent(reply.result)
            return
        del self._requests[reply.id]
        request.timer.cancel()
        request.answer.callback(reply.result)
