"""
The benchmark's peer: one plain twisted.web process serving the same resource as okws.

    python bench/peer_twistedweb.py [--port 0] [--resource services.plain:Hello | --static DIR]
                                    [--access-log PATH] [--backlog 2048]
                                    [--tls-key KEY.pem --tls-cert CERT.pem]

It builds ``twisted.web.server.Site(Hello())`` (with ``--static DIR``: ``static.File(DIR)`` at
``/static``, for ``bench/run.py --static``) and listens on 127.0.0.1 only.
With ``--port 0`` (the default) the kernel picks a free port; the process
prints ``listening on 127.0.0.1:PORT`` on stdout once it accepts connections,
which is what ``bench/run.py`` waits for.

By default it writes no access log (okws's service processes write none either
yet).  ``--access-log PATH`` makes it write twisted.web's default combined
access log to PATH, line-buffered, exactly as ``twistd web --logfile PATH``
does (``Site(root, logPath=PATH)``), for a later comparison of logging costs.

Note that a stock ``Site`` without ``logPath`` is not log-free: it formats a
combined-log line for every request and sends it to twisted's global legacy log
(buffered in memory when nothing observes it).  "No access log" here therefore
overrides ``Site.log`` with a no-op, as okws's ``ServiceSite`` does.

With ``--tls-key`` and ``--tls-cert`` it terminates TLS itself
(``reactor.listenSSL`` with Twisted's default server options:
``CertificateOptions``, TLS 1.2 or newer) and prints
``listening on 127.0.0.1:PORT`` all the same.

It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(spec: str) -> type:
    """C{module:Class} -> the class."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--resource must look like module:Class, got {spec!r}")
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--resource", default="services.plain:Hello", help="module:Class of the resource")
    parser.add_argument("--access-log", metavar="PATH", help="write twisted.web's combined access log here")
    parser.add_argument(
        "--backlog", type=int, default=2048, help="listen backlog (default 2048, okws's default; twisted's is 50)"
    )
    parser.add_argument("--static", metavar="DIR", help="serve DIR at /static with twisted.web's static.File instead of --resource")
    parser.add_argument("--tls-key", metavar="PATH", help="terminate TLS with this PEM key (needs --tls-cert)")
    parser.add_argument("--tls-cert", metavar="PATH", help="the PEM certificate for --tls-key")
    args = parser.parse_args(argv)
    if bool(args.tls_key) != bool(args.tls_cert):
        parser.error("--tls-key and --tls-cert go together")

    if REPO not in sys.path:
        # Last, so that a PYTHONPATH naming another source tree (bench/run.py --source) wins.
        sys.path.append(REPO)

    from twisted.internet import reactor
    from twisted.web import server

    if args.static:
        from twisted.web.resource import Resource
        from twisted.web.static import File

        root = Resource()
        root.putChild(b"static", File(os.path.abspath(args.static)))
    else:
        root = load(args.resource)()

    if args.access_log:
        site = server.Site(root, logPath=args.access_log)
    else:
        site = server.Site(root)
        site.log = lambda request: None  # type: ignore[method-assign]

    if args.tls_key:
        from twisted.internet import ssl

        with open(args.tls_key, "rb") as f:
            key = f.read()
        with open(args.tls_cert, "rb") as f:
            cert = f.read()
        options = ssl.PrivateCertificate.loadPEM(key + cert).options()
        port = reactor.listenSSL(args.port, site, options, backlog=args.backlog, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(args.port, site, backlog=args.backlog, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port.getHost().port} pid {os.getpid()}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
