"""``twin serve``: the live view of a fleet, on the real clock.

    twin serve --fleet fleet.json [--store URL] [--host 127.0.0.1] [--port 8080]
               [--token-file PATH]          (or the TWIN_TOKEN environment variable)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from twin.core.model import FleetModel
from twin.fleet.facade import Fleet
from twin.web.auth import AuthConfigError, check_token
from twin.web.server import LiveServer

TOKEN_ENV = "TWIN_TOKEN"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser(
        "serve", help="serve the live view of a fleet (the tree, live, in a browser)",
        description="Run a fleet on the real clock and serve its live view: the page on /, "
                    "the websocket on /ws, REST under /api, /metrics, /healthz and /readyz. "
                    "Bound to anything but loopback, a bearer token is required. Example: "
                    "twin serve --fleet fleet.json --store sqlite:///fleet.db")
    serve.add_argument("--fleet", required=True, metavar="MODEL",
                       help="the fleet model (JSON, as for 'twin check')")
    serve.add_argument("--store", default=None, metavar="URL",
                       help="SQLAlchemy URL of the store; the fleet restores its state from it "
                            "(default: in memory)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; others require a token)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    serve.add_argument("--token-file", default=None, metavar="PATH",
                       help=f"file holding the bearer token (default: ${TOKEN_ENV}, if set)")
    serve.add_argument("--shards", type=int, default=1, metavar="N",
                       help="run the fleet's sites on N shard-host processes (default 1: "
                            "embedded, in this process)")
    serve.add_argument("--nodes", default=None, metavar="NAME,...",
                       help="place shards round-robin on these nodes ('local' is this "
                            "machine; others join with 'twin node --join HOST:ADMIN_PORT')")
    serve.add_argument("--admin-port", type=int, default=None,
                       help="admin port of the fleet's actor system, which nodes join "
                            "(default: a free port)")
    serve.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                       help="the one address the fleet's actor system (admin port and shard "
                            "processes) listens on; with --nodes on other machines, the "
                            "address they reach this one on (default 127.0.0.1; not the "
                            "HTTP --host)")
    serve.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="S",
                       help="a node silent this long is dead and its shards restart "
                            "elsewhere (default 5)")
    serve.set_defaults(run=run)


def read_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The configured token: the file's content, else ``$TWIN_TOKEN``, else none."""
    if token_file is not None:
        token = Path(token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise AuthConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


def run(args: argparse.Namespace) -> int:
    try:
        token = check_token(read_token(args.token_file), args.host)
    except (AuthConfigError, OSError) as error:
        print(f"twin serve: {error}", file=sys.stderr)
        return 2
    model = FleetModel.load(args.fleet)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else []
    processes = args.shards > 1 or bool(nodes)
    with Fleet(model, store=args.store, shards=args.shards, nodes=nodes,
               admin_port=args.admin_port, bind=args.bind,
               heartbeat_timeout_s=args.heartbeat_timeout,
               system="multiprocTCPBase" if processes else "simpleSystemBase") as fleet:
        try:
            server = LiveServer(fleet, host=args.host, port=args.port, token=token).start()
        except OSError as error:
            print(f"twin serve: cannot listen on {args.host}:{args.port}: {error}",
                  file=sys.stderr)
            return 2
        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            auth = "bearer token required" if token else "no token (loopback only)"
            print(f"twin serve: live view of {model.summary()} at {server.url} ({auth}); "
                  "Ctrl-C stops it", flush=True)
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.stop()
    return 0
