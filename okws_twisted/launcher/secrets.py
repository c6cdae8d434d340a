# -*- test-case-name: tests.launcher.test_secrets -*-
"""
The services' CSRF secrets, kept by the launcher (OKWS's okld kept no secrets of this kind).

Each service signs its forms' CSRF tokens (L{okws_twisted.service.csrf}) with a secret of its
own.  It must outlive relaunches (a form rendered by one instance is posted to its successor)
and be shared by every instance of the service, so it is a file:
C{state_dir/csrf/NAME.key}, 32 random bytes made at the first start, in a directory only the
launcher's user may enter (0700; the file 0600).  No jail shows C{state_dir}: each service's
secret reaches that service alone, in its own start-up message, never in the site
configuration every child gets.  A compromised service can therefore mint tokens for itself,
never for another.

Deleting a file rotates that secret at the next start (forms already open then fail once
with 403).  A file that is not the launcher's, is readable by others, or is not 32 bytes stops
the start-up with one line naming it.
"""

from __future__ import annotations

import errno
import os
import stat

from okws_twisted.config import SiteConfig

__all__ = ["SECRET_BYTES", "SecretError", "csrf_secrets"]

#: The length of a service's secret.
SECRET_BYTES = 32


class SecretError(Exception):
    """A secret file cannot be used; the message names it and what is wrong."""


def csrf_secrets(site: SiteConfig) -> dict[str, bytes]:
    """Every service's CSRF secret, by service name, made where missing.

    Static pools have no forms and get none.

    @raise SecretError: for a directory or a file that cannot be used.
    """
    folder = os.path.join(site.state_dir, "csrf")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SecretError(f"{site.file}: [okws] state_dir: cannot create {folder}: {e.strerror or e}") from None
    _check_private(site, folder, stat.S_ISDIR, "a directory")
    return {
        service.name: _secret(site, os.path.join(folder, f"{service.name}.key"))
        for service in site.services
        if service.kind == "service"
    }


def _secret(site: SiteConfig, path: str) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise SecretError(f"{site.file}: [okws] state_dir: cannot create {path}: {e.strerror or e}") from None
    else:
        try:
            os.write(fd, os.urandom(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    _check_private(site, path, stat.S_ISREG, "a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SecretError(f"{site.file}: [okws] state_dir: cannot read {path}: {e.strerror or e}") from None
    try:
        secret = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(secret) != SECRET_BYTES:
        raise SecretError(
            f"{site.file}: [okws] state_dir: {path} holds {len(secret)} bytes, not a {SECRET_BYTES}-byte secret; "
            "delete it to make a new one"
        )
    return secret


def _check_private(site: SiteConfig, path: str, kind: object, what: str) -> None:
    """C{path} must be C{what}, the launcher's own, and closed to everyone else."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise SecretError(f"{site.file}: [okws] state_dir: {path}: {e.strerror or errno.errorcode.get(e.errno or 0)}") from None
    if not kind(st.st_mode):  # type: ignore[operator]
        raise SecretError(f"{site.file}: [okws] state_dir: {path} is not {what}")
    if st.st_uid != os.geteuid():
        raise SecretError(f"{site.file}: [okws] state_dir: {path} belongs to uid {st.st_uid}, not to okws's uid {os.geteuid()}")
    if st.st_mode & 0o077:
        raise SecretError(
            f"{site.file}: [okws] state_dir: {path} is open to others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"chmod go= it"
        )
