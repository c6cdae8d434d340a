# -*- test-case-name: tests.launcher.test_site -*-
"""
The control protocol between the launcher and each child (OKWS's okld control channel).

Every child inherits one end of a L{okws_twisted.wire.channel} seqpacket pair as
fd L{CONTROL_FD}.  Message kinds:

``config`` (launcher -> child, always first)
    C{site}: the site configuration as JSON (children never read the ini
    file), C{role}, C{run}, C{launch}, C{pid} (the child's own, as the
    launcher sees it), and for services C{service} and C{index}.
``ready`` (child -> launcher)
    The child has finished starting and can do its job.
``peer`` (launcher -> child), with one fd
    A new channel of kind C{channel} to the child described by C{name},
    C{role}, C{pid}, C{launch} (its launch count), C{run} (the launcher's
    run id) and, for an instance, C{service}/C{index}.  ``handoff``: for the
    dispatcher, to a service instance; for a service, to the (current)
    dispatcher.  ``templates``: between the template publisher and each
    service instance and the dispatcher.  ``log``: for the log daemon, from a sender (this meta is the
    sender's identity); for every other child, to the (current) log daemon.
    Sent again after either side is relaunched.
``stop`` (launcher -> child)
    Stop gracefully: finish in-flight work within C{drain} seconds, then exit.
    C{handback}: a service hands its kept-alive connections back to the
    dispatcher instead of closing them (a successor takes over).
``drain`` (launcher -> dispatcher)
    The site is stopping: accept nothing more, answer what is queued; the
    admin listener's health check says "draining".  ``stop`` follows once
    every service has exited.
``ping`` / ``pong``
    The launcher's heartbeat (C{n}); the answer carries the child's C{stats}.
    A child that stops answering is killed (that pid only) and relaunched.
``retire`` (launcher -> dispatcher)
    Give instance C{pid} no new connections (it is being replaced).
``status`` (launcher -> dispatcher)
    Per service: C{failed} (crash budget exhausted), C{restarts}, C{crashes}.
``config-update`` (launcher -> child)
    The site was reloaded: the new site configuration as JSON payload.
``want`` (dispatcher -> launcher)
    A request came for lazy service C{service}, which no instance serves
    yet: start it.
``lost`` (dispatcher, log daemon, publisher -> launcher)
    "I dropped my channel to the process C{pid}" (it misbehaved, reset or
    vanished), with C{why} in words.  The launcher kills that process if it
    is the current, ready one of a slot the sender is wired to, and
    relaunches it; about a process already leaving (retiring, exited) it is
    no news.  Any other pid is refused.

``priority`` (log daemon -> launcher)
    C{normal}: C{true}, "I am falling behind at my low priority ([okws]
    logd_nice): run me at nice 0"; C{false}, "I keep up again: lower me"
    (L{okws_twisted.logd.priority}).  About the sender itself only; the
    launcher changes nothing when it did not lower the daemon.
The launcher trusts no child: it accepts from each only the kinds its role
may send (L{FROM_CHILD}); any other is refused, logged with the sender and
counted.  The config's C{pid} is the child's pid as the launcher sees it: a
jailed child is the init of its own PID namespace, where C{os.getpid()} is 1.

A child whose control channel closes (the launcher is gone) exits at once.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from okws_twisted.wire.channel import MessageChannel

CONTROL_FD = 3
FIRST_LISTEN_FD = 4

CONFIG = "config"
READY = "ready"
PEER = "peer"
STOP = "stop"
PING = "ping"
PONG = "pong"
RETIRE = "retire"
STATUS = "status"
WANT = "want"
CONFIG_UPDATE = "config-update"
DRAIN = "drain"
LOST = "lost"
PRIORITY = "priority"

#: The kinds each role may send the launcher; the launcher refuses the rest.
FROM_CHILD: dict[str, frozenset[str]] = {
    "logd": frozenset({READY, PONG, LOST, PRIORITY}),
    "dispatcher": frozenset({READY, PONG, WANT, LOST}),
    "service": frozenset({READY, PONG}),
    "pubd": frozenset({READY, PONG, LOST}),
    "tls": frozenset({READY, PONG}),
    "dbproxy": frozenset({READY, PONG}),
}


def may_send(role: str, kind: str) -> bool:
    """Whether a child of C{role} may send the launcher a message of C{kind}."""
    return kind in FROM_CHILD.get(role, frozenset())


#: The longest C{why} of a ``lost`` message.
LOST_WHY_MAX = 200


def lost_meta(pid: int, why: str) -> dict[str, object]:
    """The ``lost`` message: this process dropped its channel to C{pid}."""
    return {"k": LOST, "pid": pid, "why": why[:LOST_WHY_MAX]}


_log = Logger(namespace="okws.lost")


def report_lost(
    to_launcher: Callable[[dict[str, Any]], None], channel: MessageChannel, what: str, pid: object, reason: Failure
) -> bool:
    """Tell the launcher that C{channel}, to the peer C{pid}, is gone (``lost``).

    Not if this end closed it (a newer channel replaced it, or this process
    is stopping), nor for a peer whose pid the launcher did not give.
    Returns whether it told.
    """
    if channel.closed_here or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    # The channel's own words, without Twisted's "Connection was closed cleanly: ...".
    why = " ".join(str(arg) for arg in reason.value.args) or reason.getErrorMessage()
    _log.warn("lost the {what} channel to pid {pid}: {why}; telling the launcher", what=what, pid=pid, why=why)
    to_launcher(lost_meta(pid, why))
    return True
