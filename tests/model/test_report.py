"""The report's summaries: loss, norms, interventions with what they left in force."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradtui.model.events import (
    Alert,
    BadBatch,
    CommandResult,
    Event,
    GuardAction,
    LayerInfo,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
)
from gradtui.model.report import Summary, alert_entry, summarize

NAN, INF = math.nan, math.inf


def _start(lrs: tuple[float, ...] = (0.1,)) -> RunStart:
    return RunStart(
        run="r", pid=1, started=0.0, layers=(LayerInfo("a", "Linear", 4), LayerInfo("b", "Linear", 4)), lrs=lrs,
        clip_mode="off", clip_threshold=1.0, every=1, detail_every=50, device="cpu",
    )


def _step(step: int, *, loss: float = 1.0, gnorm: float = 1.0, stepped: float = NAN,
          lrs: tuple[float, ...] = (0.1,), clip: tuple[str, float] = ("off", 1.0), paused: bool = False) -> StepStats:
    return StepStats(
        step=step, time=float(step), loss=loss, lrs=lrs, grad_norm=np.array([1.0, 2.0]),
        has_grad=np.array([True, True]), nonfinite=np.zeros(2, np.int64), global_norm=gnorm, clipped_norm=gnorm,
        clip_factor=1.0, clip_mode=clip[0], clip_threshold=clip[1], steps_per_sec=1.0, paused=paused,
        stepped_norm=stepped,
    )


def _ack(step: int, kind: str, message: str, ok: bool = True) -> CommandResult:
    return CommandResult(f"id{step}{kind}", kind, ok, step, message)


CONTRACT = {"steps", "first_nonfinite_step", "layers", "alerts", "interventions", "loss", "global_norm"}


def test_every_contract_key_is_there_and_the_object_is_strict_json() -> None:
    events: list[Event] = [_start(), _step(0, loss=NAN, gnorm=INF), _step(1, loss=2.0), RunEnd(2, "ok")]
    out = summarize(events)
    assert CONTRACT <= set(out)
    assert {"run", "sampled_steps", "status", "first_nonfinite_layers", "stepped_norm", "error"} <= set(out)
    json.dumps(out, allow_nan=False)  # no NaN or Infinity anywhere


def test_loss_summary_is_over_finite_losses() -> None:
    losses = [NAN, 5.0, INF, 2.0, 3.0, -INF, 4.0, NAN]
    events: list[Event] = [_start(), *(_step(i, loss=x) for i, x in enumerate(losses))]
    finite = [x for x in losses if math.isfinite(x)]
    assert summarize(events)["loss"] == {"first": finite[0], "last": finite[-1], "min": min(finite)}


def test_no_finite_loss_gives_nulls() -> None:
    events: list[Event] = [_start(), _step(0, loss=NAN), _step(1, loss=INF)]
    assert summarize(events)["loss"] == {"first": None, "last": None, "min": None}
    assert summarize([_start()])["loss"] == {"first": None, "last": None, "min": None}


def test_norm_summaries_are_median_and_max_of_finite_values() -> None:
    norms = [3.0, INF, 1.0, NAN, 10.0, 2.0]
    stepped = [NAN, 0.5, 0.25, 1.0, NAN, NAN]
    pairs = enumerate(zip(norms, stepped, strict=True))
    events: list[Event] = [_start(), *(_step(i, gnorm=g, stepped=s) for i, (g, s) in pairs)]
    out = summarize(events)
    assert out["global_norm"] == {"median": 2.5, "max": 10.0}  # median of 3, 1, 10, 2
    assert out["stepped_norm"] == {"median": 0.5, "max": 1.0}


def test_unknown_stepped_norms_give_nulls() -> None:
    out = summarize([_start(), _step(0), _step(1)])
    assert out["stepped_norm"] == {"median": None, "max": None}
    assert out["global_norm"] == {"median": 1.0, "max": 1.0}


def test_interventions_carry_what_was_in_force_after_them() -> None:
    events: list[Event] = [
        _start(lrs=(0.1, 0.2)),
        _step(0, lrs=(0.1, 0.2)),
        _ack(1, "set_lr", "lr 0.1 -> 0.05, 0.2 -> 0.1 (all groups)"),
        _ack(1, "set_lr", "unknown param group 7 (the optimizer has 2)", ok=False),
        _step(1, lrs=(0.05, 0.1)),
        _ack(2, "set_clip", "clipping off -> norm 0.5"),
        _step(2, lrs=(0.05, 0.1), clip=("norm", 0.5)),
        _ack(3, "set_paused", "paused"),
        _step(3, lrs=(0.05, 0.1), clip=("norm", 0.5), paused=True),
        # applied while paused at step 3, after step 3 was recorded: what holds is step 4's
        _ack(3, "set_lr", "lr 0.05 -> 0.01 (group 0)"),
        _ack(3, "set_paused", "resumed"),
        _step(4, lrs=(0.01, 0.1), clip=("norm", 0.5)),
        _ack(5, "release", "released: lr ...; clipping norm 0.5 -> off (as started)"),
        _step(5, lrs=(0.1, 0.2)),
        _ack(6, "future_kind", "did something"),
        _ack(6, "set_clip", "clipping off -> value 1"),  # no step recorded after it
        RunEnd(6, "ok"),
    ]
    got = summarize(events)["interventions"]
    assert got == [
        {"step": 1, "kind": "set_lr", "message": "lr 0.1 -> 0.05, 0.2 -> 0.1 (all groups)", "lrs": [0.05, 0.1]},
        {"step": 2, "kind": "set_clip", "message": "clipping off -> norm 0.5",
         "clip": {"mode": "norm", "threshold": 0.5}},
        {"step": 3, "kind": "set_paused", "message": "paused", "paused": True},
        {"step": 3, "kind": "set_lr", "message": "lr 0.05 -> 0.01 (group 0)", "lrs": [0.01, 0.1]},
        {"step": 3, "kind": "set_paused", "message": "resumed", "paused": False},
        {"step": 5, "kind": "release", "message": "released: lr ...; clipping norm 0.5 -> off (as started)",
         "lrs": [0.1, 0.2], "clip": {"mode": "off", "threshold": 1.0}},
        {"step": 6, "kind": "future_kind", "message": "did something"},
        {"step": 6, "kind": "set_clip", "message": "clipping off -> value 1", "clip": None},
    ]


def test_a_step_recorded_late_is_not_taken_for_the_state_after_a_command() -> None:
    # on CUDA, step 1's statistics can be published after the command applied at step 2
    events: list[Event] = [
        _start(), _step(0), _ack(2, "set_lr", "lr 0.1 -> 1 (all groups)"), _step(1), _step(2, lrs=(1.0,)),
    ]
    assert summarize(events)["interventions"][0]["lrs"] == [1.0]


def test_with_sampling_every_few_steps_the_next_sampled_step_tells() -> None:
    events: list[Event] = [_start(), _step(0), _ack(3, "set_lr", "lr 0.1 -> 0.2 (all groups)"), _step(2),
                           _step(4, lrs=(0.2,))]
    assert summarize(events)["interventions"][0]["lrs"] == [0.2]


def test_a_paused_acknowledgement_in_other_words_falls_back_to_the_step() -> None:
    events: list[Event] = [_start(), _ack(0, "set_paused", "pause (reworded)"), _step(0, paused=True)]
    assert summarize(events)["interventions"][0]["paused"] is True


def test_recorded_and_recomputed_alerts() -> None:
    raised = Alert(step=1, layer="a", kind="dead", active=True, value=0.0, threshold=0.0)
    events: list[Event] = [
        _start(), _step(0), raised, Alert(step=2, layer="a", kind="dead", active=False, value=1.0, threshold=NAN),
        _step(1),
    ]
    assert summarize(events, recompute=False)["alerts"] == [alert_entry(raised)]
    entry = {"step": 1, "layer": "a", "kind": "dead", "level": "warning", "value": 0.0, "threshold": 0.0}
    assert alert_entry(raised) == entry
    assert summarize(events, recompute=True)["alerts"] == []  # the detectors see nothing wrong here


def test_summary_streams_like_summarize() -> None:
    events: list[Event] = [_start(), _step(0, loss=3.0), _ack(1, "set_lr", "lr 0.1 -> 0.2 (all groups)"),
                           _step(1, loss=1.0, lrs=(0.2,)), RunEnd(2, "interrupted")]
    s = Summary(recompute=False)
    for e in events:
        s.add(e)
    assert s.result() == summarize(events, recompute=False)
    assert s.status == "interrupted" and s.result()["steps"] == 2


# ---------------------------------------------------------------- the command and its table


def _record(path: Path, events: list[Event]) -> Path:
    from gradtui.wire.record import RecordWriter

    w = RecordWriter(path)
    for e in events:
        w.write(e)
    w.close()
    return path


def _run_events() -> list[Event]:
    return [
        _start(), _step(0, loss=2.0, gnorm=4.0, stepped=1.0), _ack(1, "set_clip", "clipping off -> norm 1"),
        _step(1, loss=1.0, gnorm=2.0, stepped=1.0, clip=("norm", 1.0)), RunEnd(2, "ok"),
    ]


def test_report_json_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gradtui.cli import main

    path = _record(tmp_path / "r.gtr", _run_events())
    assert main(["report", str(path), "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert out["loss"] == {"first": 2.0, "last": 1.0, "min": 1.0}
    assert out["global_norm"] == {"median": 3.0, "max": 4.0}
    assert out["stepped_norm"] == {"median": 1.0, "max": 1.0}
    assert out["interventions"] == [
        {"step": 1, "kind": "set_clip", "message": "clipping off -> norm 1", "clip": {"mode": "norm", "threshold": 1.0}}
    ]
    assert out["truncated_bytes"] == 0 and out["steps"] == 2 and out["status"] == "ok"


def test_the_table_shows_the_new_summaries(tmp_path: Path) -> None:
    from rich.console import Console

    from gradtui.ui.report_view import in_force, print_report

    console = Console(record=True, width=160, color_system=None)
    print_report(summarize(_run_events()), "r.gtr", console=console)
    text = console.export_text()
    assert "first 2.000e+00" in text and "last 1.000e+00" in text and "min 1.000e+00" in text
    assert "median 3.000e+00" in text and "max 4.000e+00" in text  # global norm
    assert "stepped with" in text and "median 1.000e+00" in text
    assert "in force after" in text and "clip norm 1" in text
    assert in_force({"lrs": [0.05, None], "clip": {"mode": "off", "threshold": 1.0}}) == "lr 0.05, —; clip off"
    assert in_force({"paused": True}) == "paused" and in_force({"lrs": None}) == "—" and in_force({}) == ""


def test_the_table_shows_what_the_guard_did_and_the_bad_batches() -> None:
    from rich.console import Console

    from gradtui.ui.report_view import print_report

    events = _run_events()[:-1] + [
        GuardAction(1, "skip", "non-finite loss or gradients"),
        GuardAction(1, "rollback", "rolled back to step 0, lr 0.1 -> 0.025"),
        BadBatch(1, "rollback", "3,17,42"),
        RunEnd(2, "ok"),
    ]
    console = Console(record=True, width=160, color_system=None)
    print_report(summarize(events), "r.gtr", console=console)
    lines = [" ".join(line.replace("│", " ").split()) for line in console.export_text().splitlines()]
    assert "1 ⤼ skip non-finite loss or gradients" in lines
    assert "1 ⟲ rollback rolled back to step 0, lr 0.1 -> 0.025" in lines
    assert "1 rollback 3,17,42" in lines
    assert "1 clipping off -> norm 1 clip norm 1" in lines  # the interventions' table, as before


# ---------------------------------------------------------------- unsampled steps


def _unsampled(steps: list[int], loss: list[float], norm: list[float]) -> RunSteps:
    return RunSteps(
        step=steps[-1], steps=np.array(steps, np.int64), loss=np.array(loss, np.float64),
        global_norm=np.array(norm, np.float64),
    )


def _strided() -> list[Event]:
    """Steps 0 and 4 sampled; 1..3 and 5..6 not (the lowest loss at step 2, the last at step 6)."""
    return [
        _start(),
        _step(0, loss=4.0, gnorm=1.0, stepped=1.0),
        _unsampled([1, 2, 3], [3.0, 0.5, NAN], [2.0, 9.0, 3.0]),
        _step(4, loss=2.0, gnorm=4.0, stepped=3.0),
        _unsampled([5, 6], [1.5, 1.2], [5.0, NAN]),
    ]


@pytest.mark.parametrize("recompute", [False, True])
def test_loss_and_global_norm_summaries_are_over_every_step_sampled_or_not(recompute: bool) -> None:
    out = summarize(_strided(), recompute=recompute)
    assert out["loss"] == {"first": 4.0, "last": 1.2, "min": 0.5}
    finite_norms = [1.0, 2.0, 9.0, 3.0, 4.0, 5.0]
    assert out["global_norm"] == {"median": float(np.median(finite_norms)), "max": 9.0}
    assert out["stepped_norm"] == {"median": 2.0, "max": 3.0}  # known at sampled steps only
    assert out["steps"] == 7 and out["sampled_steps"] == 2
    assert out["first_nonfinite_step"] == 6  # the global norm of step 6 is NaN
    json.dumps(out, allow_nan=False)


def test_the_last_loss_is_the_last_steps_even_when_it_was_not_sampled() -> None:
    events = [*_strided(), RunEnd(7, "ok")]
    assert summarize(events)["loss"]["last"] == 1.2
    events[-2] = _unsampled([5, 6], [1.5, NAN], [5.0, 4.0])  # no finite loss at the last step: the one before
    assert summarize(events)["loss"]["last"] == 1.5


def test_recomputed_detectors_get_every_step_in_order_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradtui.model import detectors

    calls: list[tuple[Any, ...]] = []

    class Spy(detectors.Detectors):
        def update(self, stats: StepStats) -> list[Alert]:
            calls.append(("update", stats.step, stats.loss, stats.global_norm))
            return super().update(stats)

        def update_run(
            self, step: int, loss: float, global_norm: float | None, canary: Any = None
        ) -> list[Alert]:
            assert type(step) is int and type(loss) is float and type(global_norm) in (float, type(None))
            got = None if canary is None else (canary[0].tolist(), canary[1].tolist())
            calls.append(("update_run", step, loss, global_norm, got))
            return super().update_run(step, loss, global_norm, canary)

    monkeypatch.setattr(detectors, "Detectors", Spy)
    canaries = RunSteps(
        step=6,
        steps=np.array([5, 6], np.int64),
        loss=np.array([0.9, 0.8]),
        global_norm=None,
        canary_layers=np.array([0], np.int64),
        canary_norm=np.array([[0.4], [0.3]]),
    )
    events = [_start(), _step(0, loss=4.0), _unsampled([1, 2], [3.0, 2.5], [2.0, 1.5]), _step(3, loss=2.0),
              _unsampled([4], [1.0], [0.5]), canaries]
    summarize(events, recompute=True)
    assert calls == [
        ("update", 0, 4.0, 1.0),
        ("update_run", 1, 3.0, 2.0, None),
        ("update_run", 2, 2.5, 1.5, None),
        ("update", 3, 2.0, 1.0),
        ("update_run", 4, 1.0, 0.5, None),
        ("update_run", 5, 0.9, None, ([0], [0.4])),  # canaries only: no global norm, the canaries' norms
        ("update_run", 6, 0.8, None, ([0], [0.3])),
    ]


def test_a_non_finite_global_norm_at_an_unsampled_step_is_flagged_when_the_report_recomputes() -> None:
    events = [_start(), *(_step(i) for i in range(5)), _unsampled([5, 6, 7], [1.0, 1.0, NAN], [1.0, INF, NAN])]
    out = summarize(events, recompute=True)
    assert out["first_nonfinite_step"] == 6
    raised = [(a["step"], a["layer"], a["kind"]) for a in out["alerts"]]
    assert (6, None, "nonfinite") in raised
    assert all(step >= 6 for step, _, _ in raised)  # nothing before the bad step


def test_unsampled_steps_that_do_not_fit_are_skipped_and_listed() -> None:
    bad = [
        _unsampled([3, 2], [1.0, 1.0], [1.0, 1.0]),  # not increasing
        RunSteps(step=9, steps=np.array([8, 9]), loss=np.ones(3), global_norm=np.ones(2)),  # lengths disagree
        RunSteps(step=9, steps=np.array([8.0, 9.0]), loss=np.ones(2), global_norm=np.ones(2)),  # float steps
        _unsampled([0], [1.0], [1.0]),  # before a step already seen
    ]
    out = summarize([_start(), _step(0), _step(1), *bad, _unsampled([2, 3], [5.0, 6.0], [1.0, 1.0])])
    reasons = sorted(s["reason"] for s in out["skipped"])
    assert reasons == sorted([
        "has steps that do not increase",
        "has another number of losses or global norms than steps",
        "has steps that are not a non-empty integer vector",
        "goes backwards",
    ])
    assert all(s["event"] == "run_steps" for s in out["skipped"])
    assert out["loss"]["last"] == 6.0 and out["steps"] == 4
