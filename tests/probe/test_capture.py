"""Deep capture (`gradtui.probe.capture`): nothing hooked while healthy, activation and optimizer
statistics equal plain torch's on the same tensors, and the first non-finite module gradtui names
equals what plain torch hooks written here find on the same seed, for every blow-up of the suite.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import gradtui
import gradtui.probe.capture as capture_mod
from gradtui.model.commands import Capture as CaptureCommand
from gradtui.model.events import Capture, CaptureStats, CommandResult, NonFiniteOrigin, StepStats
from tests.probe.test_every_step import MOMENTUM, RELU_RNN, WARMUP, Loop, _scenario


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _floats(tree: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _finite_max(ts: list[torch.Tensor]) -> float:
    vals = [float(torch.nan_to_num(t.detach().abs().double(), 0.0, 0.0, 0.0).max()) for t in ts if t.numel()]
    return max(vals) if vals else math.nan


def _kind(t: torch.Tensor) -> str | None:
    if bool(torch.isfinite(t).all()):
        return None
    return "nan" if bool(torch.isnan(t).any()) else "inf"


def _hook_count(model: nn.Module) -> dict[str, int]:
    """Every hook torch keeps on the modules and the parameters (the root's apart)."""
    inner = [m for m in model.modules() if m is not model]
    module_hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {
        "layers": sum(len(getattr(m, h)) for m in inner for h in module_hooks),
        "root": sum(len(getattr(model, h)) for h in module_hooks),
        "param_tensor_hooks": sum(len(p._backward_hooks or {}) for p in model.parameters()),
        "post_accumulate": sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()),
    }


# ---------------------------------------------------------------- the independent reference


@dataclass
class Reference:
    """The first non-finite value of a run, found with plain torch hooks: forward, the first module
    (in the order forward hooks fire) whose output holds a NaN or Inf; else the loss; else
    backward, the first gradient (in the order backward computes them) that a leaf module passes
    back to its inputs or a watched parameter receives, or the loss to the model's output."""

    model: nn.Module
    step: int = 0
    found: tuple[int, str, str, str, float] | None = None
    """(step, module, direction, kind, input max)."""
    forward: tuple[str, str, float] | None = None
    backward: tuple[str, str, float] | None = None
    arriving: dict[str, float] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = self.model
        owners = {}
        seen: set[int] = set()
        for name, m in root.named_modules():
            for p in m._parameters.values():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    owners[id(p)] = name
            self.handles.append(m.register_forward_hook(self._fwd(name or type(m).__name__, m)))
        for p in root.parameters():
            if p.requires_grad:
                self.handles.append(p.register_hook(self._bwd(owners[id(p)])))

    def _fwd(self, name: str, module: nn.Module) -> Any:
        leaf = not list(module.children())

        def hook(m: nn.Module, args: Any, out: Any) -> None:
            outs = _floats(out)
            if self.forward is None:
                kinds = [k for k in (_kind(o) for o in outs) if k]
                if kinds:
                    self.forward = (name, "nan" if "nan" in kinds else "inf", _finite_max(_floats(args)))
            if m is self.model:
                self.output_max = _finite_max(outs)
            if not torch.is_grad_enabled():
                return
            if leaf:
                for a in _floats(args):
                    if a.requires_grad:
                        a.register_hook(self._bwd(name))
                for o in outs:
                    if o.requires_grad:
                        o.register_hook(self._arrive(name))
            if m is self.model:
                for o in outs:
                    if o.requires_grad:
                        o.register_hook(self._bwd(""))

        return hook

    def _arrive(self, name: str) -> Any:
        def hook(g: torch.Tensor) -> None:
            self.arriving[name] = _finite_max([g])

        return hook

    def _bwd(self, name: str) -> Any:
        def hook(g: torch.Tensor) -> None:
            kind = _kind(g)
            if self.backward is None and kind:
                self.backward = (name, kind, self.arriving.get(name, math.nan) if name else math.nan)

        return hook

    def step_done(self, loss: torch.Tensor) -> None:
        if self.found is None:
            value = float(loss.detach())
            if self.forward is not None:
                name, kind, in_max = self.forward
                self.found = (self.step, name, "forward", kind, in_max)
            elif not math.isfinite(value):
                self.found = (self.step, "", "forward", "nan" if math.isnan(value) else "inf", self.output_max)
            elif self.backward is not None:
                name, kind, in_max = self.backward
                self.found = (self.step, name, "backward", kind, in_max)
        self.forward = self.backward = None
        self.arriving = {}
        self.step += 1


