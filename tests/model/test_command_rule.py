"""One rule for what a command does: the real probe, the synthetic run and the viewer's own
bookkeeping answer the same commands with the same words and end in the same state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.commands import (
    Command,
    CommandRefused,
    ControlState,
    SetClip,
    SetLR,
    SetPaused,
    UnknownCommand,
    apply,
    follow_schedule,
    respond,
)
from gradtui.model.events import CommandResult
from gradtui.model.store import RunStore
from gradtui.sources.synthetic import SyntheticRun
from gradtui.ui.controls import Controls

# Each batch is sent before one step; a pause and its resume in one batch leave the run going.
BATCHES: list[list[Command]] = [
    [SetLR(factor=0.5)],
    [SetLR(value=0.3), SetClip("norm", 1.0)],
    [SetClip("value")],
    [SetClip("norm", 2.5), SetLR(factor=4.0, group=0)],
    [SetLR(value=-1.0), SetLR(factor=0.5, group=3), SetClip("sideways", 1.0), SetLR(), UnknownCommand("warp", "u1")],
    [SetPaused(True), SetPaused(False)],
    [SetClip("off"), SetLR(factor=0.1)],
]


def _probe_answers() -> tuple[list[CommandResult], ControlState]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for batch in BATCHES:
        for cmd in batch:
            mon.send(cmd)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
    assert mon.events is not None
    results = [e for e in mon.events.drain() if isinstance(e, CommandResult)]
    state = mon.control.state
    mon.close()
    return results, state


def _synthetic_answers() -> tuple[list[CommandResult], ControlState]:
    run = SyntheticRun("healthy", 3, lr=0.1)
    results: list[CommandResult] = []
    for batch in BATCHES:
        for cmd in batch:
            run.commands.put(cmd)
        results.extend(e for e in run.step() if isinstance(e, CommandResult))
    return results, run.state


def test_probe_and_synthetic_run_answer_alike() -> None:
    probe, probe_state = _probe_answers()
    synthetic, synthetic_state = _synthetic_answers()
    assert len(probe) == sum(len(b) for b in BATCHES)
    assert [(r.command_id, r.kind, r.ok, r.step, r.message) for r in probe] == [
        (r.command_id, r.kind, r.ok, r.step, r.message) for r in synthetic
    ]
    assert probe_state == synthetic_state
    # What the words say, once, so that the rule itself is pinned too.
    messages = [r.message for r in probe]
    assert messages[:3] == ["lr 0.1 -> 0.05 (all groups)", "lr 0.05 -> 0.3 (all groups)", "clipping off -> norm 1"]
    assert messages[3] == "clipping norm 1 -> value 1"
    assert probe_state.lrs == pytest.approx((0.12,)) and probe_state.clip_mode == "off"


def test_the_probe_optimizer_follows_the_rule() -> None:
    _, state = _probe_answers()
    expected = ControlState((0.1,))
    for batch in BATCHES:
        expected = follow_schedule(expected, (0.1,))  # the loop's learning rate: constant
        for cmd in batch:
            try:
                expected, _ = apply(expected, cmd)
            except CommandRefused:
                pass
    assert state == expected


def test_the_viewer_predicts_what_the_probe_will_do() -> None:
    """The viewer's pending target of a command is the state the probe ends in."""
    probe_results, probe_state = _probe_answers()
    run = SyntheticRun("healthy", 3, lr=0.1)
    store = RunStore()
    for event in run.events(1):
        store.apply(event)
    controls = Controls(store)
    target = None
    for batch in BATCHES:
        for cmd in batch:
            if controls.check(cmd) is None:
                target = controls.sent(cmd).target
    assert target is not None
    shown = ("lrs", "clip_mode", "clip_threshold", "paused")
    assert {k: getattr(target, k) for k in shown} == {k: getattr(probe_state, k) for k in shown}
    refused = {r.command_id for r in probe_results if not r.ok}
    assert refused == {c.id for b in BATCHES for c in b if controls.check(c) is not None}


def test_a_refusal_changes_nothing() -> None:
    state = ControlState((0.1, 0.2), "norm", 1.0)
    same, result = respond(state, SetLR(factor=2.0, group=2), step=7)
    assert same is state and not result.ok and result.step == 7
    assert result.message == "unknown param group 2 (the optimizer has 2)"
    with pytest.raises(CommandRefused, match="positive finite"):
        apply(state, SetClip("norm", float("nan")))


@pytest.mark.parametrize(
    ("commands", "reason"),
    [
        ([SetLR(value=1e39)], "outside 1e-12 .. 1000"),
        ([SetLR(factor=1e-200)], "would make the learning rate 1e-201"),
        ([SetLR(factor=1e-7), SetLR(factor=1e-7)], "would make the learning rate 1e-15"),
        ([SetClip("value", 1e39)], "clip threshold 1e+39 is outside"),
    ],
)
def test_commands_are_judged_by_what_they_would_do(commands: list[Command], reason: str) -> None:
    """Accepted before: lr 1e39 overflowed the optimizer, two tiny factors left lr = 0.0."""
    state = ControlState((0.1,))
    for cmd in commands[:-1]:
        state, _ = apply(state, cmd)
    same, result = respond(state, commands[-1], step=3)
    assert not result.ok and reason in result.message and same is state


def test_the_probe_refuses_an_overflowing_lr_and_trains_on() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    mon.send(SetLR(value=1e39))
    mon.send(SetClip("value", 1e39))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).mean().backward()
        mon.step()
        opt.step()
    assert mon.events is not None
    results = [e for e in mon.events.drain() if isinstance(e, CommandResult)]
    mon.close()
    assert [r.ok for r in results] == [False, False]
    assert torch.isfinite(model.weight).all() and opt.param_groups[0]["lr"] == 0.1


def test_a_command_that_fails_on_the_optimizer_is_refused_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradtui.probe import control

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)

    def broken(group: dict[str, object], value: float) -> None:
        raise RuntimeError("this param group refuses new learning rates")

    monkeypatch.setattr(control, "_set_lr", broken)
    mon.send(SetLR(factor=0.5))
    model(torch.randn(4, 3)).pow(2).mean().backward()
    mon.step()  # must not raise
    opt.step()
    assert mon.events is not None
    (result,) = [e for e in mon.events.drain() if isinstance(e, CommandResult)]
    mon.close()
    assert not result.ok and "refuses new learning rates" in result.message
    assert mon.control.state.lrs == (0.1,)
