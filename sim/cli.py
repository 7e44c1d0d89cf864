"""``twin sim``: the fleet simulator's command (registered by ``twin.cli``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sim.config import (
    DEFAULT_DEADBAND,
    SimConfig,
    SimConfigError,
    parse_duration,
    parse_kind_values,
    parse_mix,
    parse_speed,
)
from sim.faults import load_faults
from sim.report import build_report, report_json
from sim.runner import Progress, build_model, run_simulation
from sim.schedule import ScheduledDispatch, load_scenario, parse_dispatch
from sim.summary import write_plain, write_rich
from twin.fleetgen import DEFAULT_REPORT_EVERY

EXAMPLES = """examples:
  twin sim --assets 2000 --duration 2h --speed max --faults default
  twin sim --assets 500 --duration 30m --speed 60            # paced: 60x real time
  twin sim --fleet fleet.json --faults faults.json --report report.json
  twin sim --assets 10000 --mix turbine=0.2,battery=0.6,charger=0.2 --json > report.json
  twin sim --assets 300 --fleet-out fleet.json && twin check fleet.json
  twin sim --assets 1000 --duration 1h --dispatch acme:2000@10m-40m --dispatch borealis:-1MW@20m-50m
  twin sim --scenario scenario.json --dispatch none     # the file's dispatches only

The exit status is 0, or 1 when the runtime counted a data-quality class (or the commands
devices rejected) differently from what the simulator injected (a regression), or 2 for a
bad option or file.
The faults file format and the report are described in docs/simulator.md."""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "sim", help="simulate a fleet with faults against the runtime and check what it saw",
        description="Build a fleet (or load one), run simulated turbines, batteries and "
                    "chargers against the real runtime faster than real time, inject the "
                    "faults real fleets have, and report how well the runtime's view matched "
                    "the ground truth. The same seed gives the same report, apart from its "
                    "'throughput' section.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet = parser.add_argument_group("the fleet")
    source = fleet.add_mutually_exclusive_group()
    source.add_argument("--assets", type=int, default=2000, metavar="N",
                        help="generate a fleet of N assets (default 2000; e.g. --assets 10000)")
    source.add_argument("--fleet", metavar="FILE",
                        help="simulate this fleet model (JSON, as 'twin check' reads) instead "
                             "of generating one (e.g. --fleet fleet.json)")
    fleet.add_argument("--owners", type=int, default=3,
                       help="owners of a generated fleet (default 3)")
    fleet.add_argument("--regions", type=int, default=8,
                       help="regions, shared out among the owners (default 8)")
    fleet.add_argument("--sites", type=int, default=None,
                       help="sites (default: one per 10 assets; e.g. --sites 200)")
    fleet.add_argument("--mix", default="turbine=0.5,battery=0.3,charger=0.2",
                       help="shares of each kind (default turbine=0.5,battery=0.3,charger=0.2)")
    fleet.add_argument("--fleet-out", metavar="FILE",
                       help="write the fleet model as JSON (FleetModel.load reads it back)")
    run = parser.add_argument_group("the run")
    run.add_argument("--duration", default="2h",
                     help="virtual time to simulate: 90s, 15m, 2h, 1d (default 2h)")
    run.add_argument("--speed", default="max",
                     help="'max': virtual time, as fast as possible (default); a factor "
                          "paces the run in real time, e.g. --speed 60 = one hour per minute")
    run.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    run.add_argument("--faults", default="default", metavar="default|none|FILE",
                     help="fault preset or a faults JSON file (default: default)")
    run.add_argument("--step", default="10s",
                     help="simulation step: devices read sensors this often (default 10s; "
                          "1s to 20s)")
    run.add_argument("--batch", type=int, default=2000, metavar="N",
                     help="samples per wire-format batch (default 2000)")
    run.add_argument("--report-every", default=_kinds_text(DEFAULT_REPORT_EVERY),
                     metavar="KIND=S,...",
                     help="periodic report interval per kind in seconds, for a generated "
                          f"fleet (default {_kinds_text(DEFAULT_REPORT_EVERY)}); the "
                          "offline timeout is three times that")
    run.add_argument("--deadband", default=_kinds_text(DEFAULT_DEADBAND), metavar="KIND=F,...",
                     help="report on change beyond this fraction of the rating (default "
                          f"{_kinds_text(DEFAULT_DEADBAND)})")
    run.add_argument("--dispatch", action="append", metavar="PATH:KW@START-END",
                     help="run the batteries under PATH as one plant at KW (negative: "
                          "charge) from START to END into the run, e.g. --dispatch "
                          "acme:1500@10m-40m (repeatable); 'none': no dispatch. Default: "
                          "the first region with batteries at 40%% of their rating for the "
                          "middle eight tenths of the run")
    run.add_argument("--scenario", metavar="FILE", default=None,
                     help="a scenario JSON file with a dispatch schedule, e.g. "
                          "{\"dispatch\": [{\"path\": \"acme\", \"target_kw\": 1500, "
                          "\"start\": \"10m\", \"end\": \"40m\"}]}")
    run.add_argument("--store", metavar="URL", default=None,
                     help="run the fleet with a durable store (SQLAlchemy URL, e.g. "
                          "sqlite:///sim.db); default: in memory")
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="FILE", help="write the full report as JSON")
    out.add_argument("--json", action="store_true",
                     help="print the full report as JSON on stdout (no summary)")
    out.add_argument("--serve", nargs="?", const="127.0.0.1:8080", default=None,
                     metavar="[HOST:]PORT",
                     help="serve the live view of the running fleet (default "
                          "127.0.0.1:8080; bound elsewhere it needs $TWIN_TOKEN); best with "
                          "a paced run, e.g. --speed 60 --serve")
    out.add_argument("--stay", action="store_true",
                     help="with --serve: keep serving after the run, until Ctrl-C")
    out.add_argument("--verbose", action="store_true",
                     help="show the runtime's logs (supervisor restarts, quarantines)")
    parser.set_defaults(run=run_command)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The run's configuration; raises SimConfigError naming a bad option and its value."""
    report_every = {**DEFAULT_REPORT_EVERY,
                    **parse_kind_values(args.report_every, "--report-every")}
    deadband = {**DEFAULT_DEADBAND,
                **parse_kind_values(args.deadband, "--deadband", positive=False)}
    return SimConfig(assets=args.assets, fleet_path=args.fleet, owners=args.owners,
                     regions=args.regions, sites=args.sites, mix=parse_mix(args.mix),
                     duration_s=parse_duration(args.duration),
                     speed=parse_speed(args.speed), seed=args.seed,
                     step_s=parse_duration(args.step, "--step"), batch_size=args.batch,
                     report_every=report_every, deadband=deadband, store=args.store,
                     dispatches=dispatches_from_args(args.dispatch or [], args.scenario))


