# -*- test-case-name: tests.wire.test_channel -*-
"""
The size limits of every channel between okws processes, per channel kind and end.

OKWS's RPC layer bounded each message; here each end of each
L{okws_twisted.wire.channel.MessageChannel} is built with the
L{ChannelLimits} below, which the channel checks before it keeps a byte (see
the channel module).  A peer that breaks one has its channel closed; the
dispatcher, the template publisher and the log daemon then tell the launcher
(``lost``), which relaunches that peer.

A limit is the most an honest peer ever sends, with room to spare; never
less, or an honest peer would be cut off:

=========  =======================  ===============================================
channel    end (receives from)       largest payload accepted
=========  =======================  ===============================================
handoff    dispatcher (service),     C{max_head} + L{PIPELINE_MAX}: the bytes read
           service (dispatcher)      past a request head are at most one read (a
                                     C{conns} message's connections together no more)
templates  publisher (any peer)      none: a C{get} names its template in metadata
templates  service, dispatcher       L{PUBLISHED_MAX}: a template (at most
           (publisher)               L{MAX_TEMPLATE_BYTES}), the error pages, a
                                     list of changed names
control    launcher (any child)      none: C{ready}, C{pong}, C{want}, C{lost}
control    child (launcher)          L{CONFIG_MAX}: the site configuration
log        log daemon (any sender)   L{LOG_BATCH_MAX}: one batch of records
log        sender (log daemon)       none: acknowledgements
tls        dispatcher (TLS front)    L{CERTS_MAX}: a C{tls:} listener's certificate
                                     names (``certs``); a connection and its TLS
                                     facts carry none
tls        TLS front (dispatcher)    none: the dispatcher sends nothing
=========  =======================  ===============================================

Every end also bounds metadata (L{MAX_META} bytes a datagram), one wakeup's
batch (1 MiB of payload beyond the first message) and what it queues for a
peer that stops reading (64 MiB).  Pure: no I/O.
"""

from __future__ import annotations

from okws_twisted.wire.certs import CERTS_MAX
from okws_twisted.wire.channel import MAX_META, ChannelLimits
from okws_twisted.wire.templatechannel import MAX_TEMPLATE_BYTES

__all__ = [
    "CERTS_MAX",
    "CONFIG_MAX",
    "CONTROL_CHILD",
    "CONTROL_LAUNCHER",
    "LOG_BATCH_MAX",
    "LOG_DAEMON",
    "LOG_SENDER",
    "MAX_META",
    "PIPELINE_MAX",
    "PUBLISHED_MAX",
    "TEMPLATES_PEER",
    "TEMPLATES_PUBLISHER",
    "TLS_DISPATCHER",
    "TLS_FRONT",
    "handoff",
    "handoff_payload",
]

#: Unread bytes a connection carries past its request head, in either
#: direction: what one read from the client can bring beyond the head (at
#: least L{okws_twisted.wire.transport.READ_SIZE}; not imported from there,
#: so that the log daemon loads no transport).
PIPELINE_MAX = 64 * 1024
#: The largest message from the template publisher.
PUBLISHED_MAX = 4 * MAX_TEMPLATE_BYTES
#: The largest message from the launcher (the site configuration as JSON).
CONFIG_MAX = 16 << 20
#: The largest batch of log records (256 records of the largest fields are
#: about 25 MiB).
LOG_BATCH_MAX = 64 << 20


def handoff_payload(max_head: int) -> int:
    """The most unread bytes a C{conn} or C{back} message carries."""
    return max_head + PIPELINE_MAX


def handoff(max_head: int) -> ChannelLimits:
    """Either end of a handoff channel, for a site whose heads are at most C{max_head} bytes."""
    size = handoff_payload(max_head)
    return ChannelLimits(max_payload=size, send_max_payload=size)


#: The template publisher's end of a templates channel.
TEMPLATES_PUBLISHER = ChannelLimits(max_payload=0, send_max_payload=PUBLISHED_MAX)
#: A service's or the dispatcher's end of its templates channel.
TEMPLATES_PEER = ChannelLimits(max_payload=PUBLISHED_MAX, send_max_payload=0)
#: The launcher's end of a child's control channel.
CONTROL_LAUNCHER = ChannelLimits(max_payload=0, send_max_payload=CONFIG_MAX)
#: A child's end of its control channel.
CONTROL_CHILD = ChannelLimits(max_payload=CONFIG_MAX, send_max_payload=0)
#: The log daemon's end of a sender's log channel.
LOG_DAEMON = ChannelLimits(max_payload=LOG_BATCH_MAX, send_max_payload=0)
#: A sender's end of its log channel.
LOG_SENDER = ChannelLimits(max_payload=0, send_max_payload=LOG_BATCH_MAX)
#: The dispatcher's end of the channel from the TLS front.
TLS_DISPATCHER = ChannelLimits(max_payload=CERTS_MAX, send_max_payload=0)
#: The TLS front's end of its channel to the dispatcher.
TLS_FRONT = ChannelLimits(max_payload=0, send_max_payload=CERTS_MAX)
