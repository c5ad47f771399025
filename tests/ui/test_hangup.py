"""A viewer whose terminal goes away ends, even when no hangup signal reaches it: under `make demo`
in a tmux pane, killing the pane hangs up `make` (the session leader), not the viewer below it.
Textual's input thread then reads end-of-file from the dead terminal in a loop, at half a core."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gradtui


def _record(path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradtui.watch(model, opt, record=path) as mon:
        for _ in range(5):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            mon.step(loss)
            opt.step()


def _read_some(fd: int, seconds: float) -> bytes:
    """What the viewer draws: up to about 2 KB, or whatever came within `seconds`."""
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            out += chunk
            if len(out) > 2000:
                break
    return out


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_viewer_whose_terminal_is_gone_ends_without_a_hangup_signal(tmp_path: Path) -> None:
    record = tmp_path / "run.gtr"
    _record(record)
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    # A new session with no controlling terminal: closing the master sends it no SIGHUP.
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gradtui", "replay", "--no-follow", str(record)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    try:
        drawn = _read_some(master, 30.0)
        assert drawn, "the viewer must have drawn before its terminal goes"
        assert viewer.poll() is None
        os.close(master)
        master = -1
        try:
            viewer.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the viewer kept running after its terminal went away")
    finally:
        if master >= 0:
            os.close(master)
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
