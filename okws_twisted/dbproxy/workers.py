# -*- test-case-name: tests.dbproxy.test_proxy -*-
"""
The proxy's connection pool: C{size} threads, each with a database connection of its own.

The database drivers block, so calls run off the reactor, one per thread, each thread on its
own connection (sqlite3 and psycopg connections are not shared between threads).  This is
what C{twisted.enterprise.adbapi.ConnectionPool} does too; it is done here with one queue and
batched completions because the proxy's calls are small and many.  Measured on the
development machine (2 cores, 20,000 trivial calls in batches of 100): Twisted's thread pool
and C{deferToThreadPool} cost about 19 us of CPU per call, one C{SimpleQueue} and one
C{callFromThread} per batch of completions about 3 us, and fewer thread wake-ups fighting
for the GIL.

Jobs run in arrival order (the proxy's own scheduler decides what arrives, and hands over at
most C{size} at a time).  A job is C{fn(connections, *args)}: C{connections} is the thread's
L{engine.Connections}, which opens its connection on first use and again after a dead one is
dropped.  Completions reach the reactor thread in batches: the first completion of a batch
schedules one C{callFromThread}, and every completion that lands before it runs rides along.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

#: How long L{Workers.stop} waits for each thread to finish its job and close its connection.
STOP_TIMEOUT = 5.0


class _ThreadConnections:
    """One thread's connection, opened on demand (L{engine.Connections})."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None

    def connect(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def disconnect(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
        try:
            conn.close()
        except Exception:
            pass

    def close(self) -> None:
        if self._conn is not None:
            self.disconnect(self._conn)


class Workers:
    """C{size} threads running jobs on their own connections; completions back on the reactor."""

    log = Logger()

    def __init__(self, reactor: Any, size: int, connect: Callable[[], Any], name: str = "db",
                 after_batch: Callable[[], None] = lambda: None) -> None:
        self.reactor = reactor
        #: Called in the reactor thread after each batch of completions (the proxy sends its replies then).
        self.after_batch = after_batch
        self._connect = connect
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._done: list[tuple[Callable[[Any], None], Any]] = []
        self._delivery_scheduled = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        self.started = False

    def start(self) -> None:
        self.started = True
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, done: Callable[[Any], None]) -> None:
        """Run C{fn(connections, *args)} in a thread; call C{done} with its result (or a L{Failure})
        in the reactor thread."""
        self._jobs.put((fn, args, done))

    def stop(self) -> None:
        """Let every thread finish its job, close its connection and end (bounded; call when idle)."""
        for _ in self._threads:
            self._jobs.put(None)
        if self.started:
            for thread in self._threads:
                thread.join(STOP_TIMEOUT)
        self.started = False

    # -- in the threads

    def _run(self) -> None:
        connections = _ThreadConnections(self._connect)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, args, done = job
                try:
                    result: Any = fn(connections, *args)
                except BaseException:
                    result = Failure()
                with self._lock:
                    self._done.append((done, result))
                    schedule = not self._delivery_scheduled
                    self._delivery_scheduled = True
                if schedule:
                    self.reactor.callFromThread(self._deliver)
        finally:
            connections.close()

    # -- in the reactor thread

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._delivery_scheduled = False
        for callback, result in done:
            try:
                callback(result)
            except Exception:
                self.log.failure("a database call's completion failed")
        self.after_batch()
