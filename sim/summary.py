"""The final summary of a run: a few small tables, drawn with rich on a terminal and as plain
aligned text elsewhere (pipes, logs, CI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

Table = tuple[str, Sequence[str], list[list[str]]]     # title, headers, rows


def summary_tables(report: dict[str, Any]) -> tuple[str, list[Table]]:
    """A headline and the tables of the summary, as strings."""
    sc, tp, tot = report["scenario"], report["throughput"], report["totals"]
    headline = (f"{sc['assets']:,} assets ({sc['owners']} owners, {sc['regions']} regions, "
                f"{sc['sites']} sites), {_duration(tot['virtual_s'])} of virtual time in "
                f"{tp['wall_s']:.1f} s ({tp['virtual_per_wall']:,.0f}x), seed {sc['seed']}, "
                f"faults: {sc['faults_source']}")
    quality = report["quality"]
    q_rows = [[name, f"{c['injected']:,}", f"{c['counted']:,}",
               "ok" if c["injected"] == c["counted"] else "MISMATCH"]
              for name, c in quality.items() if name != "all_match"]
    od = report["offline_detection"]
    d_rows = [
        ["episodes injected", f"{od['episodes']:,}"],
        ["  longer than the offline timeout", f"{od['episodes_longer_than_timeout']:,} "
                                             f"(detected {od['detected_longer']:,})"],
        ["  shorter", f"{od['episodes_shorter']:,} (detected {od['detected_shorter']:,})"],
        ["offline detections", f"{od['detections']:,} ({od['false_detections']:,} false)"],
        ["precision / recall", f"{_ratio(od['precision'])} / {_ratio(od['recall'])}"],
        ["detection delay p50 / p99", f"{_secs(od['delay_s']['p50'])} / "
                                      f"{_secs(od['delay_s']['p99'])}"],
        ["never came up", f"{od['never_up']['injected']:,} "
                          f"({od['never_up']['runtime_unknown']:,} unknown to the runtime)"],
    ]
    r_rows = []
    for owner, r in report["rollups"].items():
        rt, tr = r["runtime"], r["truth"]
        r_rows.append([owner, f"{rt['reporting']:,}/{rt['expected']:,}",
                       f"{tr['reporting']:,}/{tr['expected']:,}",
                       f"{rt['offline']}/{rt['unknown']}/{rt['quarantined']}",
                       f"{rt['power_kw'] / 1000:,.2f}",
                       f"{tr['power_kw_of_reporting'] / 1000:,.2f}",
                       f"{tr['power_kw'] / 1000:,.2f}"])
    sup = report["supervision"]
    o_rows = [
        ["samples sent", f"{tot['samples_sent']:,} in {tot['batches']:,} batches"],
        ["throughput", f"{tp['samples_per_s']:,.0f} samples/s overall, "
                       f"{tp['ingest_samples_per_s']:,.0f}/s in ingest"],
        ["actor crashes", f"{sup['crashes_injected']:,} + {sup['crash_loops_injected']:,} loops "
                          f"injected; runtime: {sup['runtime_restarts']:,} restarts, "
                          f"{sup['runtime_quarantines']:,} quarantined"],
    ]
    return headline, [
        ("Data quality", ("class", "injected", "counted", ""), q_rows),
        ("Offline detection", ("", ""), d_rows),
        ("Roll-ups at the end", ("owner", "reporting", "truly up", "off/unk/quar",
                                 "MW runtime", "MW true (reporting)", "MW true (all)"), r_rows),
        ("Control", ("", ""), control_rows(report.get("control", {}))),
        ("Run", ("", ""), o_rows),
    ]


def control_rows(control: dict[str, Any]) -> list[list[str]]:
    """Dispatches, not-following detection and commands, a line or two each."""
    if not control:
        return []
    rows = []
    for dispatch_id, d in control["dispatches"].items():
        rows.append([f"dispatch {dispatch_id} on {d['path']}",
                     f"{d['target_kw']:,.1f} kW from {_duration(d['start_s'])} to "
                     f"{_duration(d['end_s'])}, {d['members']:,} batteries"])
        rows.append(["  RMS error of achieved", f"{_kw(d['rms_error_kw'])} "
                     f"({_pct(d['rms_error_pct'])}); once within 5 %: "
                     f"{_kw(d['rms_error_settled_kw'])}; true power: "
                     f"{_kw(d['true_rms_error_kw'])}"])
        rows.append(["  within 5 % of target after", _secs(d["time_to_5pct_s"])])
    nf = control["not_following"]
    causes = ", ".join(f"{n} {c.replace('_', ' ')}" for c, n in sorted(
        nf["false_by_cause"].items()))
    rows += [
        ["devices ignoring setpoints", f"{nf['ignoring_devices']:,} ({nf['longer_than_timeout']:,}"
                                       f" longer than the timeout, detected "
                                       f"{nf['detected_longer']:,})"],
        ["not-following detections", f"{nf['detections']:,} ({nf['false_detections']:,} false"
                                     + (f": {causes})" if causes else ")")],
        ["  precision / recall", f"{_ratio(nf['precision'])} / {_ratio(nf['recall'])}"],
    ]
    cmd = control["commands"]
    states = ", ".join(f"{n:,} {s}" for s, n in cmd["by_final_state"].items())
    rejected, unacked = cmd["rejected"], cmd["not_acknowledged"]
    rows += [
        ["commands by final state", states or "none"],
        ["  rejected: injected / counted", f"{rejected['injected']:,} / {rejected['counted']:,} "
         f"{'ok' if rejected['injected'] == rejected['counted'] else 'MISMATCH'}"],
        ["  lost / unreachable / acked late", f"{unacked['injected_lost']:,} / "
                                              f"{unacked['injected_unreachable']:,} / "
                                              f"{unacked['injected_acks_delayed']:,}: "
                                              f"{unacked['counted_never_delivered']:,} never "
                                              "delivered"],
    ]
    return rows


def write_plain(report: dict[str, Any], out: TextIO) -> None:
    headline, tables = summary_tables(report)
    out.write(headline + "\n")
    for title, headers, rows in tables:
        out.write(f"\n{title}\n")
        widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows,
                                                                        strict=False)]
        lines = [headers, *rows] if any(headers) else rows
        for row in lines:
            cells = [c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            out.write("  " + "  ".join(cells).rstrip() + "\n")


def write_rich(report: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(file=out)
    headline, tables = summary_tables(report)
    console.print(f"[bold]{headline}[/bold]")
    for title, headers, rows in tables:
        table = RichTable(title=title, show_header=any(headers), title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*[f"[red]{c}[/red]" if "MISMATCH" in c else c for c in row])
        console.print(table)


def _kw(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} kW"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g} s"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
