"""
The interfaces between okws's parts, gathered in one place (as Twisted's
``internet/interfaces.py`` and Klein's ``_interfaces.py`` do).
"""

from __future__ import annotations

import socket
from typing import Any

from zope.interface import Interface


class IChildRole(Interface):
    """What one okws child process does once started (dispatcher, service, ...).

    The bootstrap (L{okws_twisted.bootstrap}) builds a role from the config the
    launcher sent, tells the launcher it is ready, and passes it what arrives
    on the control channel.  A role module exposes
    C{start_role(reactor, site, meta, stopped, records) -> IChildRole}, where
    C{stopped} is called once the role has finished stopping and C{records} is
    the process's log client (a L{okws_twisted.logsender.RecordSender}; L{None}
    in the log daemon itself).  The bootstrap takes the ``log`` channels for
    the client; a role never sees them.
    """

    def peer(channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        """A new channel of kind C{channel} (e.g. ``"handoff"``) to the peer that
        C{meta} describes (``name``, ``role``, ``pid``, and ``service``/``index``
        for a service instance).  Replaces any earlier channel to that peer.
        The role owns C{sock}."""

    def stop(drain: float) -> None:
        """Stop gracefully: finish work in flight within C{drain} seconds, then
        call C{stopped}."""
