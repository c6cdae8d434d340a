# -*- test-case-name: tests.dbproxy.test_proxy -*-
"""
The proxy's pool: threads that read the services' channels and run their calls on C{size} connections.

The database drivers block, so calls run off the reactor, each on a connection of its own
(sqlite3 and psycopg connections are used by one thread at a time).  This is what
C{twisted.enterprise.adbapi.ConnectionPool} does too; it is done here differently because the
proxy's calls are small and many, and each hop between threads costs more than a small query
(measured: under C{bench/run.py --db}, over half of the proxy's CPU was the kernel switching
threads and handing the GIL over; in a round trip, the reactor's wake-up, its turn and the hop
to a pool thread were over a third of the time).

So the threads do everything a call needs, and the reactor thread nothing:

    - A thread with nothing to run waits in C{epoll_wait} on the sources the proxy
      L{watch}es (each service's db channel).  Each source is armed one-shot: the one
      thread woken for it reads it (the proxy's C{on_ready}: one message, every check, then
      the calls queued), and arms it again when done, so a channel is read by one thread at
      a time, in order.
    - Then the same thread takes the next call itself (C{take}, under L{Workers.lock},
      which also guards the caller's queue), runs it and answers it (L{Workers.finish}):
      a lone call is read, run and answered by one thread, with no hand-over at all.
      Calls queued beyond the one it took wake one more idle thread each (an eventfd,
      armed one-shot like the sources).
    - There is one thread more than connections: at most C{size} calls run at once (the
      caller's C{take} keeps to its slots), so a thread is always free to read.  A service
      that floods its channel is read (and refused past its C{queue_max}) while the pool
      is busy, and the others' calls are read and queued in turn.  Connections are shared
      by the threads (at most C{size}, each opened on first use), not one per thread.

What the threads cannot answer themselves (a reply too large for one datagram or meeting a
full socket, a failed job) reaches the reactor thread in batches: the first of a batch
schedules one C{callFromThread}, and every completion that lands before it runs rides along;
L{Workers.after_batch} then runs once.

A job is C{fn(connections, *args)}: C{connections} is an L{engine.Connections} lending the job
a connection of the pool, opening one if none is idle, and replacing a dead one.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

#: How long L{Workers.stop} waits for each thread to finish its job and close its connection.
STOP_TIMEOUT = 5.0
_ONESHOT = select.EPOLLIN | select.EPOLLONESHOT


class _Lent:
    """The pool's connections as one job sees them (L{engine.Connections}): the one it borrowed."""

    __slots__ = ("_workers", "_conn")

    def __init__(self, workers: "Workers") -> None:
        self._workers = workers
        self._conn: Any = None

    def connect(self) -> Any:
        if self._conn is None:
            with self._workers.lock:
                idle = self._workers._idle_conns
                conn = idle.pop() if idle else None
            self._conn = conn if conn is not None else self._workers._connect()
        return self._conn

    def disconnect(self, conn: Any) -> None:
        if conn is self._conn:
            self._conn = None
        _close(conn)


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


#: One job as C{take} gives it: C{(token, fn, args)}; C{token} comes back with its result.
Job = tuple[Any, Callable[..., Any], tuple[Any, ...]]


class _Source:
    """One watched descriptor and what reads it."""

    __slots__ = ("fd", "on_ready")

    def __init__(self, fd: int, on_ready: Callable[[], None]) -> None:
        self.fd = fd
        self.on_ready = on_ready


