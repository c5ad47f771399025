"""`gradtui report` as tables: the head line says how the run went, not only how its process ended."""

from __future__ import annotations

from rich.console import Console
from ui_helpers import run_start, step_stats

from gradtui.model.events import Event, RunEnd
from gradtui.model.report import summarize
from gradtui.ui.report_view import print_report


def _head(events: list[Event]) -> str:
    console = Console(record=True, width=160, color_system=None)
    print_report(summarize(events), "r.gtr", console=console)
    return console.export_text().splitlines()[0]


def test_a_run_that_went_nan_is_not_reported_as_ok() -> None:
    """Before the fix the head read "status ok" for a run whose gradients went NaN at step 3."""
    nan = float("nan")
    events: list[Event] = [run_start(2)]
    events += [step_stats(s, [1.0, 1.0]) for s in range(3)]
    events += [step_stats(s, [nan, 1.0], nonfinite=[8, 0], loss=nan) for s in range(3, 6)]
    events.append(RunEnd(6, "ok"))
    head = _head(events)
    assert "ok" not in head.split()
    assert head == "test-run  steps 6  finished; went non-finite at step 3 (fc0)"


def test_a_healthy_run_and_an_unfinished_one() -> None:
    events: list[Event] = [run_start(2), *(step_stats(s, [1.0, 1.0]) for s in range(4))]
    assert _head([*events, RunEnd(4, "ok")]) == "test-run  steps 4  finished; no alarms"
    assert _head(events) == "test-run  steps 4  unfinished (no end on the record); no alarms"


def _gpt_names(n_layer: int) -> list[str]:
    """nanoGPT's layers (model.py's GPT: lm_head is tied to wte, so not a layer of its own)."""
    names = ["transformer.wte", "transformer.wpe"]
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        names += [f"{h}.ln_1", f"{h}.attn.c_attn", f"{h}.attn.c_proj", f"{h}.ln_2", f"{h}.mlp.c_fc", f"{h}.mlp.c_proj"]
    return [*names, "transformer.ln_f"]


def _table_rows(text: str, title: str) -> list[list[str]]:
    """The cells of a report table's body rows (box-drawn, as Rich prints it)."""
    lines = text.splitlines()
    start = [line.strip() for line in lines].index(title)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def test_layer_names_at_80_columns_stay_distinct_and_keep_their_end() -> None:
    """At 80 columns Rich cut the alerts' layer column from the right: two rows both read
    `transformer.h.1.attn.…`, so c_attn and c_proj could not be told apart."""
    names = _gpt_names(4)
    n = len(names)
    events: list[Event] = [run_start(n, names=names)]
    events += [step_stats(s, [1.0] * n) for s in range(40)]
    nan = float("nan")
    # Every layer of block 1 goes non-finite: an alert on each, with a long value column beside it.
    bad = [8 if ".h.1." in name else 0 for name in names]
    events += [step_stats(s, [nan if b else 1.0 for b in bad], nonfinite=bad) for s in range(40, 43)]
    console = Console(record=True, width=80, color_system=None)
    print_report(summarize(events), "r.gtr", console=console)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for title, column, want in (("Layers", 0, names), ("Alerts", 1, [x for x in names if ".h.1." in x])):
        shown = [row[column] for row in _table_rows(text, title)]
        distinct = list(dict.fromkeys(shown))
        assert len(distinct) == len(want), shown  # one distinct row name per layer
        for full, short in zip(want, distinct, strict=True):
            assert short == full or (short.startswith("…") and full.endswith(short[1:])), (full, short)
    alert_names = [row[1] for row in _table_rows(text, "Alerts")]
    assert any(x.endswith("h.1.attn.c_proj") for x in alert_names)
    assert any(x.endswith("h.1.attn.c_attn") for x in alert_names)


def test_names_that_share_their_end_keep_enough_of_their_start() -> None:
    from gradtui.ui.scale import short_names

    names = ["encoder.block.attn.c_proj", "decoder.block.attn.c_proj", "fc"]
    assert short_names(names, 14) == ["e….attn.c_proj", "d….attn.c_proj", "fc"]
    assert short_names(["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"], 16) == [
        "…h.1.attn.c_attn",
        "…h.1.attn.c_proj",
    ]
