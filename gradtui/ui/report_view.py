"""`gradtui report` as Rich tables (the same content as --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_VERDICT_STYLE = {
    "healthy": "green",
    "vanishing": "cyan",
    "exploding": "bold red",
    "nonfinite": "bold magenta",
    "dead": "dim",
}


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3e}"


def print_report(summary: dict[str, Any], path: str, console: Console | None = None) -> None:
    """Print a report summary (see `gradtui.model.report.summarize`)."""
    console = console or Console()
    nf = summary["first_nonfinite_step"]
    head = (
        f"[b]{summary.get('run') or path}[/b]  steps {summary['steps']}  status {summary['status']}  "
        f"first non-finite step {nf if nf is not None else '—'}"
    )
    if summary.get("first_nonfinite_layers"):
        head += f" ({', '.join(summary['first_nonfinite_layers'])})"
    if summary.get("truncated_bytes"):
        head += f"  [yellow]record cut mid-frame ({summary['truncated_bytes']} bytes ignored)[/yellow]"
    console.print(head)
    layers = Table(title="Layers", title_justify="left")
    layers.add_column("layer")
    layers.add_column("verdict")
    layers.add_column("last ‖g‖₂", justify="right")
    for row in summary["layers"]:
        style = _VERDICT_STYLE.get(row["verdict"], "")
        layers.add_row(row["name"] or "(root)", f"[{style}]{row['verdict']}[/]", _num(row["last_grad_norm"]))
    console.print(layers)
    if summary["alerts"]:
        alerts = Table(title="Alerts", title_justify="left")
        for col in ("step", "layer", "kind", "value", "threshold"):
            alerts.add_column(col, justify="right" if col in ("step", "value", "threshold") else "left")
        for a in summary["alerts"]:
            alerts.add_row(str(a["step"]), a["layer"] or "(run)", a["kind"], _num(a["value"]), _num(a["threshold"]))
        console.print(alerts)
    else:
        console.print("No alerts.")
    if summary.get("interventions"):
        inter = Table(title="Interventions", title_justify="left")
        inter.add_column("step", justify="right")
        inter.add_column("change")
        for i in summary["interventions"]:
            inter.add_row(str(i["step"]), i["message"])
        console.print(inter)
    if summary.get("error"):
        console.print(f"[red]The run ended with an error:[/red]\n{summary['error']}")
