"""Issue 12, item 7: two writers never share a record, and `report` never crashes on one
whose frames check out but whose events do not make sense.

Before: `overwrite=True` truncated a record a live process was still writing (two runs
mixed, steps going backwards), and `report` then crashed with a traceback, as it did on any
CRC-valid but inconsistent record. After: the writer holds an exclusive lock, a second one
is refused with the file untouched, and `report` leaves out (and lists) what does not fit.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from gradtui import cli
from gradtui.model.events import LayerInfo, RunEnd, RunStart, StepStats
from gradtui.wire import codec as wire
from gradtui.wire.load import load
from gradtui.wire.record import RecordPathError, RecordWriter, open_record, read_record


def _start(run: str = "a", layers: int = 2) -> RunStart:
    return RunStart(
        run=run, pid=1, started=0.0, layers=tuple(LayerInfo(f"l{i}", "Linear", 4) for i in range(layers)),
        lrs=(0.1,), clip_mode="off", clip_threshold=1.0, every=1, detail_every=50, device="cpu",
    )


def _step(i: int, layers: int = 2) -> StepStats:
    return StepStats(
        step=i, time=float(i), loss=1.0, lrs=(0.1,), grad_norm=np.ones(layers), has_grad=np.ones(layers, bool),
        nonfinite=np.zeros(layers, np.int64), global_norm=1.0, clipped_norm=1.0, clip_factor=1.0, clip_mode="off",
        clip_threshold=1.0, steps_per_sec=1.0,
    )


# ---------------------------------------------------------------- the lock


def test_overwrite_of_a_record_this_process_writes_is_refused_and_the_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    first = RecordWriter(path)
    first.write(_start())
    first.write(_step(0))
    before = path.read_bytes()
    with pytest.raises(RecordPathError) as info:
        RecordWriter(path, overwrite=True)
    text = str(info.value)
    assert str(path) in text and "this process is already writing it" in text and info.value.filename == str(path)
    assert path.read_bytes() == before
    with pytest.raises(RecordPathError, match="in use"):  # without overwrite: not "pass overwrite=True"
        open_record(path, run="b")
    first.write(_step(1))  # the live writer goes on, alone
    first.close()
    assert [e.step for e in read_record(path).events if isinstance(e, StepStats)] == [0, 1]
    RecordWriter(path, overwrite=True).close()  # its lock went with it
    assert read_record(path).events == []


_WRITER = textwrap.dedent(
    """
    import sys, time
    from gradtui.wire.record import RecordWriter
    from gradtui.wire import codec as wire
    w = RecordWriter(sys.argv[1])
    w.write_frame(wire.encode_frame({"t": "log", "text": "alive", "stream": "log"}))
    print("ready", flush=True)
    sys.stdin.readline()
    w.close()
    """
)


def test_overwrite_of_a_record_another_process_writes_names_that_process(tmp_path: Path) -> None:
    path = tmp_path / "run.gtr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        before = path.read_bytes()
        with pytest.raises(RecordPathError) as info:
            open_record(path, run="b", overwrite=True)
        assert f"process {child.pid} is writing it" in str(info.value) and str(path) in str(info.value)
        assert path.read_bytes() == before
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    open_record(path, run="b", overwrite=True).close()  # the writer is gone: now it may be replaced


def test_readers_need_no_lock(tmp_path: Path) -> None:
    from gradtui.sources.replay import ReplaySource

    path = tmp_path / "run.gtr"
    w = RecordWriter(path)
    w.write(_start())
    w.write(_step(0))
    try:
        assert len(read_record(path).events) == 2
        src = ReplaySource(path, follow=False)
        try:
            assert src.wait_indexed(10) and src.last_step == 0
        finally:
            src.close()
        with pytest.raises(RecordPathError):
            RecordWriter(path, overwrite=True)  # reading did not take or break the writer's lock
    finally:
        w.close()


def test_a_record_folder_still_gives_each_live_run_its_own_file(tmp_path: Path) -> None:
    writers = [open_record(tmp_path / "runs", run="same", now=1_750_000_000.0) for _ in range(3)]
    try:
        assert len({w.path for w in writers}) == 3
        for i, w in enumerate(writers):
            w.write(_step(i))
    finally:
        for w in writers:
            w.close()
    assert sorted(e.step for w in writers for e in read_record(w.path).events if isinstance(e, StepStats)) == [0, 1, 2]


def test_watch_with_overwrite_refuses_a_record_a_live_monitor_writes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import gradtui

    model = torch.nn.Linear(3, 1)
    path = tmp_path / "run.gtr"
    with gradtui.watch(model, record=path, detectors=False) as mon:
        loss = model(torch.randn(2, 3)).sum()
        loss.backward()
        mon.step(loss)
        mon.flush()
        before = path.read_bytes()
        with pytest.raises(RecordPathError, match="already writing it"):
            gradtui.watch(torch.nn.Linear(3, 1), record=path, overwrite=True)
        assert path.read_bytes() == before
    assert [type(e) for e in read_record(path).events][0] is RunStart


# ---------------------------------------------------------------- inconsistent records


def _frames(payloads: list[dict[str, Any]]) -> bytes:
    return wire.hello_frame(role="record") + b"".join(wire.encode_frame(p) for p in payloads)


def _payload(event: Any) -> dict[str, Any]:
    return wire.encode_message(event)


def _array(rng: random.Random) -> Any:
    """A per-layer array that may not fit: another length, shape or dtype."""
    n = rng.choice([0, 1, 2, 2, 2, 3, 7])
    return rng.choice([
        lambda: np.ones(n), lambda: np.ones((n, 2)), lambda: np.ones(n, bool), lambda: np.arange(n, dtype=np.int32),
        lambda: np.full(n, np.nan), lambda: np.full(n, np.inf), lambda: np.zeros((1, 1, 1, n)),
        lambda: np.arange(n, dtype=np.uint8), lambda: np.ones(n, np.float32),
    ])()


def _messy_event(rng: random.Random, step: int) -> dict[str, Any]:
    kind = rng.choice(["step", "step", "step", "start", "update", "alert", "ack", "end", "log"])
    if kind == "start":
        payload = _payload(_start(rng.choice("ab"), rng.choice([0, 1, 2, 2, 3])))
        payload["lrs"] = rng.choice([[], [0.1], [0.1, 0.2]])
        payload["lanes"] = rng.choice([[], ["h0"], ["h0", "h1"]])
        payload["layers"] = [[rng.choice(["l0", "l1", "l2", ""]), "Linear", rng.choice([0, -5, 4, 2**63 - 1])]
                             for _ in range(rng.choice([0, 1, 2, 3]))]
        return payload
    if kind == "update":
        return {"t": "update", "step": step, "update_ratio": _array(rng)}
    if kind == "alert":
        return {"t": "alert", "step": step, "layer": rng.choice([None, "l0", "nope", ""]),
                "kind": rng.choice(["exploding", "dead", "weird"]), "active": rng.random() < 0.7,
                "value": rng.choice([1.0, float("nan"), float("inf")]), "threshold": 1.0}
    if kind == "ack":
        return {"t": "command_result", "command_id": "c", "kind": rng.choice(["set_lr", "set_clip", "set_paused", "x"]),
                "ok": True, "step": step, "message": rng.choice(["paused", "resumed", "lr 0.1 -> 0.2"])}
    if kind == "end":
        return {"t": "run_end", "step": rng.choice([step, -1, 2**62]), "status": rng.choice(["ok", "error", "?"])}
    if kind == "log":
        return {"t": "log", "text": "x", "stream": "log"}
    payload = _payload(_step(step))
    for key in ("grad_norm", "has_grad", "nonfinite", "mean_abs", "max_abs", "zero_frac", "weight_norm", "lanes"):
        if rng.random() < 0.25:
            payload[key] = _array(rng)
    if rng.random() < 0.2:
        payload["lrs"] = rng.choice([[], [0.1, 0.2], [float("nan")]])
    if rng.random() < 0.2:
        payload["schedule_lrs"] = rng.choice([[], [0.1], [0.1, 0.2, 0.3]])
    if rng.random() < 0.1:
        payload["step"] = rng.choice([-1, 2**63 - 1, 2**64 - 1, step - 5])
    for key in ("loss", "global_norm", "stepped_norm", "clip_factor", "time"):
        if rng.random() < 0.1:
            payload[key] = rng.choice([float("nan"), float("inf"), -1e308, 0])
    return payload


def _record(rng: random.Random) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []
    if rng.random() < 0.8:
        payloads.append(_payload(_start()))
    step = 0
    for _ in range(rng.randint(0, 30)):
        step += rng.choice([1, 1, 1, 0, -3, 50])
        payloads.append(_messy_event(rng, max(step, 0)) if rng.random() < 0.4 else _payload(_step(max(step, 0))))
    return payloads


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"the report holds {name}")

    return json.loads(text, parse_constant=refuse)


def _report(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli.main(["report", str(path), *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_report_never_crashes_on_a_consistent_looking_but_inconsistent_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """300 records whose frames all check out, with events that do not fit the run."""
    rng = random.Random(7)
    path = tmp_path / "messy.gtr"
    for case in range(300):
        payloads = _record(rng)
        path.write_bytes(_frames(payloads))
        for args in (("--json",), ("--json", "--recorded"), ()):
            try:
                rc, out, err = _report(path, capsys, *args)
            except Exception as exc:  # the bug: a traceback
                raise AssertionError(f"case {case} {args}: report raised {exc!r}") from exc
            assert rc in (0, 2), (case, args)
            if rc == 2:
                assert len(err.strip().splitlines()) == 1 and err.startswith("gradtui: error:"), (case, err)
            elif args[:1] == ("--json",):
                out_obj = _strict_json(out)
                assert isinstance(out_obj["skipped"], list) and isinstance(out_obj["steps"], int), case
        if rc == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # load warns of what it leaves out
                run = load(path)
            assert run.grad_norm.shape == (len(run), len(run.layers)), case


@pytest.mark.parametrize(
    ("name", "payloads", "reason"),
    [
        ("a step with another number of layers", [_start(), _step(0), _step(1, layers=3), _step(2)],
         "another length than the run's layers"),
        ("steps going backwards", [_start(), _step(0), _step(5), _step(3), _step(6)], "goes backwards"),
        ("an alert on a layer the run lacks",
         [_start(), _step(0), wire.decode_event({"t": "alert", "step": 0, "layer": "zz", "kind": "dead",
                                                  "active": True, "value": 0.0, "threshold": 0.0}), _step(1)],
         "names a layer the run does not have"),
        ("a 2-D gradient array", [_start(), _step(0), {"2d": True}, _step(2)], "not float vectors"),
    ],
)
def test_each_inconsistency_is_left_out_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, payloads: list[Any], reason: str
) -> None:
    frames = []
    for p in payloads:
        if isinstance(p, dict):
            bad = _payload(_step(1))
            bad["grad_norm"] = np.ones((2, 2))
            frames.append(bad)
        else:
            frames.append(_payload(p))
    path = tmp_path / "r.gtr"
    path.write_bytes(_frames(frames))
    rc, out, err = _report(path, capsys, "--json", "--recorded")
    assert rc == 0, err
    summary = _strict_json(out)
    assert [s["reason"] for s in summary["skipped"]] == [next(s["reason"] for s in summary["skipped"])]
    assert reason in summary["skipped"][0]["reason"] and summary["skipped"][0]["count"] == 1
    assert "left out 1" in err
    assert summary["alerts"] == [] and summary["first_nonfinite_step"] is None


def test_two_runs_in_one_record_are_summarised_as_the_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What `cat a.gtr b.gtr` (or a second writer before the lock) leaves: the report is of the last run."""
    first = [_start("a"), *(_step(i) for i in range(30)), RunEnd(30, "ok")]
    second = [_start("b", layers=3), *(_step(i, layers=3) for i in range(5))]
    path = tmp_path / "two.gtr"
    path.write_bytes(_frames([_payload(e) for e in first]) + _frames([_payload(e) for e in second]))
    rc, out, err = _report(path, capsys, "--json")
    assert rc == 0, err
    summary = _strict_json(out)
    assert summary["run"] == "b" and summary["sampled_steps"] == 5 and summary["status"] == "unfinished"
    assert [layer["name"] for layer in summary["layers"]] == ["l0", "l1", "l2"]
    [left] = summary["skipped"]
    assert left["event"] == "run_start" and (left["first_step"], left["last_step"]) == (0, 29)
    with pytest.warns(RuntimeWarning):
        run = load(path)
    assert run.run == "b" and run.steps.tolist() == list(range(5)) and run.grad_norm.shape == (5, 3)


