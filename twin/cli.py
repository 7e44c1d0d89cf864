"""The ``twin`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from twin.core.errors import TwinError

# modules with an ``add_parser(subcommands)`` that adds their own ``twin`` command
COMMAND_MODULES = ("twin.web.cli", "sim.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twin", description="Actor-based digital twins for fleets of energy assets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run a small embedded fleet and print its roll-up tree",
        description="Run a few hundred simulated assets (some silent, one crash-looping) in "
                    "virtual time and print the owner/region/site tree with expected and "
                    "reporting counts. Example: twin demo --assets 500 --seed 3")
    demo.add_argument("--assets", type=int, default=300, help="fleet size (default 300)")
    demo.add_argument("--silent", type=float, default=0.08,
                      help="fraction of assets that never report (default 0.08)")
    demo.add_argument("--minutes", type=float, default=3.0,
                      help="virtual minutes to run (default 3)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--store", default=None, metavar="URL",
                      help="SQLAlchemy URL of the store (default: a fresh SQLite file "
                           "demo.db in the data directory, $TWIN_DATA_DIR or "
                           "~/.local/share/twin); 'none' keeps everything in memory")

    check = commands.add_parser(
        "check", help="validate a fleet model file",
        description="Load a fleet model (JSON) and print its size, or the first error with "
                    "the field that caused it. Example: twin check fleet.json")
    check.add_argument("model", help="path of the model's JSON file")
    check.add_argument("--json", action="store_true", help="print the model back as JSON")

    node = commands.add_parser(
        "node", help="join a fleet's actor system from another machine",
        description="Start an actor system that joins a fleet's (the convention leader at "
                    "HOST:PORT, the fleet's admin_port) so the fleet can place shard hosts "
                    "on this machine by NAME. Runs until Ctrl-C or SIGTERM. Example: twin "
                    "node --join 10.0.0.5:1900 --name rack-2 --port 1901")
    node.add_argument("--join", required=True, metavar="HOST:PORT",
                      help="the fleet's actor system (its admin port)")
    node.add_argument("--name", required=True,
                      help="this node's name; Fleet(..., nodes=[...]) places shards by it")
    node.add_argument("--port", type=int, default=1900,
                      help="this node's own admin port (default 1900)")
    node.add_argument("--capability", action="append", default=[], metavar="NAME=VALUE",
                      help="an extra Thespian capability of this node (repeatable)")
    node.add_argument("--bind", default=None, metavar="ADDR",
                      help="the one address this node's actor system listens on (default: "
                           "this machine's address on the way to the --join address)")

    # the live view and the simulator register their own commands; they are found by name
    # so this entry point imports neither (the simulator sits above the edges it drives)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(commands)

    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        if hasattr(args, "run"):
            code: int = args.run(args)
            return code
        if args.command == "demo":
            from twin._demo import run_demo

            run_demo(sys.stdout, assets=args.assets, silent=args.silent, minutes=args.minutes,
                     seed=args.seed, store=_demo_store(args.store))
        elif args.command == "node":
            from twin.hosting.node import parse_capabilities, run_node

            return run_node(args.join, args.name, args.port,
                            parse_capabilities(args.capability), bind=args.bind)
        elif args.command == "check":
            from twin.core.model import FleetModel

            model = FleetModel.load(args.model)
            print(json.dumps(model.to_dict(), indent=2) if args.json else model.summary())
    except (TwinError, OSError) as error:
        print(f"twin {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


class _StderrLogger:
    """Writes each log line to whatever ``sys.stderr`` is at that moment."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def data_dir() -> Path:
    """Where the ``twin`` commands keep their files: $TWIN_DATA_DIR, else
    $XDG_DATA_HOME/twin, else ~/.local/share/twin."""
    if os.environ.get("TWIN_DATA_DIR"):
        return Path(os.environ["TWIN_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "twin"


def _demo_store(option: str | None) -> str | None:
    if option is not None:
        return None if option.lower() == "none" else option
    path = data_dir() / "demo.db"
    for stale in (path, path.with_name("demo.db-wal"), path.with_name("demo.db-shm")):
        stale.unlink(missing_ok=True)         # the demo starts from a clean slate each run
    return f"sqlite:///{path}"


def _log_to_stderr() -> None:
    """Structured logs go to stderr so that stdout stays the command's output."""
    import structlog

    structlog.configure(logger_factory=lambda *args: _StderrLogger())


if __name__ == "__main__":
    sys.exit(main())
