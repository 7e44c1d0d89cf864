"""The fleet simulator: simulated devices, injected faults and ground truth, run against the
real runtime (``twin sim``; see docs/simulator.md).

>>> from sim import SimConfig, load_faults, run_simulation, build_report
>>> result = run_simulation(SimConfig(assets=50, duration_s=600), load_faults("default"))
>>> report = build_report(result)
>>> report["quality"]["all_match"], report["control"]["commands"]["all_match"]
(True, True)
"""

from sim.config import SimConfig, SimConfigError, parse_duration, parse_mix, parse_speed
from sim.faults import DEFAULT_PRESET, FaultPlan, load_faults, parse_faults
from sim.fleetgen import generate_fleet
from sim.report import build_report, report_json
from sim.runner import SUPERVISION, Progress, SimResult, build_model, run_simulation
from sim.schedule import ScheduledDispatch, load_scenario, parse_dispatch

__all__ = [
    "DEFAULT_PRESET",
    "SUPERVISION",
    "FaultPlan",
    "Progress",
    "ScheduledDispatch",
    "SimConfig",
    "SimConfigError",
    "SimResult",
    "build_model",
    "build_report",
    "generate_fleet",
    "load_faults",
    "load_scenario",
    "parse_dispatch",
    "parse_duration",
    "parse_faults",
    "parse_mix",
    "parse_speed",
    "report_json",
    "run_simulation",
]
