"""The probe's statistics against a plain per-parameter torch reference."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from bare_monitor import bare_monitor
from torch import nn

import gradtui
from gradtui.model.commands import CommandRefused, ControlState, SetClip, SetLR, SetPaused, UnknownCommand, apply
from gradtui.model.events import CommandResult, Event, RunEnd, RunStart, RunSteps, StepStats, UpdateStats
from gradtui.probe.layers import find_layers
from gradtui.probe.monitor import Monitor

RTOL = 1e-5


# ---------------------------------------------------------------- models


class Tied(nn.Module):
    """Frozen, unused and tied parameters, and a root that owns a parameter itself."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(self.embed(x)))
        h = self.frozen(h)
        out: torch.Tensor = self.head(h) * self.scale
        return out


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 16, num_layers=2, batch_first=True)
        self.gru = nn.GRU(16, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        h, _ = self.gru(h)
        out: torch.Tensor = self.out(h[:, -1])
        return out


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    return model, torch.randn(16, 10), torch.randint(0, 3, (16,))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 3),
    )
    return model, torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))


def lstm() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return LSTMNet(), torch.randn(8, 12, 4), torch.randint(0, 3, (8,))


def tied() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 20, (8, 5))
    return Tied(), x, torch.randint(0, 20, (8 * 5,))


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {
    "mlp": mlp, "cnn_bn": cnn, "lstm": lstm, "tied_frozen_unused": tied,
}


# ---------------------------------------------------------------- reference


