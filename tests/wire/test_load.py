"""`gradtui.load`: a record as arrays, checked against the events that made it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradtui
from gradtui.model.events import (
    Alert,
    CommandResult,
    Event,
    LayerInfo,
    LogLine,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.model.report import summarize
from gradtui.wire.load import RunData, load
from gradtui.wire.record import RecordWriter

NAN = math.nan


def _start(n_layers: int = 2, lrs: tuple[float, ...] = (0.1,), groups: tuple[str, ...] = ()) -> RunStart:
    return RunStart(
        run="hand", pid=1, started=0.0, layers=tuple(LayerInfo(f"l{i}", "Linear", 10) for i in range(n_layers)),
        lrs=lrs, clip_mode="off", clip_threshold=1.0, every=1, detail_every=50, device="cpu", lr_groups=groups,
    )


def _step(step: int, *, norms: list[float], loss: float = 1.0, lrs: tuple[float, ...] = (0.1,),
          schedule: tuple[float, ...] = (), stepped: float = NAN, nonfinite: list[int] | None = None,
          gnorm: float = 1.0, clipped: float | None = None, clip: tuple[str, float] = ("off", 1.0),
          scale: float = NAN, paused: bool = False) -> StepStats:
    g = np.array(norms, np.float64)
    return StepStats(
        step=step, time=100.0 + step, loss=loss, lrs=lrs, grad_norm=g, has_grad=~np.isnan(g),
        nonfinite=np.array(nonfinite if nonfinite is not None else [0] * len(norms), np.int64),
        global_norm=gnorm, clipped_norm=gnorm if clipped is None else clipped, clip_factor=1.0,
        clip_mode=clip[0], clip_threshold=clip[1], steps_per_sec=10.0, loss_scale=scale, schedule_lrs=schedule,
        stepped_norm=stepped, paused=paused,
    )


def _write(path: Path, events: list[Event]) -> Path:
    w = RecordWriter(path)
    for e in events:
        w.write(e)
    w.close()
    return path


def _hand_events() -> list[Event]:
    return [
        _start(2, lrs=(0.1, 0.01), groups=("0", "1")),
        # an old-style step: no schedule_lrs, no stepped_norm
        _step(0, norms=[1.0, 2.0], loss=3.0, lrs=(0.1, 0.01), gnorm=math.sqrt(5.0)),
        UpdateStats(step=0, update_ratio=np.array([1e-3, 2e-3])),
        CommandResult("a", "set_lr", True, 1, "lr 0.1 -> 0.05, 0.01 -> 0.005 (all groups)"),
        CommandResult("b", "set_lr", False, 1, "learning rate must be a positive finite number, got -1"),
        _step(1, norms=[NAN, 4.0], loss=NAN, lrs=(0.05, 0.005), schedule=(0.1, 0.01), stepped=1.0, gnorm=4.0,
              clipped=1.0, clip=("norm", 1.0), scale=1024.0),
        Alert(step=1, layer="l1", kind="exploding", active=True, value=4.0, threshold=2.0),
        LogLine("hello"),
        _step(2, norms=[math.inf, 1.0], loss=2.0, lrs=(0.05, 0.005), schedule=(0.2, 0.02), stepped=0.5,
              nonfinite=[3, 0], gnorm=math.inf),
        Alert(step=2, layer="l1", kind="exploding", active=False, value=1.0, threshold=3.0),
        RunEnd(step=3, status="ok"),
    ]


def test_hand_made_record_loads_field_by_field(tmp_path: Path) -> None:
    events = _hand_events()
    run = load(_write(tmp_path / "hand.gtr", events))
    assert isinstance(run, RunData) and len(run) == 3
    assert run.run == "hand" and run.status == "ok" and run.truncated_bytes == 0
    assert run.layers == ["l0", "l1"] and run.lr_groups == ["0", "1"]
    assert run.steps.dtype == np.int64 and run.steps.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(run.time, [100.0, 101.0, 102.0])
    assert run.grad_norm.shape == (3, 2) and run.grad_norm.dtype == np.float64
    np.testing.assert_array_equal(run.grad_norm, [[1.0, 2.0], [NAN, 4.0], [math.inf, 1.0]])
    np.testing.assert_array_equal(run.loss, [3.0, NAN, 2.0])
    np.testing.assert_array_equal(run.lr, [[0.1, 0.01], [0.05, 0.005], [0.05, 0.005]])
    # schedule_lrs, or lrs where a step (an old record) has none
    np.testing.assert_array_equal(run.schedule_lr, [[0.1, 0.01], [0.1, 0.01], [0.2, 0.02]])
    np.testing.assert_array_equal(run.global_norm, [math.sqrt(5.0), 4.0, math.inf])
    np.testing.assert_array_equal(run.clipped_norm, [math.sqrt(5.0), 1.0, math.inf])
    np.testing.assert_array_equal(run.stepped_norm, [NAN, 1.0, 0.5])
    assert run.nonfinite.dtype == np.int64 and run.nonfinite.tolist() == [[0, 0], [0, 0], [3, 0]]
    np.testing.assert_array_equal(run.loss_scale, [NAN, 1024.0, NAN])
    # recorded alerts (only raised flags) and the applied command, with the rates in force after it
    alert = {"step": 1, "layer": "l1", "kind": "exploding", "level": "warning", "value": 4.0, "threshold": 2.0}
    assert run.alerts == [alert]
    assert run.interventions == [
        {"step": 1, "kind": "set_lr", "message": "lr 0.1 -> 0.05, 0.01 -> 0.005 (all groups)", "lrs": [0.05, 0.005]}
    ]
    assert "3 sampled steps" in repr(run)


def test_alerts_and_interventions_are_the_reports_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gradtui.cli import main

    path = _write(tmp_path / "hand.gtr", _hand_events())
    assert main(["report", str(path), "--json", "--recorded"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert main(["report", str(path), "--json"]) == 0
    recomputed = json.loads(capsys.readouterr().out)
    run = load(path)
    assert run.alerts == recorded["alerts"] and run.interventions == recorded["interventions"]
    again = load(path, recompute=True)
    assert again.alerts == recomputed["alerts"] and again.interventions == recomputed["interventions"]
    assert run.status == recorded["status"] and run.run == recorded["run"]


def test_a_record_without_steps_has_empty_arrays_of_the_right_shape(tmp_path: Path) -> None:
    run = load(_write(tmp_path / "empty.gtr", [_start(3, lrs=(0.1, 0.2))]))
    assert len(run) == 0 and run.status == "unfinished"
    assert run.grad_norm.shape == (0, 3) and run.nonfinite.shape == (0, 3) and run.lr.shape == (0, 2)
    assert run.lr_groups == ["0", "1"]  # no names recorded: by index
    bare = load(_write(tmp_path / "bare.gtr", []))
    assert bare.run is None and bare.layers == [] and bare.grad_norm.shape == (0, 0) and bare.steps.shape == (0,)


def test_a_run_without_an_optimizer_has_no_lr_columns(tmp_path: Path) -> None:
    events: list[Event] = [_start(1, lrs=()), _step(0, norms=[1.0], lrs=()), _step(1, norms=[2.0], lrs=())]
    run = load(_write(tmp_path / "noopt.gtr", events))
    assert run.lr.shape == (2, 0) and run.schedule_lr.shape == (2, 0) and run.lr_groups == []


def test_steps_without_a_run_start_are_named_by_index(tmp_path: Path) -> None:
    run = load(_write(tmp_path / "joined.gtr", [_step(5, norms=[1.0, 2.0, 3.0])]))
    assert run.layers == ["layer0", "layer1", "layer2"] and run.steps.tolist() == [5] and run.run is None


@pytest.mark.parametrize(
    ("bad", "reason", "example"),
    [
        (_step(1, norms=[1.0, 2.0], lrs=(0.1,)), "learning rates", "1 learning rates"),
        (_step(1, norms=[1.0, 2.0], lrs=(0.1, 0.1), schedule=(0.1,)), "learning rates", "(1 scheduled)"),
        (_step(1, norms=[1.0, 2.0, 3.0], lrs=(0.1, 0.1)), "run's layers", "3 layer norms"),
    ],
)
def test_steps_that_disagree_are_left_out_and_listed(tmp_path: Path, bad: StepStats, reason: str, example: str) -> None:
    """Before issue 12 one such step made load raise (and report crash): the rest of the run was lost."""
    events: list[Event] = [_start(2, lrs=(0.1, 0.1)), _step(0, norms=[1.0, 2.0], lrs=(0.1, 0.1)), bad,
                           _step(2, norms=[3.0, 4.0], lrs=(0.1, 0.1))]
    path = _write(tmp_path / "bad.gtr", events)
    with pytest.warns(RuntimeWarning, match="do not fit the run"):
        run = load(path)
    assert run.steps.tolist() == [0, 2] and run.grad_norm.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    [entry] = run.skipped
    assert entry["event"] == "step" and reason in entry["reason"] and example in entry["example"]
    assert entry["count"] == 1 and entry["first_step"] == entry["last_step"] == 1
    assert summarize(iter(events))["skipped"] == run.skipped  # the report leaves out exactly the same


def test_steps_that_disagree_with_the_run_start_are_left_out(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.gtr", [_start(2), _step(0, norms=[1.0])])
    with pytest.warns(RuntimeWarning):
        run = load(path)
    assert len(run) == 0 and run.layers == ["l0", "l1"] and run.grad_norm.shape == (0, 2)
    assert "1 layer norms" in run.skipped[0]["example"] and "for 2 layers" in run.skipped[0]["example"]


def test_a_record_cut_mid_frame_loads_to_its_last_whole_step(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut.gtr", _hand_events())
    whole = load(path)
    data = path.read_bytes()
    from gradtui.wire import codec as wire

    tail = len(wire.encode(_hand_events()[-1])) + len(wire.encode(_hand_events()[-2]))
    path.write_bytes(data[: len(data) - tail - 5])  # inside the last step's frame
    cut = load(path)
    assert len(cut) == len(whole) - 1 and cut.truncated_bytes > 0 and cut.status == "unfinished"
    np.testing.assert_array_equal(cut.grad_norm, whole.grad_norm[:-1])


def test_the_package_root_exports_load() -> None:
    assert gradtui.load is load and gradtui.RunData is RunData


# ---------------------------------------------------------------- pandas


def test_to_pandas_without_pandas_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load(_write(tmp_path / "hand.gtr", _hand_events()))
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(ImportError, match="pip install pandas"):
        run.to_pandas()


def test_to_pandas_has_a_row_per_step(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    run = load(_write(tmp_path / "hand.gtr", _hand_events()))
    df = run.to_pandas()
    assert list(df.columns) == [
        "step", "loss", "global_norm", "sampled", "stepped_norm", "lr_0", "lr_1", "grad_norm/l0", "grad_norm/l1",
    ]
    assert len(df) == 3 and df["step"].tolist() == [0, 1, 2] and df["sampled"].tolist() == [True] * 3
    np.testing.assert_array_equal(df["grad_norm/l1"].to_numpy(), [2.0, 4.0, 1.0])
    np.testing.assert_array_equal(df["lr_1"].to_numpy(), [0.01, 0.005, 0.005])
    one = load(_write(tmp_path / "one.gtr", [_start(1), _step(0, norms=[1.0])])).to_pandas()
    assert list(one.columns) == ["step", "loss", "global_norm", "sampled", "stepped_norm", "lr", "grad_norm/l0"]


def test_to_pandas_of_a_strided_run_has_every_step_and_the_sampled_columns_only_where_sampled(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pandas")
    df = load(_write(tmp_path / "strided.gtr", _strided_events())).to_pandas()
    assert df["step"].tolist() == list(range(7)) and df["sampled"].tolist() == SAMPLED
    np.testing.assert_array_equal(df["loss"].to_numpy(), LOSS)
    np.testing.assert_array_equal(df["grad_norm/l1"].to_numpy(), [2.0, NAN, NAN, NAN, 6.0, NAN, NAN])
    np.testing.assert_array_equal(df["lr"].to_numpy(), [0.1, NAN, NAN, NAN, 0.05, NAN, NAN])
    assert df[df["sampled"]]["step"].tolist() == [0, 4]


# ---------------------------------------------------------------- unsampled steps

LOSS = [3.0, 2.5, NAN, 2.0, 1.5, 1.2, 1.1]
"""The loss at steps 0..6 of `_strided_events` (NaN at step 2: not finite, or not given)."""
NORM = [5.0, 4.0, 3.0, 2.5, 2.0, 1.8, 1.7]
SAMPLED = [True, False, False, False, True, False, False]


def _run_steps(steps: list[int]) -> RunSteps:
    return RunSteps(
        step=steps[-1], steps=np.array(steps, np.int64), loss=np.array([LOSS[s] for s in steps]),
        global_norm=np.array([NORM[s] for s in steps]),
    )


def _strided_events() -> list[Event]:
    """Steps 0 and 4 sampled, 1..3 and 5..6 sent as RunSteps."""
    return [
        _start(2),
        _step(0, norms=[1.0, 2.0], loss=LOSS[0], gnorm=NORM[0]),
        _run_steps([1, 2, 3]),
        _step(4, norms=[3.0, 6.0], loss=LOSS[4], gnorm=NORM[4], lrs=(0.05,), stepped=1.0),
        _run_steps([5, 6]),
        RunEnd(step=7, status="ok"),
    ]


def test_the_loss_and_global_norm_come_at_every_step_the_rest_at_sampled_steps(tmp_path: Path) -> None:
    run = load(_write(tmp_path / "strided.gtr", _strided_events()))
    assert run.run_steps.dtype == np.int64 and run.run_steps.tolist() == list(range(7))
    np.testing.assert_array_equal(run.loss, LOSS)
    np.testing.assert_array_equal(run.global_norm, NORM)
    assert run.sampled.dtype == np.bool_ and run.sampled.tolist() == SAMPLED
    assert run.steps.tolist() == [0, 4] == run.run_steps[run.sampled].tolist() and len(run) == 2
    np.testing.assert_array_equal(run.loss[run.sampled], [3.0, 1.5])
    np.testing.assert_array_equal(run.grad_norm, [[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_array_equal(run.lr, [[0.1], [0.05]])
    np.testing.assert_array_equal(run.stepped_norm, [NAN, 1.0])
    assert "7 steps, 2 sampled steps" in repr(run)


def test_unsampled_steps_that_do_not_fit_the_run_are_left_out_and_listed(tmp_path: Path) -> None:
    events = _strided_events()
    events.insert(4, _run_steps([3]))  # step 3 again, after step 4
    with pytest.warns(RuntimeWarning, match="do not fit the run"):
        run = load(_write(tmp_path / "bad.gtr", events))
    assert run.run_steps.tolist() == list(range(7))
    [entry] = run.skipped
    assert (entry["event"], entry["reason"], entry["first_step"]) == ("run_steps", "goes backwards", 3)
    assert summarize(iter(events))["skipped"] == run.skipped


# ---------------------------------------------------------------- a real run


def _layer_norms(model: Any) -> list[float]:
    out = []
    for module in (model[0], model[2]):
        sq = sum(float(p.grad.double().pow(2).sum()) for p in module.parameters(recurse=False))
        out.append(math.sqrt(sq))
    return out


def test_a_real_run_round_trips_against_its_queue_and_its_own_numbers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "real.gtr"
    mon = gradtui.watch(model, opt, record=path, queue=True, detail_every=2, run="tiny", serve=False)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    ref: dict[str, list[Any]] = {"loss": [], "norms": [], "lr": []}
    for i in range(6):
        if i == 2:
            mon.send(gradtui.SetLR(factor=0.5))
        if i == 4:
            mon.send(gradtui.SetClip("norm", 0.01))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        ref["loss"].append(float(loss.detach()))
        ref["norms"].append(_layer_norms(model))
        mon.step(loss)
        ref["lr"].append(opt.param_groups[0]["lr"])
        opt.step()
    mon.close()
    assert mon.events is not None
    queued = mon.events.drain()
    stats = [e for e in queued if isinstance(e, StepStats)]

    run = gradtui.load(path)
    assert run.run == "tiny" and run.status == "ok" and run.layers == ["0", "2"] and run.lr_groups == ["0"]
    assert len(run) == len(stats) == 6
    # against the in-memory events
    assert run.steps.tolist() == [s.step for s in stats]
    np.testing.assert_array_equal(run.grad_norm, np.stack([s.grad_norm for s in stats]))
    np.testing.assert_array_equal(run.loss, [s.loss for s in stats])
    np.testing.assert_array_equal(run.lr, [list(s.lrs) for s in stats])
    np.testing.assert_array_equal(run.schedule_lr, [list(s.schedule_lrs or s.lrs) for s in stats])
    np.testing.assert_array_equal(run.global_norm, [s.global_norm for s in stats])
    np.testing.assert_array_equal(run.clipped_norm, [s.clipped_norm for s in stats])
    np.testing.assert_array_equal(run.stepped_norm, [s.stepped_norm for s in stats])
    np.testing.assert_array_equal(run.nonfinite, np.stack([s.nonfinite for s in stats]))
    assert run.interventions == summarize(queued, recompute=False)["interventions"]
    # against the loop's own numbers
    np.testing.assert_allclose(run.loss, ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(run.grad_norm, ref["norms"], rtol=1e-5)
    np.testing.assert_allclose(run.global_norm, np.linalg.norm(ref["norms"], axis=1), rtol=1e-5)
    np.testing.assert_allclose(run.lr[:, 0], ref["lr"])
    np.testing.assert_allclose(run.lr[:, 0], [0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    np.testing.assert_allclose(run.schedule_lr[:, 0], 0.1)
    # clipping from step 4: the optimizer stepped with the clipped norm
    np.testing.assert_allclose(run.clipped_norm[4:], 0.01, rtol=1e-4)
    assert [(i["step"], i["kind"]) for i in run.interventions] == [(2, "set_lr"), (4, "set_clip")]
    assert run.interventions[0]["lrs"] == [0.05]
    assert run.interventions[1]["clip"] == {"mode": "norm", "threshold": 0.01}


def test_steps_that_measured_canaries_load_with_their_loss_and_no_global_norm(tmp_path: Path) -> None:
    events = _strided_events()
    events[4] = RunSteps(
        step=6, steps=np.array([5, 6], np.int64), loss=np.array([LOSS[5], LOSS[6]]), global_norm=None,
        canary_layers=np.array([1], np.int64), canary_norm=np.array([[2.0], [3.0]]),
    )
    run = load(_write(tmp_path / "canary.gtr", events))
    assert run.run_steps.tolist() == list(range(7))
    np.testing.assert_array_equal(run.loss, LOSS)
    assert run.norm_measured.tolist() == [True] * 5 + [False] * 2
    np.testing.assert_array_equal(run.global_norm[:5], NORM[:5])
    assert np.isnan(run.global_norm[5:]).all()
    assert run.skipped == []  # a canary batch fits the run
    bad = RunSteps(
        step=8, steps=np.array([7, 8], np.int64), loss=np.ones(2), global_norm=None,
        canary_layers=np.array([5], np.int64), canary_norm=np.ones((2, 1)),  # the run has 2 layers
    )
    with pytest.warns(RuntimeWarning, match="do not fit the run"):
        run = load(_write(tmp_path / "bad.gtr", [*events[:-1], bad, events[-1]]))
    assert [e["reason"] for e in run.skipped] == ["has canary layers out of order or not of the run's layers"]


@pytest.mark.parametrize("every", [None, 7], ids=["default", "every=7"])
def test_the_record_ends_with_the_runs_last_step(tmp_path: Path, every: int | None) -> None:
    """At the default settings (and at any stride) the record holds the final step's loss and global
    norm, whether or not that step was sampled: load(), report and the replay's store end where the
    loop ended, with the loop's own last values."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from gradtui.model.store import RunStore
    from gradtui.wire.record import iter_record

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(256, 10), torch.randn(256, 1)
    path = tmp_path / "run.gtr"
    mon = gradtui.watch(model, opt, record=path, every=every)
    losses, norms = [], []
    for _ in range(300):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        mon.step(loss)
        opt.step()
        losses.append(float(loss.detach()))
    mon.close()

    run = load(path)
    assert run.loss[-1] == losses[-1]
    assert run.run_steps.tolist() == list(range(300))
    assert run.sampled.sum() < 300  # the stride rose (default) or was fixed: most steps were not sampled
    assert run.loss == pytest.approx(losses, rel=1e-12)
    measured = run.norm_measured
    assert run.global_norm[measured] == pytest.approx(np.array(norms)[measured], rel=1e-5)
    summary = summarize(iter_record(path))
    assert summary["steps"] == 300 and summary["loss"]["last"] == losses[-1]
    store = RunStore()
    for event in iter_record(path):
        store.apply(event)
    assert store.last_loss == losses[-1]
