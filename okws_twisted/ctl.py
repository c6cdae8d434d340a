# -*- test-case-name: tests.test_e2e_operations -*-
"""
``okws-ctl``: operate a running okws site (OKWS's okmgr).

Talks to the launcher over its control socket (see
L{okws_twisted.launcher.controlsocket}); the socket's path comes from ``--socket`` or
from the site's ini file (``--config``, default ``site.ini``, key
``control_socket``).  Exit status: 0 on success, 1 when the launcher refused
or failed the command, 2 when it could not be reached (no site file, no
socket, nobody listening).  ``okws-ctl check`` talks to no launcher: it runs the
start-up checks on a site file and starts nothing (exit 0 or 1).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

TIMEOUT = 120.0
DEFAULT_CONFIG = "site.ini"


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


def format_reload(result: dict[str, Any]) -> str:
    """One line saying what a reload changed: C{reloaded site.ini: added form; removed delay}."""
    parts = []
    for key, verb in (("added", "added"), ("removed", "removed"), ("changed", "changed")):
        names = result.get(key) or []
        if names:
            parts.append(f"{verb} {', '.join(names)}")
    if result.get("site_changed"):
        parts.append("[okws] changed")
    if result.get("relaunched"):
        parts.append(f"relaunched {', '.join(result['relaunched'])}")
    where = f" {result['file']}" if isinstance(result.get("file"), str) else ""
    return f"reloaded{where}: " + ("; ".join(parts) if parts else "nothing changed")


class Unreachable(Exception):
    """The launcher cannot be found or reached (exit status 2)."""


def _socket_path(args: argparse.Namespace) -> str:
    socket_path = getattr(args, "socket", None)
    if socket_path:
        return socket_path
    from okws_twisted.config import ConfigError, load

    config = getattr(args, "config", DEFAULT_CONFIG)
    try:
        return load(config).control_socket
    except ConfigError as e:
        # A site file with a mistake in it: the running launcher may still be
        # reached (to refuse a reload with that very mistake, say).
        found = _lenient_socket_path(config)
        if found is None:
            raise Unreachable(str(e)) from None
        return found


def _lenient_socket_path(config: str) -> str | None:
    """The control socket of a site file that does not pass the checks, if one is there."""
    import configparser
    import os
    import stat

    from okws_twisted.config.reading import _UNIX_PATH_MAX, short_control_socket

    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       inline_comment_prefixes=("#", ";"), default_section="\n")
    try:
        parser.read(config, encoding="utf-8")
        written = parser.get("okws", "control_socket", fallback="okws.ctl").strip() or "okws.ctl"
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    base = os.path.dirname(os.path.abspath(config))
    path = os.path.normpath(os.path.join(base, written))
    if len(path.encode()) > _UNIX_PATH_MAX and written == "okws.ctl":
        path = short_control_socket(base)
    try:
        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def _check(args: argparse.Namespace) -> int:
    """C{okws-ctl check}: the start-up checks, starting nothing (like C{nginx -t})."""
    from okws_twisted.launcher.resourcecheck import check_site

    config = getattr(args, "config", DEFAULT_CONFIG)
    site, problems = check_site(config)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    assert site is not None
    processes = sum(s.instances for s in site.services)
    print(f"{config}: ok ({len(site.services)} services, {processes} processes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    # The options may come before the command or after it (okws-ctl status --json).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=f"the site's ini file (default: {DEFAULT_CONFIG})")
    common.add_argument("--socket", "-s", default=argparse.SUPPRESS, help="the launcher's control socket (default: from the config)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the launcher's answer as JSON")
    parser = argparse.ArgumentParser(prog="okws-ctl", description="Operate a running okws site.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="services, instances, pids, state, uptime, restarts, load")
    relaunch = sub.add_parser("relaunch", parents=[common], help="gracefully relaunch a service's instances")
    relaunch.add_argument("service", nargs="?")
    relaunch.add_argument("--all", action="store_true", help="every service")
    sub.add_parser("reload", parents=[common], help="re-read the site file and apply the changes")
    sub.add_parser("rotate-logs", parents=[common], help="make the log daemon reopen its files")
    sub.add_parser("stop", parents=[common], help="stop the site gracefully")
    sub.add_parser("check", parents=[common], help="check the site file and every service's resource, starting nothing")
    args = parser.parse_args(argv)
    if getattr(args, "config", None) and getattr(args, "socket", None):
        parser.error("give --config or --socket, not both")
    as_json = getattr(args, "json", False)

    if args.command == "check":
        return _check(args)
    request: dict[str, Any] = {"cmd": args.command}
    if args.command == "relaunch":
        if args.all == bool(args.service):
            parser.error("relaunch takes a service name or --all")
        request.update({"all": True} if args.all else {"service": args.service})
    try:
        path = _socket_path(args)
    except Unreachable as e:
        print(f"okws-ctl: {e}", file=sys.stderr)
        return 2
    try:
        answer = call(path, request)
    except (OSError, ConnectionError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else e
        print(f"okws-ctl: cannot reach the launcher at {path}: {why}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return 0 if answer.get("ok") else 1
    if not answer.get("ok"):
        print(f"okws-ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer.get("result")
    if not isinstance(result, dict):
        result = {}
    if args.command == "status":
        print(format_status(result))
    elif args.command == "relaunch":
        names = result.get("relaunched", [])
        print("relaunching " + ", ".join(names) if names else "nothing to relaunch (already relaunching?)")
    elif args.command == "reload":
        print(format_reload(result))
    elif args.command == "rotate-logs":
        print("log files reopened" if result.get("reopened") else "the log daemon is being relaunched; it opens the files afresh")
    elif args.command == "stop":
        print("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
