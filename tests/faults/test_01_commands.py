"""Item 1: a command is judged by what it would do; applying one never raises into training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from fault_helpers import tiny_run

from gradtui.model.commands import Command, SetClip, SetLR
from gradtui.model.events import CommandResult
from gradtui.wire.record import read_record


def _acks(path: Path) -> list[CommandResult]:
    return [e for e in read_record(path).events if isinstance(e, CommandResult)]


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ([SetLR(value=1e39)], "outside"),
        ([SetLR(factor=1e-200), SetLR(factor=1e-200)], "outside"),
        ([SetLR(factor=1e300), SetLR(factor=1e300)], "outside"),
        ([SetClip("value", 1e39)], "outside"),
        ([SetClip("norm", 1e-300)], "outside"),
    ],
    ids=["lr-1e39", "lr-to-zero", "lr-to-inf", "clip-value-1e39", "clip-norm-tiny"],
)
def test_a_command_that_would_break_the_run_is_refused_and_training_goes_on(
    tmp_path: Path, commands: list[Command], reason: str
) -> None:
    mon, step = tiny_run(tmp_path, serve=False)
    assert mon.optimizer is not None
    for cmd in commands:
        mon.send(cmd)
    for _ in range(5):
        step()
    lr = mon.optimizer.param_groups[0]["lr"]
    assert 1e-12 <= lr <= 1e3  # the range the README states
    assert all(math.isfinite(float(p.detach().abs().max())) for p in mon.model.parameters())
    mon.close()
    refused = [a for a in _acks(tmp_path / "run.gtr") if not a.ok]
    assert refused and all(reason in a.message for a in refused)


def test_a_failure_applying_a_command_is_a_refusal_and_leaves_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mon, step = tiny_run(tmp_path, serve=False)
    assert mon.optimizer is not None
    mon.optimizer.param_groups[0]["lr"] = torch.tensor(0.1)  # a tensor lr, as fused optimizers keep it

    def broken_fill(self: torch.Tensor, value: float) -> torch.Tensor:
        raise RuntimeError("device lost")

    monkeypatch.setattr(torch.Tensor, "fill_", broken_fill)
    mon.send(SetLR(value=0.05))
    step()  # must not raise
    monkeypatch.undo()
    assert float(mon.optimizer.param_groups[0]["lr"]) == pytest.approx(0.1)
    assert mon.control.state.lrs[0] == pytest.approx(0.1)
    mon.close()
    ack = next(a for a in _acks(tmp_path / "run.gtr") if a.kind == "set_lr")
    assert not ack.ok and "could not apply" in ack.message and "device lost" in ack.message