def dispatches_from_args(given: list[str], scenario: str | None
                         ) -> tuple[ScheduledDispatch, ...] | None:
    """The dispatch schedule: the scenario file's, then each --dispatch; ``None`` (the default
    schedule) when neither is given; ``--dispatch none`` alone runs none."""
    if "none" in given:
        if len(given) > 1:
            raise SimConfigError("--dispatch none: runs no dispatch, so it cannot be given "
                                 "with other --dispatch options")
        return load_scenario(scenario) if scenario else ()
    if not given and scenario is None:
        return None
    return (*(load_scenario(scenario) if scenario else ()), *map(parse_dispatch, given))


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    plan = load_faults(args.faults)
    model = build_model(config)
    if args.fleet_out:
        Path(args.fleet_out).write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    live = _LiveView(args.serve, args.stay) if args.serve else None
    with _runtime_logs(args.verbose), _progress(sys.stderr) as progress:
        result = run_simulation(config, plan, model=model, progress=progress,
                                on_fleet=live.start if live else None,
                                before_close=live.finish if live else None)
    report = build_report(result)
    if args.report:
        Path(args.report).write_text(report_json(report))
    if args.json:
        sys.stdout.write(report_json(report))
    elif sys.stdout.isatty():
        write_rich(report, sys.stdout)
    else:
        write_plain(report, sys.stdout)
    matched = report["quality"]["all_match"] and report["control"].get(
        "commands", {}).get("all_match", True)
    return 0 if matched else 1


class _LiveView:
    """``--serve``: the live view (twin.web) attached to the simulated fleet while it runs."""

    def __init__(self, address: str, stay: bool) -> None:
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise SimConfigError(f"--serve takes [HOST:]PORT, got {address!r}")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.stay = stay
        self.server: Any = None

    def start(self, fleet: Any) -> None:
        from twin.web.auth import AuthConfigError
        from twin.web.cli import read_token
        from twin.web.server import LiveServer

        try:
            self.server = LiveServer(fleet, host=self.host, port=self.port,
                                     token=read_token(None)).start()
        except AuthConfigError as error:
            raise SimConfigError(f"--serve {self.host}:{self.port}: {error}") from None
        print(f"twin sim: live view at {self.server.url}", file=sys.stderr, flush=True)

    def finish(self, fleet: Any) -> None:
        try:
            if self.stay:
                print(f"twin sim: the run is over; the live view stays at {self.server.url} "
                      "until Ctrl-C", file=sys.stderr, flush=True)
                stops = {signal.SIGINT, signal.SIGTERM}
                signal.pthread_sigmask(signal.SIG_BLOCK, stops)
                signal.sigwait(stops)
        finally:
            self.server.stop()


@contextlib.contextmanager
def _runtime_logs(verbose: bool) -> Iterator[None]:
    """Keep the runtime's per-crash log lines off the terminal unless asked for (injected
    crashes are counted in the report instead); restored afterwards."""
    import structlog

    if verbose:
        yield
        return
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**saved)


@contextlib.contextmanager
def _progress(stream: Any) -> Iterator[Callable[[Progress], None]]:
    """A progress bar on a terminal; a plain line per tenth of the run elsewhere."""
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        with Bar(TextColumn("twin sim"), BarColumn(), MofNCompleteColumn(),
                 TextColumn("steps, {task.fields[samples]:,} samples"), TimeElapsedColumn(),
                 console=Console(file=stream), transient=True) as bar:
            task = bar.add_task("sim", total=None, samples=0)

            def update_bar(p: Progress) -> None:
                bar.update(task, completed=p.step, total=p.steps, samples=p.samples)

            yield update_bar
        return
    shown = [0]

    def print_line(p: Progress) -> None:
        tenth = p.step * 10 // p.steps
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"twin sim: {tenth * 10}% ({p.virtual_s:g} s of virtual time, "
                  f"{p.samples:,} samples, {p.wall_s:.1f} s)", file=stream, flush=True)

    yield print_line


def _kinds_text(values: Any) -> str:
    return ",".join(f"{kind}={value:g}" for kind, value in values.items())
