# -*- test-case-name: tests.pubd.test_tree -*-
"""
The template tree as the template publisher (OKWS's pubd) reads it: names and files.

A template name is what a service asks for (C{"hello.html"},
C{"errors/404.html"}); it is never a path.  L{check_name} is the pure rule
for which names exist at all: segments joined by C{/}, none empty, none
C{.} or C{..}, none hidden (starting with C{.}: editor swap files, C{.git}),
no leading C{/}, no backslash, no control character.  L{TemplateTree.read}
then refuses any name whose real path (symbolic links resolved) leaves the
tree's root, so a link inside the tree may point elsewhere inside it, never
out.

The check is by real path before the file is opened.  Someone who can swap a
directory of the tree for a symbolic link between the check and the open
could race it; that someone can already write the templates, and a jailed
publisher (chrooted to the tree) has nothing outside it to reach anyway.
"""

from __future__ import annotations

import hashlib
import os
import stat

from okws_twisted.wire.templatechannel import (
    MAX_TEMPLATE_BYTES,
    NameRefused,
    Source,
    TemplateAbsent,
    check_name,
)


def etag_of(data: bytes) -> str:
    """The version tag of a template's bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


class TemplateTree:
    """Reads templates by name from one root directory, refusing any way out of it.

    @param root: the template root (the site's C{templates} directory).  It
        need not exist yet: every name is then missing.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def real_root(self) -> str | None:
        """The root with symbolic links resolved, or L{None} if it does not exist."""
        try:
            real = os.path.realpath(self.root, strict=True)
        except OSError:
            return None
        return real if os.path.isdir(real) else None

    def read(self, name: object) -> Source:
        """The current source of template C{name}.

        @raise TemplateAbsent: if the name is refused (malformed, or its real
            path leaves the root), the file is missing, not a regular file,
            too large, unreadable or not UTF-8 text.
        """
        shown = name if isinstance(name, str) else repr(name)
        try:
            check_name(name)
        except NameRefused as e:
            raise TemplateAbsent(shown, str(e), refused=True) from None
        assert isinstance(name, str)
        root = self.real_root()
        if root is None:
            raise TemplateAbsent(name, f"the template directory {self.root} does not exist")
        try:
            real = os.path.realpath(os.path.join(root, name), strict=True)
        except FileNotFoundError:
            raise TemplateAbsent(name, "no such template") from None
        except OSError as e:
            # ELOOP (a cycle of links), ENOTDIR (a file used as a directory), EACCES.
            raise TemplateAbsent(name, f"cannot resolve: {e.strerror or e}", refused=True) from None
        if not real.startswith(root + os.sep):
            raise TemplateAbsent(name, "it resolves outside the template directory", refused=True)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise TemplateAbsent(name, "no such template") from None
        except OSError as e:
            raise TemplateAbsent(name, f"cannot open: {e.strerror or e}", refused=True) from None
        try:
            data = self._read_file(name, fd)
        finally:
            os.close(fd)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TemplateAbsent(name, f"it is not UTF-8 text (byte {e.start})", refused=True) from None
        return Source(name, text, etag_of(data))

    @staticmethod
    def _read_file(name: str, fd: int) -> bytes:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise TemplateAbsent(name, "it is a directory, not a template")
        if not stat.S_ISREG(info.st_mode):
            raise TemplateAbsent(name, "it is not a regular file", refused=True)
        if info.st_size > MAX_TEMPLATE_BYTES:
            raise TemplateAbsent(name, f"it is larger than {MAX_TEMPLATE_BYTES} bytes", refused=True)
        chunks = []
        size = 0
        while size <= MAX_TEMPLATE_BYTES:
            try:
                chunk = os.read(fd, MAX_TEMPLATE_BYTES + 1 - size)
            except OSError as e:
                raise TemplateAbsent(name, f"cannot read: {e.strerror or e}", refused=True) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_TEMPLATE_BYTES:
            raise TemplateAbsent(name, f"it is larger than {MAX_TEMPLATE_BYTES} bytes", refused=True)
        return b"".join(chunks)