class _RefStepper:
    def __init__(self, ref: Reference) -> None:
        self.ref = ref

    def step(self, loss: torch.Tensor) -> None:
        self.ref.step_done(loss)


def reference_origin(loop: Loop, seed: int = 0) -> tuple[int, str, str, str, float] | None:
    run = loop.build(seed)
    ref = Reference(run.model)
    stepper = _RefStepper(ref)
    for i in range(loop.steps):
        if loop.before is not None:
            loop.before(i, run)
        run.train_step(stepper)
        if ref.found is not None:
            return ref.found
    return None


def watched_run(loop: Loop, seed: int = 0, steps: int | None = None, **options: Any) -> tuple[list[Any], Any]:
    run = loop.build(seed)
    opts = dict(loop.watch_options)
    opts.update(options)
    mon = gradtui.watch(run.model, run.optimizer, queue=100_000, serve=False, **opts)
    bad = 0
    try:
        for i in range(steps or loop.steps):
            if loop.before is not None:
                loop.before(i, run)
            bad += not math.isfinite(run.train_step(mon))
            if bad > 3:
                break
    finally:
        mon.close()
    assert mon.events is not None
    return list(mon.events.drain()), run


BLOWUPS = [MOMENTUM, WARMUP, RELU_RNN, _scenario("relu-explode")]
"""Every loop of the suite that reaches NaN unguarded (the tour's high-lr and deep-linear burst without one)."""


@pytest.mark.parametrize("loop", BLOWUPS, ids=str)
@pytest.mark.parametrize("alarms", [True, False], ids=["armed-by-alarms", "no-time-rerun"])
def test_the_first_nonfinite_module_is_the_one_plain_torch_hooks_find(
    loop: Loop, alarms: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the defaults an alarm arms the capture before the NaN. Where none is armed in time (here:
    no automatic capture at all), the alarms have kept what a re-run needs, and the non-finite step
    is re-run before the optimizer moves."""
    expected = reference_origin(loop)
    assert expected is not None, f"{loop} no longer blows up"
    if not alarms:
        monkeypatch.setattr(capture_mod, "MAX_AUTO", 0)
    events, _ = watched_run(loop)
    origins = [e for e in events if isinstance(e, NonFiniteOrigin)]
    assert origins, f"gradtui named no origin; the reference found {expected}"
    assert len(origins) == 1, [o.words() for o in origins]  # NaN carried on is not named again
    first = origins[0]
    got = (first.step, first.module, first.direction, first.kind)
    assert got == expected[:4], (got, expected, first.words())
    np.testing.assert_allclose(first.input_max, expected[4], rtol=1e-5)
    assert first.how == ("capture" if alarms else "rerun")
    captures = [e for e in events if isinstance(e, Capture)]
    if alarms:
        assert captures and not captures[0].ended
        assert captures[0].start <= first.step < captures[0].start + captures[0].steps
    else:
        assert not captures


class _Amplify(torch.autograd.Function):
    """The identity going forward; going back it multiplies the gradient by 1e39 (Inf in float32)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 1e39


class _GradBomb(nn.Module):
    """Finite going forward, infinite going back from `on` (a custom op gone wrong)."""

    on = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _Amplify.apply(x) if self.on else x
        return out


def _bomb_net(seed: int) -> Any:
    from gradtui.demo.scenarios import ScenarioRun

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), _GradBomb(), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(seed)

    def batches() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(32, 4, generator=gen), torch.randn(32, 1, generator=gen)

    return ScenarioRun(model, torch.optim.SGD(model.parameters(), lr=1e-3), nn.functional.mse_loss, batches)


