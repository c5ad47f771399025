"""The guard: non-finite steps skipped, blow-ups rolled back to a healthy snapshot with a lower
learning rate that the loop cannot undo, the batches at fault kept; checked against plain torch."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.commands import NO_GUARD, Rollback
from gradtui.model.events import Alert, BadBatch, CommandResult, Event, GuardAction, LogLine
from gradtui.model.guard import Guard, batch_text
from gradtui.model.report import summarize

BASE_LR = 0.01


def get_lr(it: int) -> float:
    """nanoGPT's shape: a linear warm-up, then cosine decay, set into every group at every step."""
    warmup, decay = 5, 40
    if it < warmup:
        return BASE_LR * (it + 1) / warmup
    ratio = min(1.0, (it - warmup) / (decay - warmup))
    return BASE_LR * 0.1 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * BASE_LR * 0.9


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=BASE_LR, weight_decay=0.1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


@dataclass
class Loop:
    """A run under the guard, with a copy of the state each step started from (plain torch)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    mon: Any
    starts: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def run(self, steps: range, poison: Callable[[int, nn.Module], None] | None = None) -> None:
        for it in steps:
            for group in self.opt.param_groups:
                group["lr"] = get_lr(it)  # as nanoGPT: the loop owns the learning rate
            self.starts[it] = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()))
            x, y = batch(it)
            loss = nn.functional.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if poison is not None:
                poison(it, self.model)
            self.mon.step(loss, batch=torch.arange(it * 16, it * 16 + 16))
            self.lrs.append(float(self.opt.param_groups[0]["lr"]))
            self.opt.step()

    def close(self) -> list[Event]:
        self.mon.close()
        self.events = list(self.mon.events.drain())
        return self.events

    def actions(self) -> list[GuardAction]:
        return [e for e in self.events if isinstance(e, GuardAction)]


def watched(guard: Any = True, **options: Any) -> Loop:
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=10_000, serve=False, guard=guard, **{"every": 1, **options})
    return Loop(model, opt, mon)


def nan_at(*steps: int) -> Callable[[int, nn.Module], None]:
    def poison(it: int, model: nn.Module) -> None:
        if it in steps:
            first = next(iter(model.parameters()))
            assert first.grad is not None
            first.grad.view(-1)[3] = float("nan")

    return poison


def assert_state(model: nn.Module, opt: torch.optim.Optimizer, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    weights, optim = state
    for name, value in weights.items():
        assert torch.equal(model.state_dict()[name], value), name
    now = opt.state_dict()["state"]
    assert now.keys() == optim["state"].keys()
    for i, st in optim["state"].items():
        for key, value in st.items():
            assert torch.equal(now[i][key], value), (i, key)


def test_non_finite_steps_in_a_row_roll_back_exactly_to_the_last_confirmed_snapshot_and_cut_the_lr() -> None:
    loop = watched(Guard(snapshot_every=4, lr_factor=0.5))
    loop.run(range(12), nan_at(9, 10, 11))
    # Snapshots at 0, 4, 8: the one at 4 is confirmed (no alarm up to 8), 8 still awaits. Steps 9
    # and 10 are skipped (a skip leaves the state as it was); the third in a row is trouble in the state.
    assert_state(loop.model, loop.opt, loop.starts[4])  # AdamW moments and step counts as they were
    assert loop.lrs[11] == pytest.approx(0.5 * get_lr(11), rel=1e-12)
    loop.run(range(12, 16))  # the loop sets its own LR each step: the cut holds on top of it
    assert loop.lrs[12:] == pytest.approx([0.5 * get_lr(it) for it in range(12, 16)], rel=1e-12)
    events = loop.close()
    assert [(a.step, a.action) for a in loop.actions()] == [
        (9, "skip"),
        (10, "skip"),
        (11, "skip"),
        (11, "rollback"),
        (11, "lr_cut"),
    ]
    rollback = loop.actions()[3]
    assert rollback.detail.startswith("rolled back to step 4 (3 non-finite steps in a row at step 11), lr ")
    bad = [e for e in events if isinstance(e, BadBatch)]
    assert [(b.step, b.why) for b in bad] == [(9, "skip"), (10, "skip"), (11, "skip"), (11, "rollback")]
    assert bad[0].batch == ",".join(str(i) for i in range(144, 160))
    assert not any(isinstance(e, CommandResult) for e in events), "the guard's own command is not a viewer's"
    report = summarize(events)
    assert [g["action"] for g in report["guard"]] == ["skip", "skip", "skip", "rollback", "lr_cut"]
    assert report["guard"][3] == {"step": 11, "action": "rollback", "detail": rollback.detail}
    assert report["bad_batches"][0]["why"] == "skip"


def test_after_a_rollback_the_run_goes_on_as_plain_torch_from_the_snapshot_would() -> None:
    loop = watched(Guard(snapshot_every=4, lr_factor=0.5))
    loop.run(range(12), nan_at(9, 10, 11))
    loop.run(range(12, 15))
    loop.close()
    # Plain torch: the state of step 4, the loop's LR times the cut, the batches from 12 on.
    model, opt = make()
    model.load_state_dict(loop.starts[4][0])
    opt.load_state_dict(loop.starts[4][1])
    for it in range(12, 15):
        for group in opt.param_groups:
            group["lr"] = 0.5 * get_lr(it)
        x, y = batch(it)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for (name, a), b in zip(model.state_dict().items(), loop.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_skip_alone_leaves_the_state_untouched_and_repeated_rollbacks_cut_further() -> None:
    loop = watched(Guard(rollback=False))
    loop.run(range(6), nan_at(5))
    after = (copy.deepcopy(loop.model.state_dict()), copy.deepcopy(loop.opt.state_dict()))
    assert_state(loop.model, loop.opt, loop.starts[5])  # optimizer.step() applied nothing
    loop.close()
    assert [(a.step, a.action) for a in loop.actions()] == [(5, "skip")]
    assert after[1]["state"][0]["step"] == loop.starts[5][1]["state"][0]["step"]

    loop = watched(Guard(snapshot_every=2, lr_factor=0.5, patience=1))  # patience 1: every non-finite step
    loop.run(range(12), nan_at(7, 11))
    loop.close()
    cuts = [a for a in loop.actions() if a.action == "lr_cut"]
    assert [c.step for c in cuts] == [7, 11]
    assert loop.lrs[11] == pytest.approx(0.25 * get_lr(11), rel=1e-12)


def test_a_nonfinite_loss_is_skipped_too() -> None:
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=Guard(rollback=False))
    x, y = batch(0)
    before = copy.deepcopy(model.state_dict())
    nn.functional.cross_entropy(model(x), y).backward()
    mon.step(float("nan"))
    opt.step()
    mon.close()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [e.action for e in mon.events.drain() if isinstance(e, GuardAction)] == ["skip"]


def test_without_room_for_a_snapshot_there_is_no_rollback_and_the_log_says_why() -> None:
    loop = watched(Guard(max_snapshot_bytes=64))
    loop.run(range(4), nan_at(3))
    events = loop.close()
    assert [a.action for a in loop.actions()] == ["skip"]
    logs = [e.text for e in events if isinstance(e, LogLine)]
    assert any("over max_snapshot_bytes 64 B: no snapshots, so no rollback" in t for t in logs), logs

    loop = watched(Guard(snapshot_every=2, max_snapshot_bytes=2000, patience=1))  # room for one of ~1.3 kB, not two
    loop.run(range(8), nan_at(7))
    events = loop.close()
    assert any("keeping one snapshot" in e.text for e in events if isinstance(e, LogLine))
    assert_state(loop.model, loop.opt, loop.starts[6])  # the only one: the latest


def test_healthy_run_is_bit_identical_with_the_guard_and_takes_no_action() -> None:
    plain, guarded = watched(None), watched(True)
    plain.run(range(30))
    guarded.run(range(30))
    plain.close()
    guarded.close()
    assert guarded.actions() == []
    for a, b in zip(plain.model.state_dict().values(), guarded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert guarded.mon.guard.snapshots_taken == 2  # steps 0 and 25


def test_a_gradscaler_keeps_its_own_skips() -> None:
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=True)
    x, y = batch(0)
    before = copy.deepcopy(model.state_dict())
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    nan_at(0)(0, model)
    mon.step(scaler=scaler)
    scaler.unscale_(opt)
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)  # it finds the NaN and skips: the guard leaves this step to it
    scaler.update()
    mon.close()
    assert scaler.get_scale() == 2.0**7
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [e for e in mon.events.drain() if isinstance(e, GuardAction)] == []


def test_rollback_commands_need_a_guard_and_a_snapshot() -> None:
    loop = watched(None)
    loop.mon.send(Rollback("by hand"))
    loop.run(range(1))
    results = [e for e in loop.close() if isinstance(e, CommandResult)]
    assert [(r.kind, r.ok, r.message) for r in results] == [("rollback", False, NO_GUARD)]


@pytest.mark.parametrize(
    ("guard", "match"),
    [
        (Guard, None),
        ("yes", "guard must be True, False or a gradtui.Guard"),
    ],
)
def test_bad_guard_arguments_are_refused(guard: Any, match: str | None) -> None:
    model, opt = make()
    with pytest.raises(TypeError, match=match or "Guard"):
        gradtui.watch(model, opt, serve=False, guard=guard)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lr_factor": 1.5}, r"lr_factor=\.\.\.\) must be a number between 0 and 1"),
        ({"patience": 0}, r"patience=\.\.\.\) must be a positive integer"),
        ({"snapshot_every": 2.5}, r"snapshot_every=\.\.\.\) must be a positive integer"),
        ({"skip": "no"}, r"skip=\.\.\.\) must be True or False"),
    ],
)
def test_bad_guard_settings_say_which_and_why(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Guard(**options)


def test_batch_identifiers_as_the_ledger_keeps_them() -> None:
    assert batch_text(17) == "17"
    assert batch_text("shard3.jsonl:41") == "shard3.jsonl:41"
    assert batch_text(torch.tensor([3, 17, 42])) == "3,17,42"
    assert batch_text(list(range(70)), limit=3) == "0,1,2,…(+67)"
    assert batch_text(None) == ""
    assert batch_text(object()).startswith("<object object at 0x")  # any type: its bounded repr


# ---------------------------------------------------------------- adaptive clipping


def zclip_reference(norms: list[float], z: float, warmup: int = 25, alpha: float = 0.97) -> list[float]:
    """ZClip's rule in plain float64 Python: the clipped norm of each step. Zero (and non-finite)
    norms stay out of the statistics; the standard deviation is at least 5% of the mean."""
    mean = var = 0.0
    seen = 0
    out = []
    for g in norms:
        if seen < warmup:
            clipped, a = g, seen / (seen + 1)
        else:
            clipped, a = min(g, mean + z * max(math.sqrt(var), 0.05 * mean)), alpha
        out.append(clipped)
        if not (math.isfinite(clipped) and clipped > 0):
            continue
        delta = clipped - mean
        mean, var = mean + (1 - a) * delta, a * (var + (1 - a) * delta * delta)
        seen += 1
    return out


def test_auto_clipping_clips_a_spike_to_mean_plus_z_std_of_the_recent_norms() -> None:
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1, guard=Guard(clip=True, rollback=False))
    raw: list[float] = []
    applied: list[float] = []
    for it in range(40):
        x, y = batch(it)
        loss = nn.functional.cross_entropy(model(x), y) * (60.0 if it == 33 else 1.0)  # one bad batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        raw.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        mon.step(loss)
        applied.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        opt.step()
    mon.close()
    expected = zclip_reference(raw, 2.5)
    assert applied == pytest.approx(expected, rel=1e-5)
    clipped = [i for i, (a, r) in enumerate(zip(applied, raw, strict=True)) if a < r * (1 - 1e-6)]
    assert 33 in clipped and all(i >= 25 for i in clipped)
    clips = [e for e in mon.events.drain() if isinstance(e, GuardAction) and e.action == "clip"]
    assert [c.step for c in clips] == clipped
    assert clips[clipped.index(33)].detail.startswith(f"norm {raw[33]:.4g} clipped to {expected[33]:.4g}")


def test_the_ledger_keeps_the_batch_of_a_loss_spike_without_a_guard() -> None:
    model, opt = make()
    mon = gradtui.watch(model, opt, queue=1000, serve=False, every=1)
    for it in range(40):
        x, y = batch(it)
        loss = nn.functional.cross_entropy(model(x), y) * (10.0 if it == 30 else 1.0)  # a bad batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss, batch=f"shard-{it}")
        opt.step()
    mon.close()
    events = list(mon.events.drain())
    spikes = [e for e in events if isinstance(e, Alert) and e.kind == "loss_spike" and e.active]
    assert [a.step for a in spikes] == [30], spikes
    assert [(b.step, b.why, b.batch) for b in events if isinstance(b, BadBatch)] == [(30, "loss_spike", "shard-30")]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense().contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_the_fused_finiteness_check_agrees_with_isfinite_and_leaves_values_as_they_were(bad: float | None) -> None:
    from gradtui.probe.amp import any_nonfinite

    torch.manual_seed(1)
    dense = [
        torch.randn(5, dtype=torch.float16),
        torch.randn(3, 4, dtype=torch.bfloat16).t(),  # not contiguous
        torch.randn(7),
        torch.randn(2, 3, dtype=torch.float64) * 1e300,  # finite, far past float32's range
        torch.tensor([1e-45]),  # a denormal: x * 1.0 must keep it
    ]
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,), check_invariants=True)
    for where in range(len(dense) + 1):
        tensors = [t.clone() for t in dense] + [sparse.clone()]
        if bad is not None and where < len(dense):
            tensors[where][(-1,) * tensors[where].dim()] = bad
        elif bad is not None:
            tensors[-1] = torch.sparse_coo_tensor([[0, 2]], [1.0, bad], (4,), check_invariants=True)
        before = [t.clone() for t in tensors]
        expect = not all(bool(torch.isfinite(t.to_dense()).all()) for t in tensors)
        assert bool(any_nonfinite(tensors, torch.device("cpu"))) is expect
        for a, b in zip(tensors, before, strict=True):
            assert torch.equal(bits(a), bits(b))
        if bad is None:
            break
    assert not bool(any_nonfinite([], torch.device("cpu")))


def test_gradients_are_checked_at_sampled_steps_and_the_next_loss_catches_the_rest() -> None:
    # every=4: step 5 is not sampled. Its NaN gradient (under a finite loss) is applied, the
    # model turns NaN, and step 6's loss is the alarm: skipped and rolled back to step 4.
    loop = watched(Guard(snapshot_every=4), every=4)
    loop.run(range(8), nan_at(5))
    loop.close()
    assert [(a.step, a.action) for a in loop.actions()][:3] == [(6, "skip"), (6, "rollback"), (6, "lr_cut")]
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())
    assert "rolled back to step 0" in loop.actions()[1].detail  # 4 was a candidate with 5 unjudged


def test_every_step_checks_the_gradients_of_unsampled_steps_too() -> None:
    loop = watched(Guard(snapshot_every=4, every_step=True), every=4)
    loop.run(range(8), nan_at(5))
    loop.close()
    # Skipped at once: the NaN never reaches the model, so step 6's loss raises nothing, and a
    # step whose neighbours are healthy needs nothing more than the skip.
    assert [(a.step, a.action) for a in loop.actions()] == [(5, "skip")]
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())
