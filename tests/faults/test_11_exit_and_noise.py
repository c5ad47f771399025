"""Item 11: SIGTERM ends the record properly, versions are exact, refusals do not flood the log."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import RawViewer, tiny_run, wait_for

from gradtui.model.events import RunEnd, RunStart, StepStats
from gradtui.wire import codec as wire
from gradtui.wire.record import read_record

TRAIN = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from fault_helpers import tiny_run
mon, step = tiny_run(Path(sys.argv[1]), serve=False)
print("started", flush=True)
while True:
    step()
    time.sleep(0.01)
"""


def test_sigterm_leaves_a_record_that_ends_with_run_end(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        wait_for(lambda: (tmp_path / "run.gtr").stat().st_size > 2000, 30, "some steps on the record")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM, "the process still dies of the signal"
    finally:
        proc.kill()
        proc.wait()
    events = read_record(tmp_path / "run.gtr").events
    assert isinstance(events[0], RunStart) and isinstance(events[-1], RunEnd)
    assert events[-1].status == "interrupted" and "SIGTERM" in events[-1].error
    last = max(e.step for e in events if isinstance(e, StepStats))
    assert events[-1].step >= last


@pytest.mark.parametrize("version", [1.0, True, "1", None])
def test_a_hello_version_must_be_the_integer_one(version: object) -> None:
    frame = wire.encode_frame({"t": "hello", "v": version, "role": "viewer"})
    with pytest.raises(wire.WireError, match="unsupported wire version"):
        wire.FrameDecoder().feed(frame)


def test_a_flood_of_refused_connections_writes_a_few_lines_not_one_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    with caplog.at_level(logging.INFO, logger="gradtui"):
        for i in range(200):
            bad = RawViewer(mon.server.socket_path, hello=False, read=False)
            bad.send(b"garbage %d" % i + b"\0" * 32)
            bad.close()
        wait_for(lambda: mon.server is not None and mon.server.refused_connections >= 200, 20, "every refusal")
        step()
        time.sleep(0.2)
        mon.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 3, lines
    assert "malformed hello" in lines[0]
    assert "refused 199 more connections" in lines[-1]


KILLED_AFTER = r"""
import os, signal, sys
import torch
from torch import nn
import gradtui
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(256, 10), torch.randn(256, 1)
mon = gradtui.watch(model, opt, record=sys.argv[1], serve=False)
for _ in range(300):
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    mon.step(loss)
    opt.step()
print(repr(float(loss.detach())), flush=True)
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_keeps_the_last_steps_loss_on_the_record(tmp_path: Path) -> None:
    """At the default settings unsampled steps' loss and norm travel in batches of up to 32 steps:
    a SIGTERM after the loop's last step still puts the steps gathered so far on the record."""
    import gradtui

    path = tmp_path / "run.gtr"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    run = gradtui.load(path)
    assert run.status == "interrupted"
    assert run.run_steps.tolist() == list(range(300))
    assert run.loss[-1] == float(done.stdout.strip())
