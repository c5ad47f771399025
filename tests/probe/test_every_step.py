"""Detection and the guard do not depend on the sampling stride (DESIGN.md, "Two tiers of watching").

At the default settings (`gradtui.watch(model, opt)`, no `every=`) the overhead budget samples
per-layer statistics only every 2 to 32 steps on these small CPU models. The run-wide signals
(loss, global gradient norm, non-finite values) must still reach the detectors and the guard at
every step: a blow-up is flagged before its first non-finite value and no more than a step after
`every=1` flags it, a one-batch loss spike is flagged at its step, a dead layer within about a
stride of when `every=1` flags it, and the guard heals what it heals at `every=1`.

The rest of the suite runs with `GRADTUI_BUDGET=off` (tests/conftest.py); every test here takes it
away again so that the probe runs at its real defaults, and trains each loop both ways. The
training trajectory does not depend on the stride (no clipping, no guard: the probe only
reads), so the two runs of a loop meet the same non-finite step.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradtui
from gradtui.demo.scenarios import ScenarioRun, get
from gradtui.model.events import Alert, Event, GuardAction, RunStart, RunSteps, StepStats, run_rows

BLOWUP_KINDS = ("exploding", "nonfinite", "loss_spike")
ALARM_LEVELS = ("warning", "critical")
STRIDE_SLACK = 32
"""The most steps between two sampled steps at the default budget (`gradtui.probe.budget.MAX_STRIDE`)."""


@pytest.fixture(autouse=True)
def real_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The probe at its real defaults (the suite's own fixture leaves `GRADTUI_BUDGET` unset), on one thread."""
    monkeypatch.delenv("GRADTUI_DETECTORS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- the loops


@dataclass(frozen=True)
class Loop:
    """A seeded training setup and what happens to it at given steps."""

    name: str
    steps: int
    build: Callable[[int], ScenarioRun]
    before: Callable[[int, ScenarioRun], None] | None = None
    """Called before each step's batch and forward (an LR schedule, a bump, a layer killed)."""
    watch_options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


@functools.cache
def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=512, n_features=10, n_informative=8, noise=5.0, random_state=0)
    # Unnormalised targets (std about 16): big residuals, big gradients.
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(0.1 * y, dtype=torch.float32)[:, None]


@functools.cache
def _moons_data(noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=1000, noise=noise, random_state=0)
    x = (x - x.mean(0)) / x.std(0)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _sampler(
    x: torch.Tensor, y: torch.Tensor, batch: int, seed: int
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1000 + seed)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        return x[idx], y[idx]

    return next_batch


def _mlp(sizes: list[int], seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(a, b)
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)


def _set_lr(run: ScenarioRun, lr: float) -> None:
    for group in run.optimizer.param_groups:
        group["lr"] = lr


# An SGD+momentum ReLU regression net whose learning rate rises: healthy for about 40 steps, then
# NaN within a few steps of its first alarm.
MOMENTUM_LR, MOMENTUM_RAMP = 0.03, 100


