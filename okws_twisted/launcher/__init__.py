"""The launcher (OKWS's okld): twistd's service, the one process that stays root.

It opens the listening sockets, spawns every other process (jailed when started as root: each
the init of its own PID namespace, a service instance in its own cgroups), wires the channels
between them and relaunches what dies.  Channels it holds: a control
channel to every child (L{okws_twisted.wire.control}) and a log channel to the log daemon.
Operators reach it through its control socket (C{okws-ctl}).
"""

from typing import TYPE_CHECKING

from okws_twisted.faces import lazy_face

__all__ = ["ChildProcess", "ChildSlot", "Launcher", "Options", "makeService"]

if TYPE_CHECKING:
    from okws_twisted.launcher.children import ChildProcess, ChildSlot
    from okws_twisted.launcher.site import Launcher
    from okws_twisted.launcher.tap import Options, makeService

__getattr__ = lazy_face(__name__, {"Launcher": "site", "Options": "tap", "makeService": "tap", "ChildSlot": "children", "ChildProcess": "children"})