def test_two_writers_interleaved_make_a_report_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file the old overwrite bug produced: a new run's frames mixed with the old run's later steps."""
    new = [_payload(_start("new"))] + [_payload(_step(i)) for i in range(20)]
    old = [_payload(_step(500 + i, layers=3)) for i in range(20)]
    mixed = [new[0]] + [p for pair in zip(new[1:], old, strict=True) for p in pair]
    path = tmp_path / "mixed.gtr"
    path.write_bytes(_frames(mixed))
    rc, out, err = _report(path, capsys, "--json")
    assert rc == 0, err
    summary = _strict_json(out)
    assert summary["run"] == "new" and summary["sampled_steps"] == 20
    assert summary["skipped"][0]["count"] == 20 and "layers" in summary["skipped"][0]["reason"]


def test_a_garbage_payload_in_a_valid_frame_is_one_frame_of_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = [_payload(_start()), _payload(_step(0))]
    path = tmp_path / "r.gtr"
    body = msgpack.packb({"t": "step", "step": "not a number"})
    path.write_bytes(_frames(frames) + struct.pack("<2sII", b"GT", len(body), zlib.crc32(body)) + body
                     + wire.encode(_step(2)))
    rc, out, err = _report(path, capsys, "--json")
    assert rc == 0, err
    summary = _strict_json(out)
    assert summary["sampled_steps"] == 2 and summary["damage"][0]["frames"] == 1
    assert "expected an integer" in summary["damage"][0]["reason"]
