# -*- test-case-name: tests.dbproxy.test_proxy -*-
"""
The proxy's connection pool: C{size} threads, each with a database connection of its own.

The database drivers block, so calls run off the reactor, one per thread, each thread on its
own connection (sqlite3 and psycopg connections are not shared between threads).  This is
what C{twisted.enterprise.adbapi.ConnectionPool} does too; it is done here differently because
the proxy's calls are small and many, and each hop between threads is a context switch that
costs more than a small query (measured under C{bench/run.py --db}: over half of the proxy's
CPU was the kernel switching threads and handing the GIL over).

The threads pull their work: a thread that finishes a call takes the next one itself
(C{take}, under L{Workers.lock}, which also guards the caller's queue), so a busy pool never
waits for the reactor thread between two calls.  The reactor thread only L{wake}s idle threads
when it queued calls.  A thread that finished a call answers it itself when it can
(L{Workers.finish}: the proxy sends the reply from that thread, so the reactor thread is not
woken at all).  The others reach the reactor thread in batches: the first of a batch schedules
one C{callFromThread}, and every completion that lands before it runs rides along;
L{Workers.after_batch} then runs once (the proxy sends their replies).

A job is C{fn(connections, *args)}: C{connections} is the thread's L{engine.Connections},
which opens its connection on first use and again after a dead one is dropped.
"""

from __future__ import annotations

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


#: One job as C{take} gives it: C{(token, fn, args)}; C{token} comes back with its result.
Job = tuple[Any, Callable[..., Any], tuple[Any, ...]]


class Workers:
    """C{size} threads running jobs on their own connections; completions back on the reactor.

    @param take: called in a worker thread, with L{lock} held: the next job, or C{None}.
    @param release: called in the worker thread, with L{lock} held, as soon as a job's C{fn}
        returned (its slot is free: the thread takes its next job right after).
    @param finish: called in the worker thread, no lock held, with each job's token and result
        (or a L{Failure}) after L{release}: C{True} if it answered the job there.
    @param completed: called in the reactor thread with the token and result of each job
        L{finish} did not answer, in batches.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        size: int,
        connect: Callable[[], Any],
        name: str = "db",
        after_batch: Callable[[], None] = lambda: None,
    ) -> None:
        self.reactor = reactor
        #: Called in the reactor thread after each batch of completions (the proxy sends its replies then).
        self.after_batch = after_batch
        self.take: Callable[[], Job | None] = lambda: None
        self.release: Callable[[Any], None] = lambda token: None
        self.completed: Callable[[Any, Any], None] = lambda token, result: None
        #: Called in the worker thread, no lock held, right after L{release}: C{True} if it answered
        #: the job there (L{completed} is then not called for it).
        self.finish: Callable[[Any, Any], bool] = lambda token, result: False
        #: Set (by the reactor thread) when the caller must hear of every job answered in a thread:
        #: L{after_batch} then runs after each (a stopping proxy waits until it is idle).
        self.watch_finished = False
        #: Guards the jobs' source (the caller's queue) as well as the pool's own state.
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self._connect = connect
        self._idle = 0
        self._finishing = 0
        self._stopping = False
        self._done: list[tuple[Any, Any]] = []
        self._delivery_scheduled = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        self.started = False

    def start(self) -> None:
        self.started = True
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> bool:
        """Completions not yet answered nor delivered to the reactor thread (read with L{lock} held)."""
        return bool(self._done) or self._finishing > 0

    def wake(self, count: int = 1) -> None:
        """New jobs may be there: wake up to C{count} idle threads (reactor thread)."""
        with self._cond:
            if self._idle:
                self._cond.notify(min(count, self._idle))

    def stop(self) -> None:
        """Let every thread finish its job, close its connection and end (bounded; call when idle)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.started:
            for thread in self._threads:
                thread.join(STOP_TIMEOUT)
        self.started = False

    # -- in the threads

    def _next(self) -> Job | None:
        """The next job, or C{None} to end the thread (lock held)."""
        while not self._stopping:
            try:
                job = self.take()
            except Exception:
                job = None
                self.reactor.callFromThread(self.log.failure, "taking a database call failed", Failure())
            if job is not None:
                return job
            self._idle += 1
            try:
                self._cond.wait()
            finally:
                self._idle -= 1
        return None

    def _run(self) -> None:
        connections = _ThreadConnections(self._connect)
        try:
            with self._cond:
                job = self._next()
            while job is not None:
                token, fn, args = job
                try:
                    result: Any = fn(connections, *args)
                except BaseException:
                    result = Failure()
                with self._cond:
                    try:
                        self.release(token)
                    except Exception:
                        pass  # the slot bookkeeping is the caller's; the completion still goes back
                    self._finishing += 1
                # Outside the lock: the reply is a syscall.
                try:
                    handled = self.finish(token, result)
                except Exception:
                    handled = False
                    self.reactor.callFromThread(self.log.failure, "answering a database call failed", Failure())
                with self._cond:
                    self._finishing -= 1
                    schedule = False
                    if not handled:
                        self._done.append((token, result))
                        schedule = not self._delivery_scheduled
                        self._delivery_scheduled = True
                    job = self._next() if not schedule else None
                if schedule:
                    # Outside the lock: waking the reactor is a syscall.
                    self.reactor.callFromThread(self._deliver)
                    with self._cond:
                        job = self._next()
                elif handled and self.watch_finished:
                    self.reactor.callFromThread(self.after_batch)
        finally:
            connections.close()

    # -- in the reactor thread

    def _deliver(self) -> None:
        with self.lock:
            done, self._done = self._done, []
            self._delivery_scheduled = False
        for token, result in done:
            try:
                self.completed(token, result)
            except Exception:
                self.log.failure("a database call's completion failed")
        self.after_batch()
