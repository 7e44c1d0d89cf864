"""The ``twin`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from twin._errors import TwinError


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

    check = commands.add_parser(
        "check", help="validate a fleet model file",
        description="Load a fleet model (JSON) and print its size, or the first error with "
                    "the field that caused it. Example: twin check fleet.json")
    check.add_argument("model", help="path of the model's JSON file")
    check.add_argument("--json", action="store_true", help="print the model back as JSON")

    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        if args.command == "demo":
            from twin._demo import run_demo

            run_demo(sys.stdout, assets=args.assets, silent=args.silent, minutes=args.minutes,
                     seed=args.seed)
        elif args.command == "check":
            from twin._model import FleetModel

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


def _log_to_stderr() -> None:
    """Structured logs go to stderr so that stdout stays the command's output."""
    import structlog

    structlog.configure(logger_factory=lambda *args: _StderrLogger())


if __name__ == "__main__":
    sys.exit(main())
