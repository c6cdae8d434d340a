"""
What a hop between two processes costs on this machine: a socket pair round trip across CPUs.

``isolation = request`` puts the dispatcher between the client and the service instance, so a
relayed keep-alive request crosses two more process boundaries than in ``connection`` mode (the
dispatcher wakes the instance, the instance wakes the dispatcher).  When the process on the other
side is asleep and its CPU idle, the hop costs a wake-up of that CPU.  On bare metal that is a
few microseconds; in a virtual machine whose idle CPUs halt at once (guest halt polling off, as on
the 2-CPU machines these benches run on: kernel command line ``haltpoll.guest_halt_poll_ns=0``)
it costs an exit to the hypervisor and back, and a round trip took 37-51 us against 21-24 us with
the kernel's default of 200 us of polling (session 8, bench/README.md).  bench/run.py prints this
figure in its header, beside the machine's idle settings, so that an isolation result can be
read against the machine it came from.

Two processes, each pinned to its own CPU (when two are allowed), bounce one byte over a Unix
socket pair ``--n`` times: once with blocking reads (each side sleeps between messages, as the
servers do), once with each side spinning on non-blocking reads (no sleep, no wake-up: the floor
the system calls alone set).  The figure is wall time per round trip.

    .venv/bin/python bench/wakeup_rtt.py [--n 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def _serve(sock: socket.socket, spin: bool) -> None:
    """The far side: echo each byte until the near side closes."""
    while True:
        if spin:
            try:
                data = sock.recv(64)
            except BlockingIOError:
                continue
        else:
            data = sock.recv(64)
        if not data:
            return
        sock.send(data)


def round_trip_us(n: int, spin: bool) -> float:
    """Microseconds of wall time per round trip between two processes on different CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    near, far = socket.socketpair()
    if spin:
        near.setblocking(False)
        far.setblocking(False)
    pid = os.fork()
    if pid == 0:  # the far side
        try:
            near.close()
            if len(cpus) > 1:
                os.sched_setaffinity(0, {cpus[1]})
            _serve(far, spin)
        finally:
            os._exit(0)
    far.close()
    saved = os.sched_getaffinity(0)
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[0]})
        deadline = time.monotonic() + 30  # a hung far side fails the measure, not the caller
        for _ in range(50):  # warm up
            _bounce(near, spin, deadline)
        t0 = time.perf_counter()
        for _ in range(n):
            _bounce(near, spin, deadline)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        os.sched_setaffinity(0, saved)
        near.close()
        os.waitpid(pid, 0)


def _bounce(sock: socket.socket, spin: bool, deadline: float) -> None:
    sock.send(b"x")
    if not spin:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        if not sock.recv(64):
            raise SystemExit("the far side closed")
        return
    while True:
        try:
            if sock.recv(64):
                return
            raise SystemExit("the far side closed")
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise SystemExit("no answer from the far side within 30 s") from None


def idle_settings() -> dict[str, str]:
    """The CPU idle driver and governor, and guest halt polling where the kernel has it."""
    found = {}
    for key, path in (
        ("cpuidle_driver", "/sys/devices/system/cpu/cpuidle/current_driver"),
        ("cpuidle_governor", "/sys/devices/system/cpu/cpuidle/current_governor_ro"),
        ("guest_halt_poll_ns", "/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
    ):
        try:
            with open(path) as f:
                found[key] = f.read().strip()
        except OSError:
            pass
    return found


def measure(n: int) -> dict[str, object]:
    """Both round trips, the CPUs used, and the idle settings, as bench/run.py records them."""
    cpus = sorted(os.sched_getaffinity(0))
    return {
        "blocking_us": round(round_trip_us(n, spin=False), 1),
        # Two spinning processes on one CPU would only measure its time slices.
        "spinning_us": round(round_trip_us(n, spin=True), 1) if len(cpus) > 1 else None,
        "round_trips": n,
        "cpus": cpus[:2],
        **idle_settings(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--n", type=int, default=3000, help="round trips per measure (default 3000)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = parser.parse_args(argv)
    if a.n < 1:
        parser.error("--n must be at least 1")
    result = measure(a.n)
    if a.json:
        print(json.dumps(result))
    else:
        where = f"CPUs {result['cpus'][0]} and {result['cpus'][1]}" if len(result["cpus"]) > 1 else "one CPU"
        print(
            f"cross-CPU wake-up round trip: {describe_round_trip(result)} "
            f"({a.n} round trips, {where}; {describe_idle(result)})"
        )
    return 0


def describe_round_trip(result: dict[str, object]) -> str:
    """C{blocking 44.1 us, spinning 6.2 us} (without the second on one CPU)."""
    text = f"blocking {result['blocking_us']} us"
    if result.get("spinning_us") is not None:
        text += f", spinning {result['spinning_us']} us"
    return text


def describe_idle(result: dict[str, object]) -> str:
    """The idle settings as one phrase, e.g. C{cpuidle haltpoll/haltpoll, guest halt polling 0 ns}."""
    parts = []
    if "cpuidle_driver" in result:
        parts.append(f"cpuidle {result['cpuidle_driver']}/{result.get('cpuidle_governor', '?')}")
    if "guest_halt_poll_ns" in result:
        parts.append(f"guest halt polling {result['guest_halt_poll_ns']} ns")
    return ", ".join(parts) or "idle settings not readable"


if __name__ == "__main__":
    sys.exit(main())
