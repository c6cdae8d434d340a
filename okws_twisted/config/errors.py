# -*- test-case-name: tests.test_config -*-
"""How a configuration mistake is reported: one line naming the file, the section and the key."""

from __future__ import annotations

import difflib

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A configuration mistake, reported as one line naming where it is.

    C{str(e)} reads C{"site.ini: [service:hello] paths: '/a' is already claimed by
    [service:other]"}; the C{"[section] "} and C{"key: "} parts are left out when unknown.
    """

    def __init__(self, file: str, section: str | None, key: str | None, message: str) -> None:
        super().__init__(file, section, key, message)
        self.file = file
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}: "
        if self.section is not None:
            where += f"[{self.section}] "
        if self.key is not None:
            where += f"{self.key}: "
        return " ".join((where + self.message).splitlines())


class _FieldError(ValueError):
    """A value dataclass without a file rejected one field; L{parse} adds file and section."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f"; did you mean {lowered[word.lower()]}?"
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]}?" if close else ""
