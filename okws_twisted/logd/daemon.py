# -*- test-case-name: tests.logd.test_daemon -*-
"""
The log daemon (OKWS's oklogd): the only process that writes logs, and it loses nothing.

It owns ``log_dir``: C{access.log} (one line per response, see
L{okws_twisted.logd.format}), C{error.log} (every error status okws produced,
every exception with its traceback, every process start and exit, every
bad record), an optional C{access.json}, and its journal
(L{okws_twisted.logd.journal}).  No other okws process opens a file there.

Every other process sends it structured records over a log channel the
launcher made (L{okws_twisted.wire.logchannel}); the launcher tells the daemon who
is at the other end.  For each batch the daemon checks every record, formats
it, notes the batch in the journal, appends it to the files and acknowledges
the highest sequence number written.  (A service's usual batch is read with
one regular expression instead of json, L{LogWriter.write_service_access}:
the same checks and lines, less work.)  Records it has already written (a
sender resending after the daemon was relaunched) are skipped, so each
record is written once even if the daemon is killed between writing and
acknowledging.

A write error (disk full, I/O error) ends the process at once: a relaunched
daemon repairs the files from the journal and the senders, still holding
every unacknowledged record, send them again.

A sender that breaks its channel's rules (L{okws_twisted.wire.limits}), or
whose channel goes away while the daemon runs, is reported to the launcher
(``lost``), which relaunches it.

One test hook (L{PAUSE_BEFORE_ACK}) makes the daemon stop between writing a
batch and acknowledging it, so that the end-to-end tests can kill it at
exactly that moment instead of by luck.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable

from twisted.internet.error import ConnectionLost
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from okws_twisted.config import COMBINED, SiteConfig
from okws_twisted.interfaces import IChildRole
from okws_twisted.logd.files import LogFile
from okws_twisted.logd.format import (
    Sender,
    TimeFormats,
    access_json,
    access_line,
    check,
    dropped_line,
    event_lines,
    own_line,
    plain_strings,
    problem_line,
    service_access_lines,
    service_access_records,
    status_line,
    usual_access,
)
from okws_twisted.logd import priority
from okws_twisted.logd.journal import Entry, Journal, Recovery, Write
from okws_twisted.wire import control, limits, logchannel
from okws_twisted.wire.channel import ChannelError, Message, MessageChannel

ACCESS_LOG = "access.log"
ERROR_LOG = "error.log"
ACCESS_JSON = "access.json"
#: Exit status of a daemon that could not write (the launcher relaunches it).
WRITE_FAILED = 74
#: Test hook (tests/test_e2e_logging.py): a file of this name in C{log_dir} when the daemon
#: starts names a sender (``hello.0``).  The daemon removes the file; after writing that
#: sender's next batch it says so on stderr and blocks for L{PAUSE_SECONDS} instead of
#: acknowledging, so that a test can kill it between the write and the acknowledgement.
PAUSE_BEFORE_ACK = ".okws-test-pause-before-ack"
PAUSE_SECONDS = 60.0


class LogWriter:
    """The log files, the journal and the formatting: one batch in, lines out.

    No sockets: L{LogDaemon} feeds it batches; tests feed it directly.
    """

    log = Logger()

    def __init__(self, config: SiteConfig, me: Sender, clock: Any, current_run: str = "-") -> None:
        self.config = config
        self.me = me
        self.clock = clock
        self.current_run = current_run
        self.times = TimeFormats()
        self.journal = Journal(config.log_dir)
        self.files: dict[str, LogFile] = {}
        names = [ERROR_LOG]
        if config.access_log:
            names.append(ACCESS_LOG)
        if config.access_log_json:
            names.append(ACCESS_JSON)
        for name in names:
            self.files[name] = LogFile(config.log_dir, name, config.log_max_size, config.log_keep)
        #: Whether a service's usual batch may be read and written without json (L{write_service_access}):
        #: the default access.log fields, and no access.json (its lines need every field).
        self.service_fast = (
            config.access_log_fields == COMBINED and ACCESS_LOG in self.files and ACCESS_JSON not in self.files
        )
        self.watermarks: dict[str, int] = {}
        self.bad_records = 0
        self.recovery: Recovery | None = None

    def _now(self) -> int:
        return int(self.clock.seconds() * 1_000_000)

    def _keep(self, sender_key: str) -> bool:
        """Journal compaction keeps the senders of this launcher run (others are gone)."""
        return sender_key.startswith(self.current_run + "/")

    # -- start and stop

    def start(self) -> None:
        """Create the directory, repair the files from the journal, open them."""
        os.makedirs(self.config.log_dir, mode=0o750, exist_ok=True)
        recovery = self.journal.recover(self._keep)
        self.recovery = recovery
        self.watermarks = dict(recovery.watermarks)
        for f in self.files.values():
            f.open()
        entry = recovery.rolled_back
        if entry is not None:
            cut = ", ".join(f"{name} to {offset} bytes" for name, offset in recovery.truncate) or "nothing"
            self.own(
                "warn",
                f"recovered from an unclean stop: records {entry.first}-{entry.last} of {entry.sender} "
                f"were partly written; cut {cut}; they are written again when the sender resends them",
            )
        for write in recovery.unverified:
            self.own("warn", f"could not check the last batch in {write.name} (inode {write.ino}): the file was moved away")

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.journal.close()

    def reopen(self) -> None:
        """Reopen every file by name (after an external rename)."""
        for f in self.files.values():
            f.reopen()
        self.own("info", "reopened the log files")

    # -- writing

    def own(self, level: str, text: str) -> None:
        """Write a line about the daemon itself to error.log (not journalled: never resent)."""
        self.files[ERROR_LOG].append(own_line(self._now(), level, self.me, text, self.times).encode("ascii"))

    def write_batch(self, sender: Sender, first: int, records: list[Any], plain: bool = False) -> int:
        """Check, format and write C{records} (numbered from C{first}); return the
        sender's watermark (the highest sequence number now in the files).

        C{plain}: every string in the batch is plain printable ASCII
        (L{okws_twisted.logd.format.plain_strings} of its payload), so access lines need no escaping.
        """
        key = sender.key
        skip = self._written_before(key, first)
        if skip >= len(records):
            return self.watermarks.get(key, 0)
        start = first + skip
        access: list[str] = []
        errors: list[str] = []
        json_lines: list[str] = []
        bad: list[tuple[int, list[str]]] = []
        write_access, write_json = ACCESS_LOG in self.files, ACCESS_JSON in self.files
        chosen, times = self.config.access_log_fields, self.times
        role = sender.role
        for seq, record in enumerate(records[skip:] if skip else records, start):
            if type(record) is dict and usual_access(record, role):
                kind, fields = "access", record  # what check() would return, without the copy
            else:
                checked, problems = check(record, sender)
                if problems:
                    bad.append((seq, problems))
                if checked is None:
                    continue
                kind, fields = checked
            if "time" not in fields:
                fields["time"] = self._now()  # a record without a time is stamped on arrival
            if kind == "access":
                if write_access:
                    access.append(access_line(fields, sender, chosen, times, plain))
                if write_json:
                    json_lines.append(access_json(fields, sender, times))
                if fields["status"] >= 400:
                    errors.append(status_line(fields, sender, times))  # type: ignore[arg-type]
            elif kind == "event":
                errors.append(event_lines(fields, sender, times))
            else:
                errors.append(dropped_line(fields, sender, times))
        if bad:
            self.bad_records += len(bad)
            seq, problems = bad[0]
            errors.append(problem_line(self._now(), self.me, sender, seq, problems, len(bad) - 1, self.times))
        lines = {ACCESS_LOG: access, ERROR_LOG: errors, ACCESS_JSON: json_lines}
        return self._commit(key, start, first + len(records) - 1, lines)

    def write_service_access(self, sender: Sender, first: int, payload: bytes) -> int | None:
        """L{write_batch} for a service's usual batch (the C{records} payload as sent), read
        without json: the same lines, journal and watermark; or L{None}, having done nothing,
        if the batch or the settings are not the usual ones
        (L{okws_twisted.logd.format.service_access_records}) and the batch must go the long way.
        """
        if not self.service_fast or sender.role != "service":
            return None
        records = service_access_records(payload.decode("latin-1"))  # (the records admit ASCII only)
        if records is None:
            return None
        key = sender.key
        skip = self._written_before(key, first)
        if skip >= len(records):
            return self.watermarks.get(key, 0)
        access, errors = service_access_lines(records[skip:] if skip else records, sender, self.times)
        return self._commit(key, first + skip, first + len(records) - 1, {ACCESS_LOG: access, ERROR_LOG: errors})

    def _written_before(self, key: str, first: int) -> int:
        """How many records of a batch from C{first} the files already hold (a batch resent after
        a reconnect or a relaunch)."""
        return max(0, self.watermarks.get(key, 0) - first + 1)

    def _commit(self, key: str, first: int, last: int, lines: dict[str, list[str]]) -> int:
        """Journal and append records C{first}..C{last}'s lines; the sender's watermark is C{last}."""
        chunks = [(self.files[name], "".join(text).encode("ascii")) for name, text in lines.items() if text]
        if not chunks:
            self.watermarks[key] = last
            return last
        writes = tuple(Write(f.name, f.dev, f.ino, f.size, len(data)) for f, data in chunks)
        self.journal.record(Entry(key, first, last, writes))
        for f, data in chunks:
            f.append(data)
        for f, _data in chunks:
            if f.full:
                f.rotate()
        if self.journal.large:
            self.journal.rewrite(self.watermarks | {key: last}, self._keep)
        self.watermarks[key] = last
        return last


@implementer(IChildRole)
class LogDaemon:
    """The log daemon's role: one L{SenderLink} per sender, one L{LogWriter}."""

    log = Logger()

    #: How the daemon tells the launcher something (set by the bootstrap).
    to_launcher: Callable[[dict[str, Any]], None] = staticmethod(lambda meta: None)  # type: ignore[assignment]

    def __init__(self, reactor: Any, writer: LogWriter, stopped: Callable[[], None] = lambda: None) -> None:
        self.reactor = reactor
        self.writer = writer
        self.links: dict[str, "SenderLink"] = {}
        self._stopped = stopped
        self.stopping = False
        self.observer: OwnEvents | None = None
        #: The sender named by the L{PAUSE_BEFORE_ACK} test hook, if any.
        self.pause_before_ack: str | None = None
        #: Asks for the low priority while on time, normal while late (L{priority}); None if not lowered.
        self.lag_watch: priority.LagWatch | None = None

    def peer(self, channel: str, meta: dict[str, Any], sock: socket.socket) -> None:
        if channel != logchannel.CHANNEL:
            self.log.error("unexpected {channel} channel from the launcher", channel=channel)
            sock.close()
            return
        try:
            sender = Sender.from_meta(meta)
        except ValueError as e:
            self.log.error("refused a log channel: {error}", error=e)
            sock.close()
            return
        old = self.links.get(sender.key)
        self.links[sender.key] = SenderLink(self, sender, sock)
        if old is not None:
            old.channel.close()

    def received(self, link: "SenderLink", batch: list[Message]) -> None:
        if self.stopping:
            return
        mark = None
        for msg in batch:
            msg.close_fds()
            try:
                if msg.kind == logchannel.RECORDS:
                    first = logchannel.records_first(msg)
                    plain = plain_strings(msg.payload)
                    written = None
                    if plain:
                        written = self._guarded(self.writer.write_service_access, link.sender, first, msg.payload)
                    if written is None:  # not a service's usual batch: decode and check each record
                        records = logchannel.records_list(msg)
                        written = self._guarded(self.writer.write_batch, link.sender, first, records, plain)
                    mark = written
                elif msg.kind == logchannel.REOPEN and link.sender.role == "launcher":
                    self._guarded(self.writer.reopen)
                else:
                    raise ChannelError(f"unexpected {msg.kind!r} message")
            except ChannelError as e:
                self._guarded(self.writer.own, "warn", f"bad log message from {link.sender.source}: {e}")
        if mark is not None and link.channel.connected:
            if self.pause_before_ack is not None and self.pause_before_ack == link.sender.name:
                self.pause_before_ack = None
                print(
                    f"okws log daemon: test hook: wrote {link.sender.name} up to record {mark}; "
                    f"pausing {PAUSE_SECONDS:g}s before the acknowledgement",
                    file=sys.stderr, flush=True,
                )
                time.sleep(PAUSE_SECONDS)
            link.channel.send(logchannel.ack_meta(mark))

    def _guarded(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a write; if it fails, stop at once (no later batch may follow a torn one)."""
        try:
            return action(*args)
        except OSError as e:
            print(f"okws log daemon: cannot write the logs in {self.writer.config.log_dir}: {e}; exiting", file=sys.stderr, flush=True)
            os._exit(WRITE_FAILED)

    def link_lost(self, link: "SenderLink", reason: Failure) -> None:
        if self.links.get(link.sender.key) is link:
            del self.links[link.sender.key]
        if not self.stopping and link.sender.role != "launcher":
            control.report_lost(self.to_launcher, link.channel, f"log:{link.sender.name}", link.sender.pid, reason)

    def stats(self) -> dict[str, Any]:
        return {"senders": len(self.links)}

    def update_config(self, site: SiteConfig) -> None:
        """Reloaded: the log files and formats are fixed until a restart."""

    def control(self, kind: str, meta: dict[str, Any]) -> None:
        self.log.warn("unexpected control message {kind}", kind=kind)

    def stop(self, drain: float = 0.0, handback: bool = False) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.lag_watch is not None:
            self.lag_watch.stop()
        for link in list(self.links.values()):
            link.channel.close()
        self.writer.close()
        if self.observer is not None:
            globalLogPublisher.removeObserver(self.observer)
            self.observer = None
        stopped, self._stopped = self._stopped, lambda: None
        stopped()


class SenderLink:
    """The daemon's channel to one sender, and who that sender is."""

    def __init__(self, daemon: LogDaemon, sender: Sender, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sender = sender
        self.channel = MessageChannel(
            daemon.reactor, sock, self._received, self._lost, name=f"log:{sender.name}", limits=limits.LOG_DAEMON
        )

    def _received(self, batch: list[Message]) -> None:
        self.daemon.received(self, batch)

    def _lost(self, reason: Failure) -> None:
        if reason.check(ConnectionLost) and not self.daemon.stopping:
            self.daemon._guarded(self.daemon.writer.own, "warn", f"closed the log channel of {self.sender.source}: {reason.getErrorMessage()}")
        self.daemon.link_lost(self, reason)


_OWN_LEVELS = {LogLevel.warn: "warn", LogLevel.error: "error", LogLevel.critical: "critical"}


@implementer(ILogObserver)
class OwnEvents:
    """Writes the daemon's own warnings and errors (twisted.logger events) to error.log."""

    def __init__(self, daemon: LogDaemon) -> None:
        self.daemon = daemon
        self._busy = False

    def __call__(self, event: dict[str, Any]) -> None:
        level = _OWN_LEVELS.get(event.get("log_level"))  # type: ignore[arg-type]
        if level is None or self._busy or self.daemon.stopping:
            return
        self._busy = True
        try:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if isinstance(failure, Failure):
                text += "\n" + failure.getTraceback()
            self.daemon._guarded(self.daemon.writer.own, level, text.replace("\n", " | "))
        finally:
            self._busy = False


def start_role(reactor: Any, site: SiteConfig, meta: dict[str, Any], stopped: Callable[[], None], records: Any = None) -> LogDaemon:
    """The log daemon child: repair and open the files, then wait for senders."""
    # The launcher's view of our pid: inside our PID namespace os.getpid() is 1.
    pid = int(meta.get("pid", os.getpid()))
    me = Sender(name="logd", role="logd", pid=pid, run=str(meta.get("run", "-")), launch=int(meta.get("launch", 1)))
    writer = LogWriter(site, me, reactor, current_run=me.run)
    writer.start()
    daemon = LogDaemon(reactor, writer, stopped)
    hook = os.path.join(site.log_dir, PAUSE_BEFORE_ACK)
    try:
        with open(hook, encoding="utf-8") as f:
            daemon.pause_before_ack = f.read(256).strip()
        os.unlink(hook)
    except FileNotFoundError:
        pass
    daemon.observer = OwnEvents(daemon)
    globalLogPublisher.addObserver(daemon.observer)
    resting = meta.get("nice")
    if isinstance(resting, int) and resting > 0:
        # The launcher lets us run low ([okws] logd_nice) while we keep up: ask it to lower us
        # once we are on time, and for normal priority whenever the machine starves us, so
        # that no record is dropped for want of CPU.
        def ask(normal: bool) -> None:
            daemon.to_launcher({"k": control.PRIORITY, "normal": normal})

        daemon.lag_watch = priority.LagWatch(reactor, ask)
        daemon.lag_watch.start()
    return daemon
