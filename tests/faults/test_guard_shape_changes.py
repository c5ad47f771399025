"""Issue 28, items 1-4: a run that changes shape under the probe (a param group added, weights
offloaded to `meta`, a parameter appended to a group, a buffer resized, dropped or added,
parameters swapped) never makes `mon.step` or `optimizer.step()` raise, and a rollback is all
or nothing. Each run is checked against the same loop in plain torch."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import gradtui
from gradtui import Guard, SetLR
from gradtui.model.events import GuardAction, LogLine, StepStats

Change = Callable[[nn.Module, torch.optim.Optimizer], None]


def make() -> tuple[nn.Sequential, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    for p in model[4].parameters():
        p.requires_grad_(False)  # the head is frozen at first
    return model, torch.optim.AdamW([*model[0].parameters(), *model[2].parameters()], lr=0.01)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(300 + step)
    return torch.randn(32, 6, generator=g), torch.randn(32, 2, generator=g)


def unfreeze(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Progressive unfreezing: the head joins training in a group of its own."""
    head = list(model[4].parameters())  # type: ignore[index]
    for p in head:
        p.requires_grad_(True)
    opt.add_param_group({"params": head, "lr": 0.003})


def train(
    steps: int,
    changes: dict[int, Change],
    guard: Any = None,
    nan: tuple[int, ...] = (),
    watched: bool = True,
    nan_in: int = 0,
    before_step: Callable[[int, Any], None] | None = None,
    keep_starts: bool = True,
    detectors: bool = True,
) -> tuple[nn.Module, torch.optim.Optimizer, Any, dict[int, tuple[dict[str, Any], dict[str, Any]]]]:
    """The loop people write; `starts[it]` is the state step `it` started from (plain torch)."""
    model, opt = make()
    watch = dict(queue=10_000, serve=False, guard=guard, every=1, detectors=detectors)
    mon = gradtui.watch(model, opt, **watch) if watched else None
    starts = {}
    for it in range(steps):
        if it in changes:
            changes[it](model, opt)
        if keep_starts:
            starts[it] = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        x, y = batch(it)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if it in nan:
            model[nan_in].weight.grad.view(-1)[0] = math.nan  # type: ignore[index, union-attr]
        if mon is not None:
            if before_step is not None:
                before_step(it, mon)
            mon.step(loss)
        if not (mon is None and it in nan):  # plain torch drops a NaN step itself
            opt.step()
    if mon is not None:
        mon.close()
    return model, opt, mon, starts


