"""Issue 28, item 10: the guard and the alarms speak where the run's output goes, viewer or not:
every guard action, every alarm at warning or critical level and the run's first non-finite
step are lines on the `gradtui` logger (stderr with no logging set up), repeats folded."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from gradtui.model.events import Alert, GuardAction, RunEnd, RunSteps
from gradtui.probe.announce import QUIET_STEPS, Announcer

ROOT = Path(__file__).resolve().parents[2]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _announcer() -> tuple[Announcer, list[str]]:
    logger = logging.getLogger("gradtui.test-announce")
    logger.propagate = False
    logger.handlers[:] = [handler := _Lines()]
    return Announcer(logger), handler.lines


def _alert(step: int, layer: str | None, kind: str = "exploding", level: str = "warning") -> Alert:
    return Alert(
        step=step,
        layer=layer,
        kind=kind,
        active=True,
        value=10.0,
        threshold=1.0,
        message=f"{kind} at {step}",
        level=level,
    )


def _steps(step: int) -> RunSteps:
    return RunSteps(step=step, steps=np.array([step], np.int64), loss=np.ones(1), global_norm=np.ones(1))


def test_alarms_of_one_step_make_one_line_and_a_flag_raised_again_soon_is_counted() -> None:
    ann, lines = _announcer()
    for layer in ("0", "2", None):
        ann.emit(_alert(75, layer))
    ann.emit(_alert(75, "4", level="info"))  # info is for the screen
    ann.emit(_steps(76))
    assert len(lines) == 1 and "step 75" in lines[0] and "3 units" in lines[0] and "the run" in lines[0]
    for step in (80, 90, 100):  # the same flags flapping: counted, not said
        ann.emit(_alert(step, "0"))
        ann.emit(_steps(step + 1))
    assert len(lines) == 1
    ann.emit(_steps(100 + QUIET_STEPS + 1))  # quiet since: the count is said once
    assert len(lines) == 2 and "3 times" in lines[1] and "steps 80-100" in lines[1]
    ann.emit(_alert(400, "0", level="critical"))  # long after: said again
    ann.close()
    assert len(lines) == 3 and "(critical)" in lines[2]


def test_a_run_of_skips_is_one_line_and_its_count() -> None:
    ann, lines = _announcer()
    for step in range(120, 126):
        ann.emit(GuardAction(step=step, action="skip", detail=f"skipped step {step} (non-finite gradients)"))
    ann.emit(GuardAction(step=126, action="rollback", detail="rolled back to step 100, lr 0.1 -> 0.025"))
    ann.emit(RunEnd(step=200, status="ok"))
    assert lines == [
        "gradtui: step 120: the guard: skipped step 120 (non-finite gradients)",
        "gradtui: step 126: the guard: rolled back to step 100, lr 0.1 -> 0.025",
        "gradtui: the guard: 5 more skipped steps over steps 121-125",
    ]


def test_the_first_non_finite_step_is_named_once() -> None:
    ann, lines = _announcer()
    ann.emit(_alert(116, "0", kind="nonfinite", level="critical"))
    ann.emit(_alert(116, "2", kind="nonfinite", level="critical"))
    ann.emit(_steps(117))
    ann.emit(_alert(300, "2", kind="nonfinite", level="critical"))
    ann.close()
    firsts = [line for line in lines if "first non-finite" in line]
    assert firsts == ["gradtui: the first non-finite gradient of the run is at step 116 (layer '0')"]


_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import torch
    from torch import nn
    import gradtui

    if sys.argv[1] == "quiet":
        logging.getLogger("gradtui").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, serve=False, guard=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(120):
        x = torch.randn(64, 10, generator=gen)
        y = x.sum(dim=1, keepdim=True)
        if step == 80:
            x = x.clone(); x[0, 0] = float("nan")  # one corrupt record
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(); loss.backward(); mon.step(loss); opt.step()
    mon.close()
    print("done")
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GRADTUI_BUDGET", None)
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, env=env, timeout=120, check=True
    )


def test_with_no_viewer_and_no_logging_set_up_the_guard_is_heard_on_stderr_and_can_be_silenced() -> None:
    loud = _run("loud")
    assert loud.stdout.strip() == "done"
    said = [line for line in loud.stderr.splitlines() if line.startswith("gradtui: ")]
    assert any("the guard" in line and "step 80" in line for line in said), loud.stderr
    assert any("first non-finite gradient of the run is at step 80" in line for line in said), loud.stderr
    quiet = _run("quiet")
    assert quiet.stdout.strip() == "done"
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("gradtui: ")], quiet.stderr