def _momentum_relu(seed: int) -> ScenarioRun:
    model = _mlp([10, 64, 64, 64, 1], seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return ScenarioRun(model, opt, nn.functional.mse_loss, _sampler(*_regression_data(), batch=64, seed=seed))


def _momentum_before(step: int, run: ScenarioRun) -> None:
    _set_lr(run, MOMENTUM_LR * min(1.0, (step + 1) / MOMENTUM_RAMP))


# Plain SGD with a linear LR warm-up that passes the stability limit past the middle of the run.
WARMUP_LR, WARMUP_STEPS = 0.05, 200


def _warmup_build(seed: int) -> ScenarioRun:
    model = _mlp([10, 64, 64, 64, 1], seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return ScenarioRun(model, opt, nn.functional.mse_loss, _sampler(*_regression_data(), batch=64, seed=seed))


def _warmup_before(step: int, run: ScenarioRun) -> None:
    _set_lr(run, WARMUP_LR * (step + 1) / WARMUP_STEPS)


# A ReLU RNN (identity-initialised, no biases) trained through 30 time steps on a running sum, with
# SGD+momentum whose learning rate rises over the run: backpropagation through time blows up near
# step 200.
RNN_LEN, RNN_LR, RNN_RAMP = 30, 0.04, 300


class _ReluRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, 32, nonlinearity="relu", bias=False, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        result: torch.Tensor = self.head(out[:, -1])
        return result


def _relu_rnn(seed: int) -> ScenarioRun:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _ReluRNN()
        with torch.no_grad():
            model.rnn.get_parameter("weight_hh_l0").copy_(torch.eye(32) + 0.01 * torch.randn(32, 32))
    x = torch.rand(512, RNN_LEN, 1, generator=torch.Generator().manual_seed(2000 + seed))
    y = x.sum(dim=1) - RNN_LEN / 2
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return ScenarioRun(model, opt, nn.functional.mse_loss, _sampler(x, y, batch=256, seed=seed))


def _rnn_before(step: int, run: ScenarioRun) -> None:
    _set_lr(run, RNN_LR * min(1.0, (step + 1) / RNN_RAMP))


# A healthy classifier: a ReLU MLP on the two moons.
def _moons(seed: int, lr: float = 1e-2, momentum: float | None = None, noise: float = 0.1) -> ScenarioRun:
    model = _mlp([2, 64, 64, 64, 2], seed)
    opt: torch.optim.Optimizer
    if momentum is None:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return ScenarioRun(model, opt, nn.functional.cross_entropy, _sampler(*_moons_data(noise), batch=32, seed=seed))


def _scenario(name: str, steps: int | None = None) -> Loop:
    scenario = get(name)
    return Loop(
        f"demo:{name}",
        steps or scenario.steps,
        lambda seed: scenario.build(seed, "cpu"),
        watch_options=dict(scenario.watch_options),
    )


MOMENTUM = Loop("momentum-relu", 200, _momentum_relu, _momentum_before)
WARMUP = Loop("lr-warmup", 200, _warmup_build, _warmup_before)
RELU_RNN = Loop("relu-rnn", 300, _relu_rnn, _rnn_before)
HEALTHY = Loop("moons-adam", 300, _moons)


# ---------------------------------------------------------------- training and what it left


@dataclass
class Run:
    """What one watched run left: its losses, the ground truth of finiteness and the probe's events."""

    loop: Loop
    every: int | None
    losses: list[float] = field(default_factory=list)
    finite: list[bool] = field(default_factory=list)
    """Per step, measured by the test itself: the loss and the gradients' float32 L2 norm were finite."""
    norms: list[float] = field(default_factory=list)
    """Per step, measured by the test itself: the L2 norm of all gradients."""
    layer_norms: list[dict[str, float]] = field(default_factory=list)
    """Per step, measured by the test itself: each module's gradient L2 norm, by module name."""
    start: RunStart | None = None
    stats: list[StepStats] = field(default_factory=list)
    run_steps: list[RunSteps] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    guard: list[GuardAction] = field(default_factory=list)

    @property
    def first_nonfinite(self) -> int | None:
        return next((i for i, ok in enumerate(self.finite) if not ok), None)

    @property
    def sampled(self) -> list[int]:
        return [s.step for s in self.stats]

    @property
    def max_stride(self) -> int:
        """The largest gap between two sampled steps (1: every step was sampled)."""
        steps = self.sampled
        return max((b - a for a, b in zip(steps, steps[1:], strict=False)), default=1)

    def alarms(self, *kinds: str) -> list[Alert]:
        """Raised flags at warning or critical level (of `kinds`, or any)."""
        return [a for a in self.alerts if a.active and a.level in ALARM_LEVELS and (not kinds or a.kind in kinds)]

    def first_alarm(self, *kinds: str, layer: str | None | bool = True) -> int | None:
        """Step of the first alarm of `kinds` (on `layer` when given, None for the run)."""
        return min((a.step for a in self.alarms(*kinds) if layer is True or a.layer == layer), default=None)

    def up_at(self, step: int, kinds: tuple[str, ...] = BLOWUP_KINDS) -> list[Alert]:
        """The alarms of `kinds` (warning or critical) up at `step`: raised at or before it, not cleared since."""
        up: dict[tuple[str | None, str], Alert] = {}
        for a in self.alerts:
            if a.step > step:
                break
            if a.kind not in kinds:
                continue
            if a.active:
                up[(a.layer, a.kind)] = a  # a raise, or an escalation of a flag already up
            else:
                up.pop((a.layer, a.kind), None)
        return [a for a in up.values() if a.level in ALARM_LEVELS]

    def first_action(self) -> int | None:
        """Step of the guard's first skip or rollback."""
        return min((g.step for g in self.guard if g.action in ("skip", "rollback")), default=None)

    def series(self) -> dict[int, tuple[float, float]]:
        """Step -> (loss, global norm) as the probe reported them: sampled steps from `StepStats`,
        the others from `RunSteps` (each step once; the norm NaN where the step measured canaries)."""
        out: dict[int, tuple[float, float]] = {}
        for r in self.run_steps:
            for step, loss, norm, _ in run_rows(r):
                assert step not in out, f"step {step} reported twice"
                out[step] = (loss, math.nan if norm is None else norm)
        for s in self.stats:
            assert s.step not in out, f"step {s.step} reported twice"
            out[s.step] = (s.loss, s.global_norm)
        return dict(sorted(out.items()))

    def mean_loss(self, last: int) -> float:
        return float(np.mean(self.losses[-last:]))

    def summary(self) -> str:
        return (
            f"{self.loop.name} every={self.every}: max stride {self.max_stride}, "
            f"first alarm {self.first_alarm(*BLOWUP_KINDS)}, first non-finite {self.first_nonfinite}, "
            f"guard {[(g.step, g.action) for g in self.guard][:6]}"
        )


class _Checked:
    """Stands between the loop and the monitor: records whether the loss and the gradients are
    finite (the ground truth, whatever the probe samples), then calls `mon.step`."""

    def __init__(self, mon: Any, model: nn.Module, out: Run) -> None:
        self.mon, self.params, self.out = mon, [p for p in model.parameters() if p.requires_grad], out
        self.named = list(model.named_parameters())

    def step(self, loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch.stack([g.detach().norm() for g in grads])
        # In float32, as the probe measures: a norm that overflows counts as non-finite (the
        # detectors flag it as such), though every value is finite.
        total = torch.linalg.vector_norm(norms)
        self.out.finite.append(bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(total)))
        self.out.norms.append(float(torch.linalg.vector_norm(torch.stack([g.detach().double().norm() for g in grads]))))
        by_module: dict[str, float] = {}
        for name, p in self.named:
            if p.grad is not None:
                module = name.rpartition(".")[0]
                by_module[module] = by_module.get(module, 0.0) + float(p.grad.detach().double().square().sum())
        self.out.layer_norms.append({k: math.sqrt(v) for k, v in by_module.items()})
        if self.mon is not None:
            self.mon.step(loss)


def train(
    loop: Loop,
    every: int | None = None,
    *,
    guard: bool = False,
    seed: int = 0,
    watched: bool = True,
    stop_after_nonfinite: int | None = None,
    slow_sink: float = 0.0,
) -> Run:
    """Train `loop` under `gradtui.watch` (at the defaults when `every` is None; no probe at all
    when not `watched`) and collect its events. `stop_after_nonfinite`: end the run that many
    steps after its first non-finite step. `slow_sink`: seconds an extra sink takes over each
    event (a publishing thread held up: a loaded machine, a slow disk)."""
    run = loop.build(seed)
    out = Run(loop, every)
    options = dict(loop.watch_options)
    if every is not None:
        options["every"] = every
    mon = (
        gradtui.watch(run.model, run.optimizer, queue=100_000, serve=False, guard=guard, **options) if watched else None
    )
    if mon is not None and slow_sink:
        mon.add_sink(_SlowSink(slow_sink))
    checked = _Checked(mon, run.model, out)
    try:
        for i in range(loop.steps):
            if loop.before is not None:
                loop.before(i, run)
            out.losses.append(run.train_step(checked))
            bad = out.first_nonfinite
            if stop_after_nonfinite is not None and bad is not None and i >= bad + stop_after_nonfinite:
                break
    finally:
        if mon is not None:
            mon.close()
    if mon is None:
        return out
    assert mon.events is not None
    for event in mon.events.drain():
        if isinstance(event, RunStart):
            out.start = event
        elif isinstance(event, StepStats):
            out.stats.append(event)
        elif isinstance(event, RunSteps):
            out.run_steps.append(event)
        elif isinstance(event, Alert):
            out.alerts.append(event)
        elif isinstance(event, GuardAction):
            out.guard.append(event)
    assert out.start is not None and out.stats, "the queue lost the run"
    if every is None:
        assert out.start.budget > 0, "GRADTUI_BUDGET is still set: the probe did not run at its defaults"
    return out


class _SlowSink:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def emit(self, event: Event, frame: bytes | None = None) -> None:
        time.sleep(self.seconds)

    def close(self) -> None:
        pass


def same(a: list[float], b: list[float]) -> bool:
    """Bit for bit, NaN equal to NaN."""
    return np.array_equal(np.array(a), np.array(b), equal_nan=True)


def describe(*runs: Run) -> str:
    return "\n".join(r.summary() for r in runs)


# ---------------------------------------------------------------- 1. every blow-up is flagged before its NaN

PARITY = [
    MOMENTUM,
    WARMUP,
    RELU_RNN,
    _scenario("relu-explode"),
    _scenario("high-lr", steps=40),  # alarms from the first steps on, never a NaN: 40 steps show it
    _scenario("deep-linear", steps=40),
]


@pytest.mark.parametrize("loop", PARITY, ids=str)
def test_a_blowup_is_flagged_at_the_defaults_as_early_as_at_every_step(loop: Loop) -> None:
    exact = train(loop, 1, stop_after_nonfinite=2)
    default = train(loop, stop_after_nonfinite=2)
    why = describe(exact, default)
    # The probe only reads: both runs are the same run, step for step.
    assert same(default.losses, exact.losses), why
    nan = exact.first_nonfinite
    if nan is None:
        # A run that bursts without reaching NaN (high-lr, deep-linear): its first alarm.
        flagged = exact.first_alarm(*BLOWUP_KINDS)
        assert flagged is not None, f"the loop no longer blows up on this machine\n{why}"
        assert default.up_at(flagged + 1), f"flagged at every=1 at step {flagged}, not at the defaults\n{why}"
        return
    # Where every=1 flags the blow-up: the first step of the stretch of alarms that is still up
    # the step before the NaN.
    assert exact.up_at(nan - 1), f"every=1 does not flag this blow-up before its NaN here\n{why}"
    flagged = nan - 1
    while flagged > 0 and exact.up_at(flagged - 1):
        flagged -= 1
    # At the defaults an alarm is up no more than a step later, and before the NaN.
    by = min(flagged + 1, nan - 1)
    assert default.up_at(by), (
        f"every=1 flags the blow-up at step {flagged}, its first non-finite step is {nan}; at the defaults "
        f"no alarm is up at step {by} (first alarm {default.first_alarm(*BLOWUP_KINDS)}, "
        f"stride up to {default.max_stride})\n{why}"
    )


# ---------------------------------------------------------------- 2. a one-batch loss spike

SPIKE_STEP = 150


class _Spiked:
    """A batch stream whose `step`-th batch has its inputs scaled by `factor`."""

    def __init__(self, batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], step: int, factor: float) -> None:
        self.batches, self.step, self.factor, self.calls = batches, step, factor, 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batches()
        if self.calls == self.step:
            x = x * self.factor
        self.calls += 1
        return x, y


def _spiked(seed: int) -> ScenarioRun:
    # Overlapping moons: the loss settles near 0.3 instead of falling toward 0 (where a batch can
    # cost 100x the median with nothing wrong), so the bad batch stands out.
    run = _moons(seed, lr=3e-3, noise=0.3)
    run.batches = _Spiked(run.batches, SPIKE_STEP, 1000.0)
    return run


SPIKE = Loop("moons-spike", 300, _spiked)


def test_a_single_bad_batch_is_flagged_as_a_loss_spike_at_its_step() -> None:
    exact, default = train(SPIKE, 1), train(SPIKE)
    why = describe(exact, default)
    assert exact.first_nonfinite is None and same(default.losses, exact.losses)
    before = float(np.median(exact.losses[SPIKE_STEP - 20 : SPIKE_STEP]))
    assert exact.losses[SPIKE_STEP] > 100 * before, "the bad batch costs at least 100x the others"
    assert SPIKE_STEP in [a.step for a in exact.alarms("loss_spike")], why
    spikes = [a.step for a in default.alarms("loss_spike")]
    assert SPIKE_STEP in spikes, f"no loss-spike alarm at step {SPIKE_STEP} at the defaults: {spikes}\n{why}"


# ---------------------------------------------------------------- 3. a learning rate bumped mid-run

BUMP_STEP, BUMP_FACTOR = 120, 50.0


def _bumped_build(seed: int) -> ScenarioRun:
    return _moons(seed, lr=0.05, momentum=0.9)


def _bump(step: int, run: ScenarioRun) -> None:
    if step == BUMP_STEP:
        _set_lr(run, 0.05 * BUMP_FACTOR)


BUMP = Loop("moons-lr-bump", 200, _bumped_build, _bump)


def test_a_learning_rate_bump_is_flagged_at_the_defaults_within_two_steps_of_every_step() -> None:
    exact = train(BUMP, 1, stop_after_nonfinite=2)
    default = train(BUMP, stop_after_nonfinite=2)
    why = describe(exact, default)
    assert same(default.losses, exact.losses)
    flagged = min((a.step for a in exact.alarms(*BLOWUP_KINDS) if a.step >= BUMP_STEP), default=None)
    assert flagged is not None and flagged < BUMP_STEP + 10, f"every=1 does not flag the bump\n{why}"
    nan = exact.first_nonfinite
    by = flagged + 2 if nan is None else min(flagged + 2, nan - 1)
    assert default.up_at(by), (
        f"every=1 flags the bump at step {flagged}; at the defaults no alarm is up at step {by} "
        f"(first alarm {default.first_alarm(*BLOWUP_KINDS)})\n{why}"
    )


# ---------------------------------------------------------------- 4. a layer that dies early

DEATH_STEP = 19


def _kill(step: int, run: ScenarioRun) -> None:
    if step == DEATH_STEP:
        with torch.no_grad():
            # Every pre-activation of the second hidden layer far below zero: its ReLU passes no
            # gradient, so this layer's (and the first layer's) gradient is exactly zero from here on.
            run.model.get_parameter("2.bias").fill_(-1e4)


DYING = Loop("moons-dead-layer", 200, _moons, _kill)


def test_a_layer_that_dies_is_flagged_dead_about_as_many_steps_later_as_at_every_step() -> None:
    exact, default = train(DYING, 1), train(DYING)
    why = describe(exact, default)
    assert same(default.losses, exact.losses)
    for run in (exact, default):
        assert run.first_nonfinite is None
        assert run.start is not None
        col = [layer.name for layer in run.start.layers].index("2")
        assert all(s.grad_norm[col] == 0.0 for s in run.stats if s.step > DEATH_STEP), "layer 2 is not dead"
    dead_exact = exact.first_alarm("dead", layer="2")
    assert dead_exact is not None and DEATH_STEP < dead_exact <= DEATH_STEP + 40, why
    dead_default = default.first_alarm("dead", layer="2")
    assert dead_default is not None, (
        f"layer 2 died at step {DEATH_STEP}, every=1 flags it at step {dead_exact}; at the defaults it is "
        f"never flagged in {DYING.steps} steps (stride up to {default.max_stride})\n{why}"
    )
    assert DEATH_STEP < dead_default <= dead_exact + STRIDE_SLACK, why


# ---------------------------------------------------------------- 5. the guard heals every blow-up

GUARDED = [
    (MOMENTUM, 0),
    (MOMENTUM, 2),
    (WARMUP, 0),
    (RELU_RNN, 1),
    (_scenario("relu-explode"), 0),
    (_scenario("high-lr", steps=60), 0),
]
GUARD_LAG = 3
"""Steps the guard's first act may come after the one at every=1. Not the publishing thread's lag:
the guard waits for its judgement at each step (test_the_guard_acts_at_the_same_step_however_slow_the_
publishing_thread). At the defaults an unsampled step is judged on its run-wide values and sampled whole
only once they look unusual, so the alarm the guard acts on may come a step or two later."""


@pytest.mark.parametrize(("loop", "seed"), GUARDED, ids=[f"{loop}-seed{seed}" for loop, seed in GUARDED])
def test_the_guard_heals_a_blowup_at_the_defaults_as_at_every_step(loop: Loop, seed: int) -> None:
    exact = train(loop, 1, guard=True, seed=seed)
    default = train(loop, guard=True, seed=seed)
    why = describe(exact, default)
    first = exact.first_alarm(*BLOWUP_KINDS)
    assert first is not None and math.isfinite(exact.losses[first]), why
    acted = exact.first_action()
    assert acted is not None, f"the guard does not act at every=1 here\n{why}"
    # Healed: finite to the end, and the loss back below where the alarm went up.
    assert all(math.isfinite(x) for x in default.losses[-20:]), why
    assert default.mean_loss(20) < exact.losses[first], (
        f"at the defaults the guarded run ends at loss {default.mean_loss(20):.4g}, not below "
        f"{exact.losses[first]:.4g} where the alarm went up at every=1 "
        f"(there it ends at {exact.mean_loss(20):.4g})\n{why}"
    )
    assert default.guard, why
    # The guard acts when it does at every=1 (the two runs are the same run until it acts).
    late = default.first_action()
    assert late is not None and late <= acted + GUARD_LAG, (
        f"the guard first acts at step {acted} at every=1, at step {late} at the defaults\n{why}"
    )


def test_the_guard_acts_at_the_same_step_however_slow_the_publishing_thread() -> None:
    """The alarms the guard acts on are judged on the publishing thread; at each step the guard
    waits for the judgement of the steps before, so a thread held up (here 10 ms an event, many
    times the step) does not move the step it acts at."""
    quick = train(MOMENTUM, 1, guard=True)
    slow = train(MOMENTUM, 1, guard=True, slow_sink=0.01)
    acted = quick.first_action()
    assert acted is not None, describe(quick)
    assert slow.first_action() == acted, describe(quick, slow)
    assert [(g.step, g.action) for g in slow.guard] == [(g.step, g.action) for g in quick.guard]


# ---------------------------------------------------------------- 6. a healthy run is left alone


@functools.cache
def _healthy() -> tuple[Run, Run]:
    return train(HEALTHY, guard=True), train(HEALTHY, watched=False)


def test_a_healthy_run_at_the_defaults_raises_no_alarm_and_the_guard_leaves_it_bit_for_bit() -> None:
    guarded, bare = _healthy()
    assert guarded.max_stride > 1, "the budget never sampled less than every step: nothing to compare"
    assert guarded.alarms() == [], describe(guarded)
    assert guarded.guard == []
    assert guarded.losses == bare.losses  # no NaN here: plain equality is bit for bit
    assert guarded.mean_loss(20) < 0.1 * float(np.mean(guarded.losses[:20]))  # and it learns


def test_every_step_reports_its_loss_and_global_norm_once_whatever_the_stride() -> None:
    guarded, _ = _healthy()
    series = guarded.series()
    assert list(series) == list(range(HEALTHY.steps)), (
        f"the probe reported the run-wide signals of {len(series)} of {HEALTHY.steps} steps "
        f"({len(guarded.run_steps)} RunSteps events, stride up to {guarded.max_stride})"
    )
    losses = np.array([v[0] for v in series.values()])
    norms = np.array([v[1] for v in series.values()])
    np.testing.assert_array_equal(losses, np.array(guarded.losses))
    measured = ~np.isnan(norms)
    assert measured[guarded.sampled].all(), "a sampled step without its global norm"
    np.testing.assert_allclose(norms[measured], np.array(guarded.norms)[measured], rtol=1e-4)
    # A step that measured its canary layers in place of every gradient: their norms, as torch has them.
    assert guarded.start is not None
    names = [layer.name for layer in guarded.start.layers]
    for r in guarded.run_steps:
        for step, _, norm, canary in run_rows(r):
            assert (norm is None) == (canary is not None)
            if canary is not None:
                want = [guarded.layer_norms[step][names[i]] for i in canary[0].tolist()]
                np.testing.assert_allclose(canary[1], want, rtol=1e-5)