class Workers:
    """C{size} connections, C{size + 1} threads reading the watched sources and running the jobs.

    @param take: called in a worker thread, with L{lock} held: the next job, or C{None}.
    @param more: called in a worker thread, with L{lock} held, right after C{take} gave a job:
        whether another job waits for a thread (one more idle thread is woken).
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
        self.size = size
        #: Called in the reactor thread after each batch of completions (the proxy sends its replies then).
        self.after_batch = after_batch
        self.take: Callable[[], Job | None] = lambda: None
        self.more: Callable[[], bool] = lambda: False
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
        self._connect = connect
        self._idle_conns: list[Any] = []
        self._poll = select.epoll()
        #: Written when a job waits for an idle thread (armed one-shot: wakes one).
        self._work = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll.register(self._work, _ONESHOT)
        self._work_source = _Source(self._work, lambda: None)
        #: Written once to stop: level-triggered, it wakes every thread.
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll.register(self._stop, select.EPOLLIN)
        self._sources: dict[int, _Source] = {}
        self._waiting = 0
        self._finishing = 0
        self._stopping = False
        self._done: list[tuple[Any, Any]] = []
        self._delivery_scheduled = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size + 1)]
        self.started = False

    def start(self) -> None:
        self.started = True
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> bool:
        """Completions not yet answered nor delivered to the reactor thread (read with L{lock} held)."""
        return bool(self._done) or self._finishing > 0

    def watch(self, fd: int, on_ready: Callable[[], None]) -> None:
        """Call C{on_ready} in a pool thread whenever C{fd} is readable, in one thread at a time."""
        with self.lock:
            self._sources[fd] = _Source(fd, on_ready)
            self._poll.register(fd, _ONESHOT)

    def unwatch(self, fd: int) -> None:
        """Stop watching C{fd} (before it is closed)."""
        with self.lock:
            if self._sources.pop(fd, None) is not None:
                try:
                    self._poll.unregister(fd)
                except OSError:
                    pass

    def stop(self) -> None:
        """Let every thread finish its job, close the connections and end (bounded; call when idle)."""
        with self.lock:
            if self._stopping:
                return
            self._stopping = True
            for fd in list(self._sources):
                self._poll.unregister(fd)
            self._sources.clear()
        os.eventfd_write(self._stop, 1)
        if self.started:
            for thread in self._threads:
                thread.join(STOP_TIMEOUT)
        self.started = False
        if not any(thread.is_alive() for thread in self._threads):
            self._poll.close()
            os.close(self._work)
            os.close(self._stop)
        with self.lock:
            conns, self._idle_conns = self._idle_conns, []
        for conn in conns:
            _close(conn)

    # -- in the threads

    def _next(self) -> Job | None:
        """The next job, if there is one (lock held)."""
        try:
            job = self.take()
            if job is not None and self._waiting and self.more():
                os.eventfd_write(self._work, 1)
        except Exception:
            job = None
            self.reactor.callFromThread(self.log.failure, "taking a database call failed", Failure())
        return job

    def _run(self) -> None:
        lent = _Lent(self)  # this thread's view of the pool's connections, for every job it runs
        poll = self._poll.poll
        work = self._work
        #: The source this thread was woken for (its descriptor, or the work eventfd's): armed again
        #: as soon as it is read, at this thread's next lock.
        rearm: _Source | None = None
        while True:
            with self.lock:
                if rearm is not None:
                    self._rearm(rearm)
                    rearm = None
                if self._stopping:
                    return
                job = self._next()
                if job is None:
                    self._waiting += 1
            if job is not None:
                self._run_job(job, lent)
                continue
            try:
                # One source per wake-up: the others' stay for the other idle threads.
                events = poll(-1, 1)
            except InterruptedError:
                events = []
            with self.lock:
                self._waiting -= 1
                if not events:
                    continue
                fd = events[0][0]
                source = self._sources.get(fd)
            if fd == work:
                try:
                    os.eventfd_read(work)
                except BlockingIOError:
                    pass
                rearm = self._work_source
            elif source is not None:
                try:
                    source.on_ready()
                except Exception:
                    self.reactor.callFromThread(self.log.failure, "reading a database channel failed", Failure())
                rearm = source

    def _rearm(self, source: _Source) -> None:
        """Arm C{source} again (lock held) if it is still watched: unwatched meanwhile, its
        descriptor may even be another's now."""
        if source is self._work_source or self._sources.get(source.fd) is source:
            try:
                self._poll.modify(source.fd, _ONESHOT)
            except OSError:
                pass

    def _run_job(self, job: Job, lent: _Lent) -> None:
        token, fn, args = job
        try:
            result: Any = fn(lent, *args)
        except BaseException:
            result = Failure()
        conn, lent._conn = lent._conn, None
        with self.lock:
            if conn is not None:
                self._idle_conns.append(conn)  # the job is over: its connection goes back to the pool
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
        with self.lock:
            self._finishing -= 1
            schedule = False
            if not handled:
                self._done.append((token, result))
                schedule = not self._delivery_scheduled
                self._delivery_scheduled = True
        if schedule:
            # Outside the lock: waking the reactor is a syscall.
            self.reactor.callFromThread(self._deliver)
        elif handled and self.watch_finished:
            self.reactor.callFromThread(self.after_batch)

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
