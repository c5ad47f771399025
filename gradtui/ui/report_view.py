"""`gradtui report` as Rich tables (the same content as --json)."""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradtui.ui.scale import (
    END_WORDS,
    FLAG_GLYPHS,
    FLAG_WORDS,
    GUARD_GLYPHS,
    GUARD_WORDS,
    PLAIN_ROLES,
    short_names,
)


def verdict_text(verdict: str) -> Text:
    """A layer's verdict as the viewer draws its flag ("▲ exploding" in the flag's role), or
    "healthy"."""
    if verdict in FLAG_GLYPHS:
        return Text(f"{FLAG_GLYPHS[verdict]} {FLAG_WORDS[verdict]}", style=PLAIN_ROLES[verdict])
    return Text(verdict, style=PLAIN_ROLES["ok"] if verdict == "healthy" else "")


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3e}"


def _lrs(lrs: list[float | None]) -> str:
    return "lr " + ", ".join("—" if x is None else f"{x:.4g}" for x in lrs)


def _clip(clip: dict[str, Any]) -> str:
    threshold = clip.get("threshold")
    if clip.get("mode") == "off":
        return "clip off"
    return f"clip {clip.get('mode')} {'—' if threshold is None else f'{threshold:.4g}'}"


def in_force(entry: dict[str, Any]) -> str:
    """What an intervention left in force (its `lrs`, `clip`, `paused`), in words."""
    parts = []
    if "lrs" in entry:
        parts.append("—" if entry["lrs"] is None else _lrs(entry["lrs"]))
    if "clip" in entry:
        parts.append("—" if entry["clip"] is None else _clip(entry["clip"]))
    if "paused" in entry:
        parts.append("—" if entry["paused"] is None else "paused" if entry["paused"] else "running")
    return "; ".join(parts)


MIN_NAME_CELLS = 12
"""The layer column never gets fewer cells than this, however narrow the terminal."""


def fit_layer_names(names: list[str], width: int, others: list[list[str]]) -> list[str]:
    """A table's layer names fitted (`short_names`) to the cells its other columns leave of
    `width`: each of `others` is a column's header and cells. A box table spends 3 cells a
    column (a rule and a space either side) and one for its right edge."""
    used = sum(max(cell_len(cell) for cell in column) for column in others)
    room = width - used - 3 * (len(others) + 1) - 1
    return short_names(names, max(MIN_NAME_CELLS, room))


def _run_table(summary: dict[str, Any]) -> Table | None:
    rows = []
    loss = summary.get("loss")
    if isinstance(loss, dict):
        rows.append(("loss", f"first {_num(loss.get('first'))}  last {_num(loss.get('last'))}  "
                     f"min {_num(loss.get('min'))}"))
    for key, label in (("global_norm", "‖g‖₂ before clipping"), ("stepped_norm", "‖g‖₂ stepped with")):
        spread = summary.get(key)
        if isinstance(spread, dict):
            rows.append((label, f"median {_num(spread.get('median'))}  max {_num(spread.get('max'))}"))
    if not rows:
        return None
    table = Table(title="Run", title_justify="left")
    table.add_column("series")
    table.add_column("summary")
    for row in rows:
        table.add_row(*row)
    return table


def _step_table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Table:
    """One row per step: the step, then `columns`."""
    table = Table(title=title, title_justify="left")
    table.add_column("step", justify="right")
    for column in columns:
        table.add_column(column)
    for step, *cells in rows:
        table.add_row(str(step), *cells)
    return table


def outcome(summary: dict[str, Any]) -> str:
    """How the run went, in words: how its process ended, then its worst trouble ("finished;
    went non-finite at step 37 (fc2)", "crashed; no alarms"). A process that finished did
    not make a run that went NaN a good one: `status` "ok" says only the first."""
    status = summary["status"]
    ended = END_WORDS.get(status, "unfinished (no end on the record)" if status == "unfinished" else status)
    nf = summary["first_nonfinite_step"]
    if nf is not None:
        where = f" ({', '.join(summary['first_nonfinite_layers'])})" if summary.get("first_nonfinite_layers") else ""
        return f"{ended}; went non-finite at step {nf}{where}"
    alarms = [a for a in summary["alerts"] if a.get("level", "warning") != "info"]
    if not alarms:
        return f"{ended}; no alarms"
    kinds = ", ".join(dict.fromkeys(FLAG_WORDS.get(a["kind"], a["kind"]) for a in alarms))
    return f"{ended}; {len(alarms)} alarm{'s' if len(alarms) > 1 else ''} from step {alarms[0]['step']} ({kinds})"