def _bomb_at_2(step: int, run: Any) -> None:
    run.model[2].on = step >= 2


BACKWARD = Loop("grad-bomb", 5, _bomb_net, _bomb_at_2)


@pytest.mark.parametrize("how", ["capture", "rerun"])
def test_a_gradient_that_breaks_going_back_is_named_where_it_left(how: str) -> None:
    expected = reference_origin(BACKWARD)
    assert expected is not None and expected[:3] == (2, "2", "backward"), expected
    run = BACKWARD.build(0)
    mon = gradtui.watch(run.model, run.optimizer, queue=True, serve=False, detectors=False)
    if how == "capture":
        mon.capture(steps=4)
    else:
        mon._capture.watchful(0)  # as a blow-up alarm at step 0 would: keep what a re-run needs
    for i in range(4):
        _bomb_at_2(i, run)
        run.train_step(mon)
    mon.close()
    assert mon.events is not None
    origins = [e for e in mon.events.drain() if isinstance(e, NonFiniteOrigin)]
    assert [(o.step, o.module, o.direction, o.kind, o.how) for o in origins] == [(*expected[:4], how)]
    np.testing.assert_allclose(origins[0].input_max, expected[4], rtol=1e-5)
    assert "2 gradient passed back" in origins[0].words()


class _ExpGate(nn.Module):
    """exp(scale * x): finite while `scale` is 1, Inf once it is 1000 (tanh's output is in [-1, 1])."""

    scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.scale * x)