def reference(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-layer statistics computed one parameter at a time, the slow obvious way."""
    seen: set[int] = set()
    out: dict[str, dict[str, float]] = {}
    for name, module in model.named_modules():
        params = [p for p in module._parameters.values() if p is not None and id(p) not in seen]
        seen.update(id(p) for p in params)
        if not params:
            continue
        grads = [p.grad.double() for p in params if p.grad is not None]
        w2 = sum(float(p.detach().double().pow(2).sum()) for p in params)
        row: dict[str, float] = {"weight_norm": math.sqrt(w2), "has_grad": float(bool(grads))}
        if grads:
            n = sum(g.numel() for g in grads)
            row["grad_norm"] = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
            row["mean_abs"] = sum(float(g.abs().sum()) for g in grads) / n
            row["max_abs"] = max(float(g.abs().max()) for g in grads)
            row["zero_frac"] = sum(int((g == 0).sum()) for g in grads) / n
            row["nonfinite"] = sum(int((~torch.isfinite(g)).sum()) for g in grads)
        out[name] = row
    return out


def drain_steps(mon: Monitor) -> list[StepStats]:
    assert mon.events is not None
    return [e for e in mon.events.drain() if isinstance(e, StepStats)]


def check_against_reference(stats: StepStats, names: list[str], ref: dict[str, dict[str, float]]) -> None:
    assert names == list(ref)
    for i, name in enumerate(names):
        r = ref[name]
        assert bool(stats.has_grad[i]) == bool(r["has_grad"]), name
        if not r["has_grad"]:
            assert math.isnan(stats.grad_norm[i]) and stats.nonfinite[i] == 0
            continue
        np.testing.assert_allclose(stats.grad_norm[i], r["grad_norm"], rtol=RTOL, err_msg=name)
        assert stats.nonfinite[i] == r["nonfinite"], name
        if stats.mean_abs is None:  # not a detail step
            continue
        assert stats.max_abs is not None and stats.zero_frac is not None
        np.testing.assert_allclose(stats.mean_abs[i], r["mean_abs"], rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(stats.max_abs[i], r["max_abs"], rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(stats.zero_frac[i], r["zero_frac"], rtol=RTOL, atol=1e-12, err_msg=name)
    if stats.mean_abs is not None:
        assert stats.weight_norm is not None
        np.testing.assert_allclose(stats.weight_norm, [ref[n]["weight_norm"] for n in names], rtol=RTOL)
    total = math.sqrt(sum(r["grad_norm"] ** 2 for r in ref.values() if r["has_grad"]))
    np.testing.assert_allclose(stats.global_norm, total, rtol=RTOL)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("defer", "detail_every"), [(False, 1), (True, 1), (False, 1000)], ids=["sync", "deferred", "cpu-fast-path"]
)
@pytest.mark.parametrize("name", list(MODELS))
def test_stats_match_per_parameter_reference(name: str, defer: bool, detail_every: int) -> None:
    model, x, y = MODELS[name]()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    mon = bare_monitor(model, opt, queue_size=1000, detail_every=detail_every, defer=defer)
    refs = []
    for _ in range(3):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        refs.append((reference(model), float(loss.detach())))
        mon.step(loss)
        opt.step()
    mon.close()
    steps = drain_steps(mon)
    assert [s.step for s in steps] == [0, 1, 2]
    assert [s.mean_abs is not None for s in steps] == [True, detail_every == 1, detail_every == 1]
    for stats, (ref, loss_value) in zip(steps, refs, strict=True):
        check_against_reference(stats, mon.layer_names, ref)
        assert stats.loss == pytest.approx(loss_value, rel=1e-6)
        assert stats.lrs == (0.1,)


def test_layers_are_modules_owning_parameters_tied_counted_once() -> None:
    model = Tied()
    names = [layer.name for layer in find_layers(model)]
    # head's weight is embed's: counted in embed; the root owns `scale` directly.
    assert names == ["", "embed", "body", "frozen", "unused"]
    mon = gradtui.watch(model, queue=True, detectors=False)
    assert mon.events is not None
    start = mon.events.drain()[0]
    assert isinstance(start, RunStart)
    assert [(li.name, li.kind, li.numel) for li in start.layers] == [
        ("", "Tied", 1), ("embed", "Embedding", 160), ("body", "Linear", 72), ("frozen", "Linear", 72),
        ("unused", "Linear", 72),
    ]
    mon.close()


@pytest.mark.parametrize(("defer", "warm"), [(False, 0), (True, 0), (False, 1)], ids=["sync", "deferred", "fast"])
def test_nonfinite_values_counted_exactly(defer: bool, warm: int) -> None:
    model, x, y = mlp()
    mon = bare_monitor(model, None, queue_size=100, defer=defer)
    for _ in range(warm):  # step 0 is a detail step; later ones take the CPU fast path
        _loss(model, x, y).backward()
        mon.step()
        model.zero_grad()
    _loss(model, x, y).backward()
    g0 = model[0].weight.grad
    g2 = model[2].bias.grad
    assert g0 is not None and g2 is not None
    g0.view(-1)[[1, 5, 7]] = torch.tensor([math.nan, math.inf, -math.inf])
    g2[3] = math.nan
    mon.step()
    mon.close()
    stats = drain_steps(mon)[-1]
    assert stats.nonfinite.tolist() == [3, 1, 0]
    assert math.isnan(stats.global_norm)
    assert not math.isfinite(stats.grad_norm[0]) and math.isfinite(stats.grad_norm[2])
    assert math.isnan(stats.loss)  # no loss given


def test_update_ratio_matches_weights_before_and_after() -> None:
    model, x, y = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mon = bare_monitor(model, opt, queue_size=1000, detail_every=2)
    expected = {}
    for step in range(4):
        opt.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        if step % 2 == 0:
            ratios = []
            for i in (0, 2, 4):
                w = before[i : i + 2]
                a = list(model[i].parameters())
                d = math.sqrt(sum(float((p.detach() - q).double().pow(2).sum()) for p, q in zip(a, w, strict=True)))
                ratios.append(d / math.sqrt(sum(float(q.double().pow(2).sum()) for q in w)))
            expected[step] = ratios
    mon.close()
    assert mon.events is not None
    updates = [e for e in mon.events.drain() if isinstance(e, UpdateStats)]
    assert [u.step for u in updates] == [0, 2]
    for u in updates:
        before_idx = [0, 2, 4]
        assert len(before_idx) == len(u.update_ratio)
        np.testing.assert_allclose(u.update_ratio, expected[u.step], rtol=1e-5)


def test_detail_statistics_only_on_detail_steps() -> None:
    model, x, y = mlp()
    mon = bare_monitor(model, None, queue_size=1000, every=2, detail_every=3)
    for _ in range(12):
        model.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
    mon.close()
    steps = drain_steps(mon)
    assert [s.step for s in steps] == [0, 2, 4, 6, 8, 10]
    assert [s.mean_abs is not None for s in steps] == [True, False, False, True, False, False]
    assert [s.weight_norm is not None for s in steps] == [True, False, False, True, False, False]


# ---------------------------------------------------------------- commands


def _train(mon: Monitor, model: nn.Module, opt: torch.optim.Optimizer | None, steps: int) -> None:
    x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
    for _ in range(steps):
        model.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
        if opt is not None:
            opt.step()


def stepped_lrs(opt: torch.optim.Optimizer) -> list[list[float]]:
    """The learning rates each `opt.step()` uses (read in a pre-step hook), appended as it steps.

    Between `optimizer.step()` and the next `mon.step` the groups hold the loop's own values
    (so a scheduler that chains from them keeps its shape); overrides act on the step itself.
    """
    seen: list[list[float]] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([float(g["lr"]) for g in o.param_groups]))
    return seen


def _results(events: list[Event]) -> list[CommandResult]:
    return [e for e in events if isinstance(e, CommandResult)]


def test_lr_commands_apply_at_next_step_and_are_acknowledged() -> None:
    model, _, _ = mlp()
    opt = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": list(model[2].parameters()) + list(model[4].parameters())}],
        lr=0.1,
    )
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    used = stepped_lrs(opt)
    _train(mon, model, opt, 2)
    mon.send(SetLR(factor=0.5))
    _train(mon, model, opt, 1)
    mon.send(SetLR(value=0.3, group=1))
    _train(mon, model, opt, 1)
    assert used == [[0.1, 0.1], [0.1, 0.1], [0.05, 0.05], [0.05, 0.3]]
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    results = _results(events)
    assert [(r.kind, r.ok, r.step) for r in results] == [("set_lr", True, 2), ("set_lr", True, 3)]
    assert results[0].message == "lr 0.1 -> 0.05, 0.1 -> 0.05 (all groups)"
    assert results[1].message == "lr 0.05 -> 0.3 (group 1)"
    lrs = {e.step: e.lrs for e in events if isinstance(e, StepStats)}
    assert lrs == {0: (0.1, 0.1), 1: (0.1, 0.1), 2: (0.05, 0.05), 3: (0.05, 0.3)}


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (SetLR(value=math.nan), "positive finite"),
        (SetLR(value=-1.0), "positive finite"),
        (SetLR(factor=math.inf), "positive finite"),
        (SetLR(value=0.1, group=5), "unknown param group 5"),
        (SetLR(), "exactly one of"),
        (SetClip(mode="norm", threshold=0.0), "positive finite"),
        (SetClip(mode="sideways"), "unknown clip mode"),
        (UnknownCommand(kind="frobnicate", id="x1"), "unknown command kind 'frobnicate'"),
    ],
)
def test_invalid_commands_are_refused_and_change_nothing(command: object, reason: str) -> None:
    model, _, _ = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    mon.send(command)  # type: ignore[arg-type]
    _train(mon, model, opt, 1)
    assert opt.param_groups[0]["lr"] == 0.1 and mon.clip_mode == "off"
    mon.close()
    assert mon.events is not None
    (result,) = _results(mon.events.drain())
    assert not result.ok and result.step == 0 and reason in result.message


@pytest.mark.parametrize("warm", [0, 1], ids=["detail-step", "fast-path"])
@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipping_matches_torch_utilities(mode: str, warm: int) -> None:
    model, x, y = mlp()
    twin, _, _ = mlp()
    twin.load_state_dict(model.state_dict())
    mon = gradtui.watch(model, queue=True, detectors=False)
    for _ in range(warm):
        _loss(model, x, y).backward()
        mon.step()
        model.zero_grad()
    mon.send(SetClip(mode=mode, threshold=0.05))
    for m in (model, twin):
        _loss(m, x, y).backward()
    mon.step()
    if mode == "norm":
        ref_total = float(torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05))
    else:
        ref_total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in twin.parameters() if p.grad is not None))
        torch.nn.utils.clip_grad_value_(twin.parameters(), 0.05)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad)
    mon.close()
    stats = drain_steps(mon)[-1]
    after = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in twin.parameters() if q.grad is not None))
    assert stats.global_norm == pytest.approx(ref_total, rel=RTOL)
    assert stats.clipped_norm == pytest.approx(after, rel=1e-4)
    assert stats.clip_factor == pytest.approx(after / ref_total, rel=1e-4) and stats.clip_factor < 1.0
    assert stats.clip_mode == mode and stats.clip_threshold == 0.05


def test_clipping_applies_on_unsampled_steps() -> None:
    model, x, y = mlp()
    mon = gradtui.watch(model, every=5, clip=("norm", 1e-3), detectors=False)
    for _ in range(3):
        model.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
        total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))
        assert total == pytest.approx(1e-3, rel=1e-3)
    mon.close()


def test_pause_blocks_training_until_resumed() -> None:
    model, _, _ = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    mon.send(SetPaused(True))
    done = threading.Event()

    def train() -> None:
        _train(mon, model, opt, 3)
        done.set()

    t = threading.Thread(target=train)
    t.start()
    assert not done.wait(0.5), "training went on while paused"
    assert mon.step_count == 1
    mon.send(SetLR(value=0.2))  # commands are still applied while paused
    mon.send(SetPaused(False))
    assert done.wait(10)
    t.join()
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    assert [(r.kind, r.step, r.message) for r in _results(events)] == [
        ("set_paused", 0, "paused"), ("set_lr", 0, "lr 0.1 -> 0.2 (all groups)"), ("set_paused", 0, "resumed"),
    ]
    assert [e.paused for e in events if isinstance(e, StepStats)] == [True, False, False]


def test_commands_from_another_thread_queue_is_bounded() -> None:
    model, _, _ = mlp()
    mon = gradtui.watch(model, detectors=False)
    for _ in range(1000):
        mon.send(SetPaused(False))
    with pytest.raises(queue.Full):
        mon.send(SetPaused(False))
    mon.close()


# ---------------------------------------------------------------- API edges


def test_bad_arguments_get_clear_errors(tmp_path: object) -> None:
    model, _, _ = mlp()
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        gradtui.watch("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every must be a positive integer"):
        gradtui.watch(model, every=0)
    with pytest.raises(ValueError, match="clip threshold must be a positive finite"):
        gradtui.watch(model, clip=("norm", -1.0))
    # Past the range a viewer's command may set: refused with the words the command gets.
    with pytest.raises(CommandRefused) as refused:
        apply(ControlState(lrs=(0.1,), clip_mode="off", clip_threshold=1.0), SetClip(mode="norm", threshold=1e20))
    with pytest.raises(ValueError, match="outside 1e-12 .. 1e\\+12") as raised:
        gradtui.watch(model, clip=("norm", 1e20))
    assert str(raised.value) == str(refused.value)
    with pytest.raises(ValueError, match="clip must be None or a"):
        gradtui.watch(model, clip="norm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no parameters"):
        gradtui.watch(nn.ReLU())
    with pytest.raises(ValueError, match="queue must be"):
        gradtui.watch(model, queue=-3)
    mon = gradtui.watch(model, detectors=False)
    with pytest.raises(ValueError, match="scalar loss"):
        model.zero_grad()
        _loss(model, torch.randn(4, 10), torch.zeros(4, dtype=torch.long)).backward()
        mon.step(torch.ones(3))
    mon.close()
    with pytest.raises(RuntimeError, match="closed"):
        mon.step()


def test_context_manager_reports_errors() -> None:
    model, _, _ = mlp()
    with pytest.raises(ZeroDivisionError):
        with gradtui.watch(model, queue=True, detectors=False) as mon:
            1 / 0  # noqa: B018
    assert mon.events is not None
    end = mon.events.drain()[-1]
    assert isinstance(end, RunEnd) and end.status == "error" and "ZeroDivisionError" in end.error


def test_memory_stays_flat_over_thousands_of_steps() -> None:
    import tracemalloc

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, detail_every=10)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def train(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            mon.step(loss)
            opt.step()

    def probe_bytes() -> int:
        # What gradtui's code holds (torch's own forward keeps ~60 KB of its Python objects growing
        # over these steps, with or without a probe: not the probe's to answer for).
        ours = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/gradtui/*", all_frames=True)])
        return sum(stat.size for stat in ours.statistics("filename"))

    train(500)
    tracemalloc.start(32)
    train(200)
    mon.flush()  # items on their way to the publishing thread are a bounded backlog, not growth
    first = probe_bytes()
    train(3000)
    mon.flush()
    second = probe_bytes()
    tracemalloc.stop()
    mon.close()
    assert second - first < 64 * 1024, f"probe grew by {second - first} bytes over 3000 steps"


class WrappedOptimizer(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer subclass that skips Optimizer.__init__."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.optimizer = inner

    @property
    def param_groups(self) -> list[dict[str, object]]:  # type: ignore[override]
        return self.optimizer.param_groups

    def step(self, closure: object = None) -> None:  # type: ignore[override]
        self.optimizer.step()


def test_wrapped_optimizers_are_unwrapped_for_hooks_and_lr() -> None:
    model, x, y = mlp()
    opt = WrappedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    used = stepped_lrs(opt.optimizer)
    mon = gradtui.watch(model, opt, queue=True, detectors=False, detail_every=1)
    mon.send(SetLR(value=0.2))
    for _ in range(2):
        model.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
        opt.step()
    mon.close()
    assert used == [[0.2], [0.2]]
    assert mon.events is not None
    assert [e.step for e in mon.events.drain() if isinstance(e, UpdateStats)] == [0, 1]


def test_lanes_measure_the_gradient_reaching_each_time_step() -> None:
    from gradtui.model.store import RunStore

    cell = nn.RNNCell(3, 5, nonlinearity="tanh")
    head = nn.Linear(5, 2)
    model = nn.ModuleDict({"cell": cell, "head": head})
    mon = gradtui.watch(model, queue=True, detectors=False, lanes=[f"h[{t}]" for t in range(4)])
    x = torch.randn(6, 4, 3)
    h = torch.zeros(6, 5)
    hs = []
    for t in range(4):
        h = mon.lane(t, cell(x[:, t], h))
        h.retain_grad()
        hs.append(h)
    nn.functional.cross_entropy(head(h), torch.zeros(6, dtype=torch.long)).backward()
    mon.step()
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    (stats,) = [e for e in events if isinstance(e, StepStats)]
    assert stats.lanes is not None
    expected = [float(hh.grad.norm()) for hh in hs]  # type: ignore[union-attr]
    np.testing.assert_allclose(stats.lanes, expected, rtol=1e-5)
    assert expected[0] < expected[-1]  # the gradient fades back through time
    store = RunStore()
    for e in events:
        store.apply(e)
    assert [layer.name for layer in store.layers] == ["cell", "head", "h[0]", "h[1]", "h[2]", "h[3]"]
    np.testing.assert_allclose(store.latest("grad_norm")[2:], expected, rtol=1e-5)
    with pytest.raises(IndexError, match="lane 4 does not exist"):
        mon.lane(4, h)


@pytest.mark.parametrize("kind", ["lambda", "step", "onecycle"])
def test_lr_commands_survive_the_scheduler(kind: str) -> None:
    model, x, y = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched: torch.optim.lr_scheduler.LRScheduler
    if kind == "lambda":  # a warm-up recomputes lr from base_lrs at every step
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    elif kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    twin = copy_schedule(kind)
    expected_at = [twin.get_last_lr()[0]]
    mon = gradtui.watch(model, opt, detectors=False)
    used = stepped_lrs(opt)
    for step in range(6):
        if step == 3:
            mon.send(SetLR(factor=0.5))
        model.zero_grad()
        _loss(model, x, y).backward()
        mon.step()
        opt.step()
        sched.step()
        twin.optimizer.step()
        twin.step()
        expected_at.append(twin.get_last_lr()[0])
        # The step used the schedule's learning rate times the override...
        assert used[-1][0] == pytest.approx(expected_at[step] * (0.5 if step >= 3 else 1.0)), step
        # ... and the scheduler, chaining or not, still follows its own course.
        assert opt.param_groups[0]["lr"] == pytest.approx(twin.get_last_lr()[0]), step
    mon.close()


def copy_schedule(kind: str) -> torch.optim.lr_scheduler.LRScheduler:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    if kind == "lambda":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)


def test_detector_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _ = mlp()
    monkeypatch.setenv("GRADTUI_DETECTORS", "dead_steps=7")
    mon = gradtui.watch(model)
    assert mon.detectors is not None and mon.detectors.config.dead_steps == 7
    mon.close()
    monkeypatch.setenv("GRADTUI_DETECTORS", "no_such_key=1")
    with pytest.raises(ValueError, match="GRADTUI_DETECTORS: .*no_such_key"):
        gradtui.watch(model)
    monkeypatch.setenv("GRADTUI_DETECTORS", "oops")
    with pytest.raises(ValueError, match="is not key=value"):
        gradtui.watch(model)


@pytest.mark.parametrize("every", [None, 1])
@pytest.mark.parametrize("kind", [np.float32, np.float64, np.int64])
def test_a_loss_given_as_a_numpy_scalar_is_recorded(kind: type, every: int | None) -> None:
    """A loss computed in NumPy is a number too: recorded at every step, sampled or not."""
    model, x, y = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=True, detectors=False, **({} if every is None else {"every": every}))
    given: list[float] = []
    for _ in range(12):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        value = kind(loss.item() * 1000)  # an int loss: a count of errors, say
        given.append(float(value))
        mon.step(value)
        opt.step()
    mon.close()
    assert mon.events is not None
    seen: dict[int, float] = {}
    for e in mon.events.drain():
        if isinstance(e, StepStats):
            seen[e.step] = e.loss
        elif isinstance(e, RunSteps):
            seen.update(zip(e.steps.tolist(), e.loss.tolist(), strict=True))
    assert [seen[i] for i in range(12)] == pytest.approx(given)
    other = gradtui.watch(model, detectors=False)
    with pytest.raises(TypeError, match="takes a tensor, a number or None, got bool"):
        other.step(np.bool_(True))  # type: ignore[arg-type]
    other.close()
