"""`gradtui demo` on the command line: the list, the option checks, and what it starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import gradtui.demo.launcher as demo
from gradtui.cli import main
from gradtui.demo.catalog import CATALOG, TOUR


def test_list_names_every_scenario_once_without_importing_torch_or_textual() -> None:
    code = (
        "import json, sys\n"
        "from gradtui.cli import main\n"
        "rc = main(['demo', '--list'])\n"
        "print(json.dumps({'rc': rc, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    *listing, last = out.stdout.strip().splitlines()
    result = json.loads(last)
    assert result["rc"] == 0
    assert "torch" not in result["loaded"] and "textual" not in result["loaded"]
    rows = [line.split()[0] for line in listing if line.startswith("  ")]
    assert sorted(rows) == sorted(CATALOG) and len(rows) == len(set(rows))
    for name in CATALOG:
        row = next(line for line in listing if line.split() and line.split()[0] == name)
        assert CATALOG[name].blurb in row
    groups = [line[:-1] for line in listing if line.endswith(":")]
    assert groups[0] == CATALOG[TOUR[0]].chapter and len(groups) == len(set(groups))
    assert "gradtui demo NAME" in listing[-1] and "guided tour" in listing[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "nope"], "unknown scenario 'nope'; valid names: sigmoid, sigmoid-relu-he"),
        (["demo", "sigmoid", "--steps", "0"], "--steps must be at least 1, got 0"),
        (["demo", "--steps", "-5"], "--steps must be at least 1, got -5"),
        (["demo", "--speed", "-1"], "--speed must be 0 (as fast as possible) or a positive number of steps/s, got -1"),
        (["demo", "--speed", "nan"], "--speed must be 0 (as fast as possible) or a positive number"),
        (["demo", "--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
        (["demo", "--device", "cuda:x"], "--device must be cpu, cuda or cuda:N, got 'cuda:x'"),
        (["demo", "--record", "/no/such/folder/run.gtr"], "--record: the folder /no/such/folder does not exist"),
    ],
)
def test_bad_options_are_refused_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gradtui: error: {message}") and err.count("\n") == 1


def test_an_unknown_name_lists_every_valid_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "sigmoidd"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in CATALOG)


def test_an_existing_record_file_is_refused_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(demo, "ChildSource", lambda argv, name: started.append(argv))
    old = tmp_path / "run.gtr"
    old.write_bytes(b"an earlier run")
    assert main(["demo", "sigmoid", "--record", str(old)]) == 2
    assert f"--record: {old} exists already" in capsys.readouterr().err
    assert old.read_bytes() == b"an earlier run"
    # The tour records each chapter to its own file: one of them existing is enough to refuse.
    chapter_file = tmp_path / "tour-relu-explode.gtr"
    chapter_file.write_bytes(b"kept")
    assert main(["demo", "--record", str(tmp_path / "tour.gtr")]) == 2
    assert f"{chapter_file} exists already" in capsys.readouterr().err
    assert chapter_file.read_bytes() == b"kept"
    assert started == [], "nothing was started"


class FakeApp:
    """Stands in for the viewer: records what it was given, runs nothing."""

    made: list[FakeApp] = []

    def __init__(self, source: Any, tour: Any) -> None:
        self.source = source if source is not None else tour.start()  # as the app does on mount
        self.tour = tour
        self.closed = False
        FakeApp.made.append(self)

    def run(self) -> None:
        pass

    def close_source(self) -> None:
        self.closed = True

    def wait_retired(self, timeout: float = 10.0) -> bool:
        return True


@pytest.fixture
def fake_viewer(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    started: list[list[str]] = []

    def child(argv: list[str], name: str) -> str:
        started.append(list(argv))
        return name

    monkeypatch.setattr(demo, "ChildSource", child)
    monkeypatch.setattr("gradtui.ui.app.make_app", lambda source, *, tour: FakeApp(source, tour))
    FakeApp.made = []
    return started


def test_one_scenario_starts_the_worker_with_the_options(fake_viewer: list[list[str]], tmp_path: Path) -> None:
    record = tmp_path / "one.gtr"
    argv = ["demo", "relu-explode", "--steps", "7", "--seed", "3", "--speed", "0", "--record", str(record)]
    assert main(argv) == 0
    (worker,) = fake_viewer
    assert worker[:4] == [sys.executable, "-m", "gradtui.demo.worker", "relu-explode"]
    opts = dict(zip(worker[4::2], worker[5::2], strict=True))
    assert opts == {
        "--steps": "7",
        "--seed": "3",
        "--device": "cpu",
        "--speed": "0.0",
        "--record": str(record),
        "--run": "demo: relu-explode",
    }
    (app,) = FakeApp.made
    assert app.source == "demo: relu-explode" and len(app.tour) == 1 and app.closed
    assert app.tour.current.keys == ("c", "-")


def test_the_tour_starts_at_the_first_chapter_with_one_record_per_visit(
    fake_viewer: list[list[str]], tmp_path: Path
) -> None:
    assert main(["demo", "--record", str(tmp_path / "tour.gtr")]) == 0
    (app,) = FakeApp.made
    assert [c.name for c in app.tour.chapters] == list(TOUR)
    assert fake_viewer[0][3] == TOUR[0] and "--steps" not in fake_viewer[0]
    records = [fake_viewer[0][fake_viewer[0].index("--record") + 1]]
    # Visiting chapters again (as the app does on . and ,) never reuses a record name.
    (tmp_path / "tour-sigmoid.gtr").write_bytes(b"")  # the first visit's file, as the worker leaves it
    for delta in (1, -1):
        app.tour.move(delta)
        app.tour.start()
        records.append(fake_viewer[-1][fake_viewer[-1].index("--record") + 1])
    assert [Path(r).name for r in records] == ["tour-sigmoid.gtr", "tour-sigmoid-relu-he.gtr", "tour-sigmoid-2.gtr"]


def test_record_paths() -> None:
    assert demo.record_path("runs/a.gtr", None) == Path("runs/a.gtr")
    assert demo.record_path("runs/a.gtr", "lstm") == Path("runs/a-lstm.gtr")
    assert demo.record_path("a", "lstm", 3) == Path("a-lstm-3")


def test_a_missing_cuda_device_is_one_line_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix `demo --device cuda` on a CPU-only box opened the viewer on a chapter that
    crashed ("Connection reset by peer", or the worker's line in a crash dialog)."""
    import torch

    def no_viewer(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the viewer started")

    monkeypatch.setattr("gradtui.ui.app.make_app", no_viewer)
    has_cuda = torch.cuda.is_available()
    device, message = ("cuda:99", "there is no cuda:99") if has_cuda else ("cuda", "torch sees no CUDA device")
    assert main(["demo", "sigmoid", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gradtui: error: --device {device}: ") and message in err and err.count("\n") == 1
    assert demo.device_problem("cpu") is None
