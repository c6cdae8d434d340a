# -*- test-case-name: tests.launcher.test_output -*-
"""
A child's stdout and stderr, as lines for the launcher's log, bounded (okld logged its
children's output unbounded; here a child is not trusted with the launcher's memory or log).

The root launcher reads whatever its children write.  A compromised service can write
hundreds of megabytes, or one line without end; copying that into the launcher's memory and
log lets the service grow the one root process and bury every other record.
L{OutputLimiter} keeps at most one cut line per stream (L{LINE_MAX} bytes), passes at most
L{RATE} bytes a second (a token bucket holding one second's worth), and counts what it drops,
so the operator sees that output was lost and how much.  Pure logic: time is passed in.
"""

from __future__ import annotations

#: The bytes per second of one child's output that reach the launcher's log.
RATE = 64 * 1024
#: The longest line logged; the rest of a longer line is dropped.
LINE_MAX = 8 * 1024
#: What ends a line that was cut at L{LINE_MAX}.
CUT = " … [cut]"


class _Stream:
    """One of a child's output pipes: the line being read, or the rest of a cut one."""

    __slots__ = ("line", "skipping")

    def __init__(self) -> None:
        self.line = bytearray()
        self.skipping = False


class OutputLimiter:
    """Turns one child's output into log lines, at most C{rate} bytes a second, none longer than C{line_max}.

    C{dropped_bytes} and C{dropped_lines} count everything not passed on: lines over the
    rate, and the cut-off rest of lines over C{line_max} (bytes only).
    """

    def __init__(self, now: float, rate: int = RATE, line_max: int = LINE_MAX) -> None:
        self.rate = rate
        self.line_max = line_max
        self.tokens = float(rate)
        self.last = now
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self._reported = (0, 0)
        self._streams: dict[int, _Stream] = {}

    def feed(self, fd: int, data: bytes, now: float) -> list[str]:
        """The complete lines (without newline) that C{data} finishes and that may be logged."""
        stream = self._streams.setdefault(fd, _Stream())
        out: list[str] = []
        pos = 0
        size = len(data)
        while pos < size:
            newline = data.find(b"\n", pos)
            end = size if newline < 0 else newline
            if stream.skipping:
                self.dropped_bytes += end - pos
            else:
                room = self.line_max - len(stream.line)
                stream.line += data[pos : min(end, pos + room)]
                if end - pos > room:
                    self.dropped_bytes += end - pos - room
                    self._emit(stream.line, now, out, cut=True)
                    stream.line = bytearray()
                    stream.skipping = True
            if newline < 0:
                break
            if stream.skipping:
                stream.skipping = False
            else:
                self._emit(stream.line, now, out)
                stream.line = bytearray()
            pos = newline + 1
        return out

    def flush(self, now: float) -> list[str]:
        """The unfinished lines, once the child is gone."""
        out: list[str] = []
        for stream in self._streams.values():
            if stream.line:
                self._emit(stream.line, now, out)
            stream.line = bytearray()
            stream.skipping = False
        return out

    def report(self) -> tuple[int, int]:
        """(bytes, lines) dropped since the last report."""
        now = (self.dropped_bytes, self.dropped_lines)
        delta = (now[0] - self._reported[0], now[1] - self._reported[1])
        self._reported = now
        return delta

    def _emit(self, line: bytearray, now: float, out: list[str], cut: bool = False) -> None:
        self.tokens = min(float(self.rate), self.tokens + (now - self.last) * self.rate)
        self.last = now
        cost = len(line) + 1
        if cost > self.tokens:
            self.dropped_bytes += len(line)
            self.dropped_lines += 1
            return
        self.tokens -= cost
        text = line.decode("utf-8", "replace").rstrip("\r")
        out.append(text + CUT if cut else text)