def test_a_rerun_names_the_operator_that_overflowed() -> None:
    """The re-run of a non-finite step (no capture armed: detectors off) names the module and the op."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), _ExpGate(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    # Plain torch: at scale 1000 the gate's input is finite and bounded, its exp is not.
    with torch.no_grad():
        into = model[1](model[0](x))
        assert bool(torch.isfinite(1000.0 * into).all()) and not bool(torch.isfinite(torch.exp(1000.0 * into)).all())
    mon = gradtui.watch(model, opt, queue=True, serve=False, detectors=False)
    mon._capture.watchful(0)  # as a blow-up alarm at step 0 would: keep what a re-run needs
    for i in range(3):
        model[2].scale = 1000.0 if i == 2 else 1.0
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    origins = [e for e in mon.events.drain() if isinstance(e, NonFiniteOrigin)]
    assert [(o.step, o.module, o.direction, o.kind, o.how, o.op) for o in origins] == [
        (2, "2", "forward", "inf", "rerun", "aten::exp")
    ]
    assert "(in aten::exp)" in origins[0].words()


# ---------------------------------------------------------------- statistics against plain torch


def test_activation_and_optimizer_statistics_equal_plain_torchs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    names = mon.layer_names
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    for name in names:
        modules[name].register_forward_hook(
            lambda m, a, out, name=name: outputs.__setitem__(name, out.detach().clone())
        )
    expected: dict[int, dict[str, np.ndarray]] = {}
    mon.capture(steps=3)
    for step in range(5):
        x = torch.randn(64, 6)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        ref: dict[str, list[float]] = {k: [] for k in ("rms", "max", "kurt", "m1", "m2")}
        for name in names:
            a = outputs[name].double().reshape(-1)
            ref["rms"].append(float(a.square().mean().sqrt()))
            ref["max"].append(float(a.abs().max()))
            centred = a - a.mean()
            ref["kurt"].append(float(centred.pow(4).mean() / centred.square().mean().square()))
            state = [opt.state.get(p, {}) for p in modules[name].parameters()]
            for key, moment in (("m1", "exp_avg"), ("m2", "exp_avg_sq")):
                found = [s[moment].double().square().sum() for s in state if moment in s]
                ref[key].append(float(torch.stack(found).sum().sqrt()) if found else math.nan)
        expected[step] = {k: np.array(v) for k, v in ref.items()}
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    rows = {e.step: e for e in events if isinstance(e, CaptureStats)}
    assert sorted(rows) == [1, 2, 3], "armed at step 0's boundary: steps 1-3 captured"
    for step, row in rows.items():
        ref = expected[step]
        np.testing.assert_allclose(row.act_rms, ref["rms"], rtol=1e-5)
        np.testing.assert_allclose(row.act_max, ref["max"], rtol=1e-5)
        np.testing.assert_allclose(row.act_kurtosis, ref["kurt"], rtol=1e-5)
        np.testing.assert_allclose(row.opt_m1, ref["m1"], rtol=1e-5)
        np.testing.assert_allclose(row.opt_m2, ref["m2"], rtol=1e-5)
        assert (row.act_nonfinite == 0).all()
    stats = {e.step: e for e in events if isinstance(e, StepStats)}
    assert all(stats[s].max_abs is not None for s in rows), "every capture step is a detail step"


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5),
        lambda ps: torch.optim.Adagrad(ps, lr=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
    ],
    ids=["sgd-momentum", "rmsprop", "adagrad", "adam"],
)
def test_each_optimizers_moments_are_its_own_state(make: Any) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = make(model.parameters())
    keys = {
        "SGD": ("momentum_buffer", None),
        "RMSprop": ("momentum_buffer", "square_avg"),
        "Adagrad": (None, "sum"),
        "Adam": ("exp_avg", "exp_avg_sq"),
    }[type(opt).__name__]
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    mon.capture(steps=2)
    want: dict[int, list[list[float]]] = {}
    for step in range(3):
        loss = model(torch.randn(16, 3)).square().mean()
        opt.zero_grad()
        loss.backward()
        want[step] = [
            [
                float(torch.stack([opt.state[p][k].double().square().sum() for p in m.parameters()]).sum().sqrt())
                if k is not None and all(k in opt.state.get(p, {}) for p in m.parameters())
                else math.nan
                for k in keys
            ]
            for m in (model[0], model[2])
        ]
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    rows = [e for e in mon.events.drain() if isinstance(e, CaptureStats)]
    assert [r.step for r in rows] == [1, 2]
    for r in rows:
        got = np.stack([r.opt_m1, r.opt_m2], axis=1)
        np.testing.assert_allclose(got, np.array(want[r.step]), rtol=1e-5)


# ---------------------------------------------------------------- zero cost while healthy


def test_a_healthy_run_carries_no_per_layer_hooks() -> None:
    from tests.probe.test_every_step import HEALTHY

    run = HEALTHY.build(0)
    before = _hook_count(run.model)
    mon = gradtui.watch(run.model, run.optimizer, queue=True, serve=False)
    counts = []
    for _ in range(120):
        run.train_step(mon)
        counts.append(_hook_count(run.model))
    healthy = counts[-1]
    assert before == {"layers": 0, "root": 0, "param_tensor_hooks": 0, "post_accumulate": 0}
    # The root hooks a re-run needs come only once trouble is near (an alarm); the one
    # parameter hook is the publishing thread's signal (`probe.backward`).
    assert healthy == {"layers": 0, "root": 0, "param_tensor_hooks": 1, "post_accumulate": 0}, healthy
    assert all(c == healthy for c in counts[5:])
    mon.capture(steps=3)
    run.train_step(mon)
    armed = _hook_count(run.model)
    assert armed["layers"] >= 6 and armed["param_tensor_hooks"] == len(list(run.model.parameters())) + 1
    for _ in range(4):
        run.train_step(mon)
    assert _hook_count(run.model) == healthy, "the hooks go when the capture ends"
    mon.close()
    assert _hook_count(run.model) == before
    assert mon.events is not None
    captures = [e for e in mon.events.drain() if isinstance(e, Capture)]
    assert [(c.reason, c.ended) for c in captures] == [("mon.capture()", False), ("mon.capture()", True)]


def test_capture_false_keeps_no_root_hooks_and_arms_nothing_on_trouble() -> None:
    run = BACKWARD.build(0)
    mon = gradtui.watch(run.model, run.optimizer, queue=True, serve=False, capture=False)
    for i in range(4):
        _bomb_at_2(i, run)  # non-finite gradients from step 2
        run.train_step(mon)
        assert _hook_count(run.model)["root"] == 0 and _hook_count(run.model)["layers"] == 0
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    assert not [e for e in events if isinstance(e, (Capture, NonFiniteOrigin))]
    assert any(isinstance(e, StepStats) and e.nonfinite.any() for e in events), "the trouble was there"


def test_watch_capture_refuses_what_is_not_a_number_of_steps() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="capture must be True, False or a number of steps"):
        gradtui.watch(model, capture=0)
    with pytest.raises(ValueError, match="capture must be True, False or a number of steps"):
        gradtui.watch(model, capture="yes")
    mon = gradtui.watch(model, serve=False)
    with pytest.raises(ValueError, match="capture steps must be"):
        mon.capture(steps=0)
    mon.close()


def test_the_capture_command_is_answered_by_the_probe() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    mon.send(CaptureCommand(steps=2))
    mon.send(CaptureCommand(steps=0))
    for _ in range(4):
        loss = model(torch.randn(8, 3)).square().mean()
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    results = [e for e in events if isinstance(e, CommandResult)]
    assert [(r.ok, r.step) for r in results] == [(True, 0), (False, 0)]
    assert "from step 1" in results[0].message and "capture steps must be" in results[1].message
    assert [e.step for e in events if isinstance(e, CaptureStats)] == [1, 2]
    assert [(c.start, c.steps, c.ended) for c in events if isinstance(c, Capture)] == [(1, 2, False), (1, 2, True)]


# ---------------------------------------------------------------- on the record


def test_load_and_report_expose_the_capture(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from gradtui.cli import main

    path = tmp_path / "run.gtr"
    run = BACKWARD.build(0)
    mon = gradtui.watch(run.model, run.optimizer, queue=True, serve=False, detectors=False, record=path)
    mon.capture(steps=4)
    for i in range(6):
        _bomb_at_2(i, run)
        run.train_step(mon)
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    rows = [e for e in events if isinstance(e, CaptureStats)]
    origin = next(e for e in events if isinstance(e, NonFiniteOrigin))

    data = gradtui.load(path)
    assert data.capture.steps.tolist() == [r.step for r in rows] == [1, 2, 3, 4]
    for name in ("act_rms", "act_max", "act_kurtosis", "opt_m1", "opt_m2"):
        want = np.stack([getattr(r, name) for r in rows])
        np.testing.assert_array_equal(getattr(data.capture, name), want)
        assert getattr(data.capture, name).shape == (4, len(data.layers))
    np.testing.assert_array_equal(data.capture.act_nonfinite, np.stack([r.act_nonfinite for r in rows]))
    assert data.capture.windows == [{"start": 1, "steps": 4, "reason": "mon.capture()", "ended": 4}]
    assert [(o["step"], o["module"], o["direction"], o["how"]) for o in data.capture.origins] == [
        (2, "2", "backward", "capture")
    ]

    assert main(["report", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    section = report["capture"]
    assert section["windows"] == data.capture.windows
    assert section["origins"][0]["words"] == origin.words()
    assert [row["name"] for row in section["layers"]] == data.layers
    rms = data.capture.act_rms
    assert section["layers"][0]["act_rms_max"] == pytest.approx(float(np.nanmax(rms[:, 0])))
    assert main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Capture from step 1 to step 4: mon.capture()" in text
    assert " ".join(origin.words().split()) in " ".join(text.split())


def test_a_vanishing_run_arms_one_capture_not_one_per_alarm() -> None:
    """Was: every vanishing alarm raised again armed another capture (up to 8 in a run, each 32
    steps sampled in full), on a net whose layers vanish and recover by turns from step 9."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(50):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(128, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(128, 128), torch.randint(0, 10, (128,))
    mon = gradtui.watch(model, opt, queue=100_000, serve=False)
    for _ in range(400):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = list(mon.events.drain())
    raised = [e for e in events if getattr(e, "kind", None) == "vanishing" and getattr(e, "active", False)]
    armed = [e for e in events if isinstance(e, Capture) and not e.ended]
    assert len(raised) > 1, "the net no longer raises vanishing alarms again: nothing to test"
    assert len(armed) == 1 and armed[0].reason.startswith("vanishing"), [c.reason for c in armed]
