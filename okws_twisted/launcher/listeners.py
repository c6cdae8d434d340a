# -*- test-case-name: tests.launcher.test_site -*-
"""
The listening sockets, opened by the launcher (OKWS's okld) before anything else starts.

The launcher owns them, so a relaunched dispatcher or TLS front inherits the same sockets and
no queued connection is lost.  A C{systemd:} listener is not opened but taken from systemd
(socket activation), the way Twisted's C{systemd:} endpoint finds it.  For TLS listeners it checks only that the key and certificate
files exist: the launcher never reads a key (the TLS front does).
"""

from __future__ import annotations

import os
import socket
import stat

from twisted.python.systemd import ListenFDs

from okws_twisted.config import Listener, SiteConfig


class ListenError(Exception):
    """A listening socket could not be opened."""


def open_listener(listener: Listener, systemd: ListenFDs | None = None) -> socket.socket:
    """Bind and listen on one configured endpoint (or take it from systemd); raise L{ListenError}."""
    if listener.kind == "systemd":
        return inherited_listener(listener, systemd)
    try:
        if listener.kind == "unix":
            assert listener.path is not None
            try:
                if stat.S_ISSOCK(os.stat(listener.path).st_mode):
                    os.unlink(listener.path)  # a stale socket from an earlier run
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(listener.path)
            os.chmod(listener.path, listener.mode)
        else:
            family = socket.AF_INET6 if listener.kind == "tcp6" else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listener.interface, listener.port))
        sock.listen(listener.backlog)
    except OSError as e:
        raise ListenError(f"cannot listen on {listener.description}: {e.strerror or e}") from None
    return sock


_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def inherited_listener(listener: Listener, systemd: ListenFDs | None = None) -> socket.socket:
    """The listening socket systemd passed (socket activation), found as Twisted's C{systemd:} endpoint finds it.

    Twisted's L{ListenFDs} reads the environment systemd sets: C{LISTEN_PID}
    (which must be this process), C{LISTEN_FDS} (how many, from fd 3) and
    C{LISTEN_FDNAMES} (their names).  The launcher takes the descriptor only:
    it owns the socket and passes it to the dispatcher like one it opened
    (Twisted's endpoint would make a listening port in this process).  The
    socket must be a listening stream socket of the configured domain; it is
    kept from every child but the one it is passed to.

    @param systemd: what systemd passed; by default, read from this process's environment.
    """
    fds = systemd if systemd is not None else ListenFDs.fromEnvironment()
    where = f"{listener.description}: "
    if listener.fd_index is not None:
        found = fds.inheritedDescriptors()
        if listener.fd_index >= len(found):
            raise ListenError(
                f"{where}systemd passed {len(found)} socket(s), so there is no index {listener.fd_index} "
                "(LISTEN_PID must be this process, and LISTEN_FDS and LISTEN_FDNAMES agree: is the socket unit active?)"
            )
        fd = found[listener.fd_index]
    else:
        named = fds.inheritedNamedDescriptors()
        if listener.fd_name not in named:
            have = ", ".join(sorted(named)) or "none"
            raise ListenError(
                f"{where}systemd passed no socket named {listener.fd_name!r} (have: {have}; "
                "the socket unit's FileDescriptorName=, in LISTEN_FDNAMES, for LISTEN_PID = this process)"
            )
        fd = named[listener.fd_name]
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ListenError(f"{where}fd {fd} from systemd is not a socket: {e.strerror or e}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != _FAMILIES[listener.domain or ""] or sock.type != socket.SOCK_STREAM or not listening:
        kind = f"{socket.AddressFamily(sock.family).name} {socket.SocketKind(sock.type).name}"
        sock.detach()
        raise ListenError(f"{where}fd {fd} from systemd is a {kind} socket{'' if listening else ', not listening'}; "
                          f"expected a listening {listener.domain} stream socket")
    os.set_inheritable(fd, False)
    return sock


def sni_pem_files(directory: str) -> list[str]:
    """The C{.pem} regular files of a C{tls:} listener's directory (names only are looked at here)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith(".pem") and os.path.isfile(os.path.join(directory, n))]


def check_tls_files(site: SiteConfig) -> list[str]:
    """The ssl: listeners' key and certificate files that are not regular files, as config errors.

    Only their existence is checked here: the launcher never reads a key.
    The TLS front loads them, and reports a file that does not parse.
    """
    problems = []
    for listener in site.listen:
        for option, path in (("privateKey", listener.private_key), ("certKey", listener.cert_key)):
            if path is not None and not os.path.isfile(path):
                problems.append(
                    f"{site.file}: [okws] listen: {listener.description!r}: {option} {path} "
                    + ("is not a file" if os.path.exists(path) else "does not exist")
                )
        if listener.sni_dir is not None:
            where = f"{site.file}: [okws] listen: {listener.description!r}: path {listener.sni_dir}"
            if not os.path.isdir(listener.sni_dir):
                problems.append(where + (" is not a directory" if os.path.exists(listener.sni_dir) else " does not exist"))
            elif not sni_pem_files(listener.sni_dir):
                problems.append(where + " holds no .pem file (each NAME.pem holds a key and its certificate chain)")
    return problems
