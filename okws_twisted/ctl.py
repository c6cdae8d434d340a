# -*- test-case-name: tests.test_e2e_operations -*-
"""
``okws-ctl``: operate a running okws site (OKWS's okmgr).

Talks to the launcher over its control socket (see
L{okws_twisted.launcher.controlsocket}); the socket's path comes from ``--socket`` or
from the site's ini file (``--config``, default ``site.ini``, key
``control_socket``).  Exit status: 0 on success, 1 when the launcher refused
or failed the command, 2 when it could not be reached.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

TIMEOUT = 120.0


def call(path: str, request: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to the launcher at C{path}; return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the launcher closed the connection without answering")
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ValueError("malformed answer")
    return answer


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def format_status(status: dict[str, Any]) -> str:
    """The readable table ``okws-ctl status`` prints."""
    rows = [("NAME", "PID", "STATE", "UPTIME", "RESTARTS", "CRASHES", "CONNS", "IN-FLIGHT", "SERVED")]
    for child in status.get("children", []):
        stats = child.get("stats") or {}
        conns = stats.get("connections", stats.get("open_connections", "-"))
        rows.append(
            (
                str(child.get("name")),
                str(child.get("pid") or "-"),
                str(child.get("state")) + (f" (+{len(child['retiring'])} retiring)" if child.get("retiring") else ""),
                _duration(child.get("uptime")),
                str(child.get("restarts", 0)),
                str(child.get("crashes", 0)),
                str(conns),
                str(stats.get("in_flight", "-")),
                str(stats.get("served", stats.get("handed_off", "-"))),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    head = f"okws launcher pid {status.get('pid')}, config {status.get('config')}"
    if status.get("stopping"):
        head += " (stopping)"
    for child in status.get("children", []):
        dropped = child.get("output_dropped") or {}
        if dropped.get("bytes"):
            lines.append(f"{child.get('name')}: {dropped['bytes']} bytes of output dropped ({dropped.get('lines', 0)} lines)")
        if child.get("refused"):
            lines.append(f"{child.get('name')}: {child['refused']} control messages refused")
    return head + "\n" + "\n".join(lines)


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    from okws_twisted.config import ConfigError, load

    try:
        return load(args.config).control_socket
    except ConfigError as e:
        raise SystemExit(f"okws-ctl: {e}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="okws-ctl", description="Operate a running okws site.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", default="site.ini", help="the site's ini file (default: site.ini)")
    where.add_argument("--socket", "-s", help="the launcher's control socket (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print the launcher's answer as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="services, instances, pids, state, uptime, restarts, load")
    relaunch = sub.add_parser("relaunch", help="gracefully relaunch a service's instances")
    relaunch.add_argument("service", nargs="?")
    relaunch.add_argument("--all", action="store_true", help="every service")
    sub.add_parser("reload", help="re-read the site file and apply the changes")
    sub.add_parser("rotate-logs", help="make the log daemon reopen its files")
    sub.add_parser("stop", help="stop the site gracefully")
    args = parser.parse_args(argv)

    request: dict[str, Any] = {"cmd": args.command}
    if args.command == "relaunch":
        if args.all == bool(args.service):
            parser.error("relaunch takes a service name or --all")
        request.update({"all": True} if args.all else {"service": args.service})
    path = _socket_path(args)
    try:
        answer = call(path, request)
    except (OSError, ConnectionError, ValueError) as e:
        print(f"okws-ctl: cannot reach the launcher at {path}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0 if answer.get("ok") else 1
    if not answer.get("ok"):
        print(f"okws-ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer.get("result")
    if args.command == "status":
        print(format_status(result))
    elif args.command == "relaunch":
        names = result.get("relaunched", [])
        print("relaunching " + ", ".join(names) if names else "nothing to relaunch (already relaunching?)")
    else:
        print(json.dumps(result, indent=2, sort_keys=True) if isinstance(result, (dict, list)) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
