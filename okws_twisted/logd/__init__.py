"""The log daemon (OKWS's oklogd): the only writer of the site's log files.

Every other process sends it records over a log channel (L{okws_twisted.wire.logchannel}); it
checks each one against what that sender may say, writes it, and acknowledges it once it is in
the files, through a journal that survives a kill -9 without loss or duplicate.
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["LogDaemon", "start_role"]

if TYPE_CHECKING:
    from okws_twisted.logd.daemon import LogDaemon, start_role

__getattr__ = lazy_face(__name__, {"LogDaemon": "daemon", "start_role": "daemon"})