def same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def same_state(model: nn.Module, opt: torch.optim.Optimizer, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    weights, optim = state
    for name, value in weights.items():
        assert torch.equal(model.state_dict()[name], value), name
    now = opt.state_dict()["state"]
    assert now.keys() == optim["state"].keys()
    for i, st in optim["state"].items():
        for key, value in st.items():
            assert torch.equal(now[i][key], value), (i, key)


def events_of(mon: Any) -> list[Any]:
    return list(mon.events.drain())


# ---------------------------------------------------------------- 1. a param group added mid-run


@pytest.mark.parametrize("guard", [None, True], ids=["bare", "guard"])
def test_a_param_group_added_mid_run_trains_as_plain_torch_does(guard: Any) -> None:
    plain, _, _, _ = train(12, {5: unfreeze}, watched=False)
    model, opt, mon, _ = train(12, {5: unfreeze}, guard=guard)
    same_weights(model, plain)  # the head trained from step 5 on, exactly as without the probe
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.003
    events = events_of(mon)
    stats = [e for e in events if isinstance(e, StepStats)]
    assert {len(s.lrs) for s in stats} == {1}, "the record keeps the groups the run started with"
    assert any("param group(s) added" in e.text for e in events if isinstance(e, LogLine))


def test_an_override_acts_on_a_group_added_after_it_and_the_loop_keeps_its_own_value() -> None:
    seen: list[list[float]] = []

    def command(it: int, mon: Any) -> None:
        if it == 7:
            mon.send(SetLR(factor=0.5))  # every group, the new one too

    model, opt = make()
    mon = gradtui.watch(model, opt, serve=False, every=1)
    original = opt.step

    def step_and_look(*args: Any, **kwargs: Any) -> Any:
        seen.append([float(g["lr"]) for g in opt.param_groups])
        return original(*args, **kwargs)

    opt.step = step_and_look  # type: ignore[method-assign]
    for it in range(10):
        if it == 5:
            unfreeze(model, opt)
        x, y = batch(it)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        command(it, mon)
        mon.step(loss)
        opt.step()
    mon.close()
    assert seen[5] == [0.01, 0.003]
    assert seen[8] == [0.005, 0.0015], "the override holds on the new group as on the old"
    assert [float(g["lr"]) for g in opt.param_groups] == [0.01, 0.003], "after each step the loop's own values"


def test_a_rollback_after_the_run_changed_shape_drops_the_stale_snapshots_then_works_on_the_new_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gradtui"):
        # No detectors: their alarms would hold the snapshots back by as many steps as the publishing
        # thread lags, and this is about the snapshots' shape alone.
        guard = Guard(snapshot_every=4)
        model, opt, mon, starts = train(22, {5: unfreeze}, guard, nan=(6, 7, 8, 18, 19, 20), detectors=False)
    events = events_of(mon)
    actions = [(a.step, a.action) for a in events if isinstance(a, GuardAction)]
    # Steps 6-8: three non-finite in a row, but the snapshots (steps 0 and 4) are of the old shape:
    # dropped, and the steps are skipped, nothing more. A snapshot of the new shape follows.
    assert actions[:3] == [(6, "skip"), (7, "skip"), (8, "skip")]
    assert [a for a in actions if a[1] == "rollback"] == [(20, "rollback")]
    lines = [r.getMessage() for r in caplog.records]
    stale = [t for t in lines if "changed shape since the snapshot" in t]
    assert len(stale) == 1 and "optimizer 0 has 2 param groups now, 1 then" in stale[0], lines
    rollback = next(a for a in events if isinstance(a, GuardAction) and a.action == "rollback")
    back_to = int(rollback.detail.split("rolled back to step ")[1].split(" ")[0])
    assert back_to == 13  # snapshots of the new shape at 9, 13, 17: 13 is the confirmed one
    # Plain torch from the state of that step, with the cut learning rate, for the last step.
    plain, plain_opt = make()
    unfreeze(plain, plain_opt)
    plain.load_state_dict(starts[back_to][0])
    plain_opt.load_state_dict(starts[back_to][1])
    for group, lr in zip(plain_opt.param_groups, (0.01, 0.003), strict=True):
        group["lr"] = 0.25 * lr
    x, y = batch(21)
    plain_opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(plain(x), y).backward()
    plain_opt.step()
    same_weights(model, plain)


# ---------------------------------------------------------------- 2. weights on the meta device


def offloaded() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model part of which accelerate has offloaded: its weights and a buffer on `meta`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    model.add_module("offloaded", nn.Linear(16, 16, device="meta").requires_grad_(False))
    model.offloaded.register_buffer("scale", torch.ones(16, device="meta"))
    return model, torch.optim.AdamW(model[:3].parameters(), lr=0.01)


@pytest.mark.parametrize("guard", [None, Guard(snapshot_every=3)], ids=["bare", "guard"])
def test_a_frozen_submodule_on_meta_is_left_out(guard: Any) -> None:
    runs = []
    for watched in (True, False):
        model, opt = offloaded()
        mon = gradtui.watch(model, opt, queue=1000, serve=False, guard=guard, every=1) if watched else None
        for it in range(12):
            x, y = batch(it)
            loss = nn.functional.mse_loss(model[:3](x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mon is not None:
                mon.step(loss)
            opt.step()
        if mon is not None:
            assert mon.layer_names == ["0", "2"]
            mon.close()
            assert mon.guard is None or mon.guard.snapshots_taken == 4
        runs.append(model)
    same_weights(runs[0][:3], runs[1][:3])  # type: ignore[index]
    assert runs[0].offloaded.weight.is_meta


def test_a_rollback_leaves_the_meta_weights_alone() -> None:
    model, opt = offloaded()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, guard=Guard(snapshot_every=3), every=1)
    starts = {}
    for it in range(8):
        starts[it] = copy.deepcopy(model[:3].state_dict())
        x, y = batch(it)
        loss = nn.functional.mse_loss(model[:3](x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if it >= 5:
            model[0].weight.grad.view(-1)[0] = math.nan
        mon.step(loss)
        opt.step()
    mon.close()
    actions = [(a.step, a.action) for a in mon.events.drain() if isinstance(a, GuardAction)]
    assert (7, "rollback") in actions
    for name, value in starts[0].items():  # snapshots at 0 and 3; 3 unconfirmed (step 6 was skipped)
        assert torch.equal(model[:3].state_dict()[name], value), name
    assert model.offloaded.weight.is_meta and model.offloaded.scale.is_meta


# ---------------------------------------------------------------- 3. a rollback all or nothing


def add_param_to_group(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    extra = nn.Parameter(torch.zeros(3))
    opt.param_groups[0]["params"].append(extra)


def with_buffer(change: Callable[[nn.Module], None]) -> Change:
    def apply(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        change(model)

    return apply


def grow(model: nn.Module) -> None:
    model.count = torch.zeros(5)  # type: ignore[assignment]


def to_none(model: nn.Module) -> None:
    model.count = None  # type: ignore[assignment]


def add(model: nn.Module) -> None:
    model.register_buffer("other", torch.zeros(2))


@pytest.mark.parametrize(
    ("name", "change", "says"),
    [
        ("param appended", add_param_to_group, "param group 0 of optimizer 0 holds 5 parameters now, 4 then"),
        ("buffer grows", with_buffer(grow), "'count' is [5] torch.float32 now, [2] torch.float32 then"),
        ("buffer None", with_buffer(to_none), "'count' is gone from the model"),
        ("buffer added", with_buffer(add), "'other' was added to the model"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_a_rollback_onto_a_changed_run_touches_nothing(name: str, change: Change, says: str) -> None:
    def start(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        model.register_buffer("count", torch.zeros(2))

    model, opt, mon, starts = train(10, {0: start, 5: change}, Guard(snapshot_every=100), nan=(6, 7, 8))
    events = events_of(mon)
    assert [(a.step, a.action) for a in events if isinstance(a, GuardAction)] == [(6, "skip"), (7, "skip"), (8, "skip")]
    lines = [e.text for e in events if isinstance(e, LogLine)]
    assert any(says in t for t in lines), lines
    # Nothing of the snapshot came back: after the skipped steps 6-8 the state is the one step 6
    # started from, and step 9 (healthy) was applied as plain torch applies it.
    plain_model, plain_opt = make()
    plain_model.register_buffer("count", torch.zeros(2))
    change(plain_model, plain_opt)
    plain_model.load_state_dict(starts[9][0])
    plain_opt.load_state_dict(starts[9][1])
    for name_, value in starts[6][0].items():
        assert torch.equal(starts[9][0][name_], value), f"{name_}: a skipped step changed the weights"
    x, y = batch(9)
    plain_opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(plain_model(x), y).backward()
    plain_opt.step()
    same_weights(model, plain_model)


# ---------------------------------------------------------------- 4. a snapshot that cannot be taken


def swap_first(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """A parameter replaced inside its group (the optimizer's state still keys the old one)."""
    fresh = nn.Parameter(model[0].weight.detach().clone())  # type: ignore[index]
    model[0].weight = fresh  # type: ignore[index]
    opt.param_groups[0]["params"][0] = fresh


def test_a_snapshot_that_fails_costs_the_snapshot_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyError):  # what torch does with such an optimizer: the trigger is real
        model, opt = make()
        swap_first(model, opt)
        nn.functional.mse_loss(model(batch(0)[0]), batch(0)[1]).backward()
        opt.step()
        swap_first(model, opt)
        opt.state_dict()
    with caplog.at_level(logging.WARNING, logger="gradtui"):
        changes: dict[int, Change] = {3: swap_first, 4: swap_first}
        model, opt, mon, _ = train(12, changes, Guard(snapshot_every=2), nan=(9,), keep_starts=False, nan_in=2)
    plain, _, _, _ = train(12, changes, nan=(9,), watched=False, keep_starts=False, nan_in=2)
    same_weights(model, plain)  # the NaN step skipped, every other step applied, as plain torch
    lines = [r.getMessage() for r in caplog.records if "gradtui guard" in r.getMessage()]
    assert sum("the snapshot failed (KeyError" in t for t in lines) == 1, lines
    assert all("training goes on" in t for t in lines if "failed" in t)