def print_report(summary: dict[str, Any], path: str, console: Console | None = None) -> None:
    """Print a report summary (see `gradtui.model.report.summarize`)."""
    console = console or Console()
    head = f"[b]{summary.get('run') or path}[/b]  steps {summary['steps']}  {outcome(summary)}"
    if summary.get("truncated_bytes"):
        head += f"  [yellow]record cut mid-frame ({summary['truncated_bytes']} bytes ignored)[/yellow]"
    console.print(head)
    run = _run_table(summary)
    if run is not None:
        console.print(run)
    layers = Table(title="Layers", title_justify="left")
    layers.add_column("layer", no_wrap=True)
    layers.add_column("verdict")
    layers.add_column("last ‖g‖₂", justify="right")
    verdicts = [verdict_text(row["verdict"]) for row in summary["layers"]]
    norms = [_num(row["last_grad_norm"]) for row in summary["layers"]]
    names = fit_layer_names(
        [row["name"] or "(root)" for row in summary["layers"]],
        console.width,
        [["verdict", *(v.plain for v in verdicts)], ["last ‖g‖₂", *norms]],
    )
    for name, verdict, norm in zip(names, verdicts, norms, strict=True):
        layers.add_row(name, verdict, norm)
    console.print(layers)
    if summary["alerts"]:
        alerts = Table(title="Alerts", title_justify="left")
        for col in ("step", "layer", "kind", "level", "value", "threshold"):
            alerts.add_column(
                col, justify="right" if col in ("step", "value", "threshold") else "left", no_wrap=col == "layer"
            )
        rows = [
            [str(a["step"]), FLAG_WORDS.get(a["kind"], a["kind"]), a.get("level", "warning"), _num(a["value"]),
             _num(a["threshold"])]
            for a in summary["alerts"]
        ]
        headers = ("step", "kind", "level", "value", "threshold")
        others = [[head, *(row[i] for row in rows)] for i, head in enumerate(headers)]
        names = fit_layer_names([a["layer"] or "(run)" for a in summary["alerts"]], console.width, others)
        for name, (step, kind, level, value, threshold) in zip(names, rows, strict=True):
            alerts.add_row(step, name, kind, level, value, threshold, style="dim" if level == "info" else None)
        console.print(alerts)
    else:
        console.print("No alerts.")
    steps = [
        ("interventions", "Interventions", ("change", "in force after"), lambda i: (i["message"], in_force(i))),
        (
            "guard",
            "Guard",
            ("action", "what it did"),
            lambda g: (f"{GUARD_GLYPHS.get(g['action'], '')} {GUARD_WORDS.get(g['action'], g['action'])}", g["detail"]),
        ),
        (
            "bad_batches",
            "Bad batches (mon.step(loss, batch=...))",
            ("why", "batch"),
            lambda b: (b["why"], str(b["batch"])),  # an int id stays an int in the summary
        ),
    ]
    for key, title, columns, cells in steps:
        if summary.get(key):
            console.print(_step_table(title, columns, [(e["step"], *cells(e)) for e in summary[key]]))
    for advice in summary.get("suggestions") or []:
        where = f" on {', '.join(advice['layers'][:6])}" if advice.get("layers") else ""
        what = FLAG_WORDS.get(advice["kind"], advice["kind"])
        console.print(f"[bold]What to change: {what}{where} (from step {advice['first_step']})[/bold]")
        console.print(f"  cause: {advice['cause']}", markup=False)
        console.print(f"  cure:  {advice['cure']}", markup=False)
    if summary.get("capture"):
        _print_capture(summary["capture"], console)
    if summary.get("error"):
        console.print(f"[red]The run ended with an error:[/red]\n{summary['error']}")


def _print_capture(capture: dict[str, Any], console: Console) -> None:
    """The report's capture section: its windows, where the run broke, and per layer what the
    captured steps saw (`gradtui.model.capture_summary.CaptureFold.section`)."""
    for w in capture["windows"]:
        end = f"to step {w['ended']}" if w["ended"] is not None else f"for {w['steps']} steps (cut short)"
        console.print(f"[bold]Capture[/bold] from step {w['start']} {end}: {w['reason']}", highlight=False)
    for origin in capture["origins"]:
        how = "re-run before the optimizer step" if origin["how"] == "rerun" else "captured"
        console.print(f"  [bold red]{origin['words']}[/bold red] ({how})", highlight=False)
    if not capture["layers"]:
        return
    table = Table(title=f"Captured steps ({len(capture['steps'])})", title_justify="left")
    for col in ("layer", "max rms(a)", "max |a|", "max kurt(a)", "non-finite a", "min ‖v‖₂", "last ‖v‖₂"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for row in capture["layers"]:
        table.add_row(
            row["name"] or "(root)",
            _num(row["act_rms_max"]),
            _num(row["act_max_max"]),
            _num(row["act_kurtosis_max"]),
            str(row["act_nonfinite"]),
            _num(row["opt_m2_min"]),
            _num(row["opt_m2_last"]),
        )
    console.print(table)
