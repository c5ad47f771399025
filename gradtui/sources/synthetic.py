"""Torch-free event sources: synthetic runs for tests, benchmarks and trying the viewer.

`SyntheticRun` plays a fake probe: it makes per-layer statistics for a scenario
(healthy, vanishing, exploding, nan), runs the real detectors over them, and applies
commands at its next step by the probe's own rule, answering each with a `CommandResult`.
With a stride (`every`, which may change mid-run) the steps between two sampled ones travel
as `RunSteps` (their loss and global norm), as the probe sends them.
`ScriptedSource` serves a list of recorded events and/or a `SyntheticRun` through the
`Source` interface. Time comes from the step number, never the wall clock, so that
screens fed from it are reproducible.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Iterable

import numpy as np

from gradtui.model.commands import Command, ControlState, follow_schedule, respond
from gradtui.model.detectors import Detectors
from gradtui.model.events import (
    Event,
    LayerInfo,
    RunEnd,
    RunStart,
    RunSteps,
    StepStats,
    UpdateStats,
)
from gradtui.sources.base import no_detach

SCENARIOS: tuple[str, ...] = ("healthy", "vanishing", "exploding", "nan")

_CALM_STEPS = 40
"""Steps the exploding and nan scenarios train calmly before their norms start to compound."""


def make_layers(n: int, *, prefix: str = "") -> tuple[LayerInfo, ...]:
    """`n` Linear-like layers named like a real model's (blocks of 4 beyond 8 layers)."""
    if n <= 8:
        names = [f"{prefix}fc{i}" for i in range(n)]
    else:
        names = [f"{prefix}blocks.{i // 4}.{('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')[i % 4]}" for i in range(n)]
    return tuple(LayerInfo(name, "Linear", 1000 + 10 * i) for i, name in enumerate(names))


class SyntheticRun:
    """A deterministic fake training run that obeys commands exactly as the probe does.

    Commands go through `gradtui.model.commands.respond`, the rule the probe applies, and
    alerts come from the real `Detectors`: a screen fed by this run shows what a real run
    would say, never words or thresholds of its own.

    Args:
        scenario: One of SCENARIOS.
        n_layers: Number of layers.
        seed: RNG seed.
        detail_every: Steps between detail statistics (mean/max |g|, update ratio).
        lr: Initial learning rate (one param group).
        clip_mode: Initial clip mode.
        clip_threshold: Initial clip threshold.
        run: Run name.
        start_time: Unix time of step 0 (fixed, so screens are reproducible).
        dt: Seconds per step.
        fail_at: Step at which the "training process" raises (a RunEnd with a traceback).
        every: Sample the per-layer statistics every `every` steps (the attribute may be changed
            between steps: the next sample comes `every` steps after the last one).
    """

    def __init__(
        self,
        scenario: str = "healthy",
        n_layers: int = 8,
        *,
        seed: int = 0,
        detail_every: int = 10,
        lr: float = 0.1,
        clip_mode: str = "off",
        clip_threshold: float = 1.0,
        run: str = "synthetic",
        start_time: float = 1_700_000_000.0,
        dt: float = 0.01,
        fail_at: int | None = None,
        every: int = 1,
    ) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (expected one of {', '.join(SCENARIOS)})")
        self.scenario = scenario
        self.layers = make_layers(n_layers)
        self.rng = np.random.default_rng(seed)
        self.detail_every = detail_every
        self.state = ControlState(
            lrs=(lr,), clip_mode=clip_mode, clip_threshold=clip_threshold, loop_clip=(clip_mode, clip_threshold)
        )
        """What commands have set: learning rate, clipping, pause."""
        self.run = run
        self.start_time = start_time
        self.dt = dt
        self.fail_at = fail_at
        self.every = every
        """Steps between two sampled steps (1: every step)."""
        self._next_sample = 0
        self._unsampled: list[tuple[int, float, float]] = []
        """(step, loss, global norm) of the unsampled steps not sent yet."""
        self.step_no = 0
        self.ended = False
        self.commands: queue.Queue[Command] = queue.Queue()
        self.detectors = Detectors([x.name for x in self.layers], numel=[x.numel for x in self.layers])
        self._depth = np.linspace(0.0, 1.0, max(1, n_layers))
        self._base = 0.1 * (1.0 + 0.5 * np.sin(np.arange(n_layers) * 1.7))
        self._growth = 0.0
        self.started = False

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.state.lrs

    @property
    def clip_mode(self) -> str:
        return self.state.clip_mode

    @property
    def clip_threshold(self) -> float:
        return self.state.clip_threshold

    @property
    def paused(self) -> bool:
        return self.state.paused

    # ------------------------------------------------------------ probe side

    def start_event(self) -> RunStart:
        """The run's first event."""
        self.started = True
        return RunStart(
            run=self.run,
            pid=4242,
            started=self.start_time,
            layers=self.layers,
            lrs=self.lrs,
            clip_mode=self.clip_mode,
            clip_threshold=self.clip_threshold,
            every=max(1, self.every),
            detail_every=self.detail_every,
            device="cpu",
            script="synthetic.py",
        )

    def _apply_commands(self, step: int | None = None) -> list[Event]:
        """Apply queued commands, answering each with the step it took effect at."""
        at = self.step_no if step is None else step
        out: list[Event] = []
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return out
            self.state, result = respond(self.state, cmd, at)
            out.append(result)

    def _norms(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.step_no
        n = len(self.layers)
        noise = np.exp(self.rng.normal(0.0, 0.15, n))
        nonfinite = np.zeros(n, np.int64)
        if self.scenario == "healthy":
            norms = self._base * noise
        elif self.scenario == "vanishing":
            # Deeper layers (lower index: further from the loss) lose decades as training goes on.
            decades = (1.0 - self._depth) * min(1.0, s / 150) * 9.0
            norms = self._base * noise * 10.0 ** (-decades)
        else:
            # Calm for a while, then compounding growth, faster with the learning rate; clipping
            # does not stop it (as in life: it bounds the step, not what backward produces).
            if s >= _CALM_STEPS:
                self._growth += 0.12 * (self.lrs[0] / 0.1)
            decades = self._depth * self._growth
            with np.errstate(over="ignore"):  # a long exploding run passes float64's range: inf, counted below
                norms = self._base * noise * 10.0**decades
            if self.scenario == "nan" and s >= 120:
                bad = self._depth > 0.6
                norms = np.where(bad, np.nan, norms)
                nonfinite = np.where(bad, 17, 0).astype(np.int64)
            elif self.scenario == "exploding":
                # Past 1e30 the values themselves overflow, as in a real run: the probe counts them
                # (an infinite norm over finite values is an overflow of the norm, not a NaN/Inf).
                over = norms > 1e30
                norms = np.where(over, np.inf, norms)
                nonfinite = np.where(over, 3, 0).astype(np.int64)
        return norms, nonfinite

    def step(self) -> list[Event]:
        """Events of one training step.

        Like the probe: commands are applied first; a pause takes effect after this step's
        statistics are sent, and while paused only commands are answered (at that step).
        """
        if self.ended:
            return []
        out: list[Event] = [] if self.started else [self.start_event()]
        if self.paused:
            out.extend(self._apply_commands(self.step_no - 1))
            if self.paused:
                return out
        # As the probe does: the loop's learning rate (constant here) first, then the overrides on it.
        self.state = follow_schedule(self.state, self.state.schedule)
        out.extend(self._apply_commands())
        if self.fail_at is not None and self.step_no >= self.fail_at:
            self.ended = True
            out.extend(self.flush())
            out.append(RunEnd(self.step_no, "error", error=_FAKE_TRACEBACK.format(step=self.step_no)))
            return out
        norms, nonfinite = self._norms()
        n = len(self.layers)
        finite = np.isfinite(norms)
        global_norm = float(np.sqrt(np.sum(np.square(norms)))) if finite.all() else float("nan")
        factor = 1.0
        if self.clip_mode == "norm" and math.isfinite(global_norm) and global_norm > self.clip_threshold:
            factor = self.clip_threshold / global_norm
        detail = self.step_no % self.detail_every == 0
        if self.scenario == "healthy":
            loss = 2.0 * math.exp(-self.step_no / 200) + 0.05
        else:
            # Vanishing: the loss stalls early, as it does when the first layers stop learning.
            loss = 1.6 + 0.7 * math.exp(-self.step_no / 40) + 0.02 * math.sin(self.step_no / 7)
        if self.scenario in ("exploding", "nan"):
            loss = 0.5 + 0.01 * float(np.nansum(norms)) if finite.all() else float("nan")
        if self.step_no < self._next_sample:
            # Not sampled: the run-wide values go to the detectors now and to the viewers with
            # the next sampled step (or before an alert about them, to keep events in step order).
            self._unsampled.append((self.step_no, loss, global_norm))
            alerts = self.detectors.update_run(self.step_no, loss, global_norm)
            if alerts:
                out.extend(self.flush())
                out.extend(alerts)
            self.step_no += 1
            return out
        out.extend(self.flush())
        self._next_sample = self.step_no + max(1, self.every)
        size = np.array([info.numel for info in self.layers], np.float64)
        stats = StepStats(
            step=self.step_no,
            time=self.start_time + self.step_no * self.dt,
            loss=loss,
            lrs=self.lrs,
            schedule_lrs=self.state.schedule,
            grad_norm=norms,
            has_grad=np.ones(n, bool),
            nonfinite=nonfinite,
            global_norm=global_norm,
            clipped_norm=global_norm * factor,
            clip_factor=factor,
            clip_mode=self.clip_mode,
            clip_threshold=self.clip_threshold,
            steps_per_sec=1.0 / self.dt,
            paused=self.paused,
            mean_abs=norms / np.sqrt(size) if detail else None,
            max_abs=norms / np.sqrt(size) * 6.0 if detail else None,
            zero_frac=np.zeros(n) if detail else None,
            weight_norm=np.full(n, 3.0) if detail else None,
        )
        out.append(stats)
        if detail:
            out.append(UpdateStats(self.step_no, self.lrs[0] * norms / 3.0))
        out.extend(self.detectors.update(stats))
        self.step_no += 1
        return out

    def flush(self) -> list[Event]:
        """The unsampled steps not sent yet, as one `RunSteps` (none when there are none)."""
        if not self._unsampled:
            return []
        steps, losses, norms = zip(*self._unsampled, strict=True)
        self._unsampled = []
        return [
            RunSteps(
                step=steps[-1],
                steps=np.array(steps, np.int64),
                loss=np.array(losses, np.float64),
                global_norm=np.array(norms, np.float64),
            )
        ]

    def events(self, steps: int) -> list[Event]:
        """The events of the next `steps` steps (unsampled ones among the last included)."""
        out: list[Event] = []
        for _ in range(steps):
            out.extend(self.step())
        out.extend(self.flush())
        return out


_FAKE_TRACEBACK = """Traceback (most recent call last):
  File "synthetic.py", line 42, in <module>
    loss.backward()
RuntimeError: CUDA error: an illegal memory access was encountered (step {step})
"""


class ScriptedSource:
    """A `Source` that serves recorded events, then (optionally) a live `SyntheticRun`.

    Args:
        events: Events handed out by the first polls, in order.
        run: A synthetic run that keeps producing steps and answers commands.
        steps_per_poll: Steps of `run` made at each poll (0: the run only answers commands).
        name: Shown in the header.
        owns_process: Pretend to own a child process (the viewer then asks before quitting).
    """

    can_detach = False
    controls = None
    detach = no_detach

    def __init__(
        self,
        events: Iterable[Event] = (),
        *,
        run: SyntheticRun | None = None,
        steps_per_poll: int = 0,
        name: str = "scripted",
        owns_process: bool = False,
    ) -> None:
        self.name = name
        self.owns_process = owns_process
        self.run = run
        self.steps_per_poll = steps_per_poll
        self._backlog: list[Event] = list(events)
        self.sent: list[Command] = []
        self.closed = False

    def feed(self, events: Iterable[Event]) -> None:
        """Add events for the next poll."""
        self._backlog.extend(events)

    def poll(self, max_events: int = 100_000) -> list[Event]:
        if self.closed:
            return []
        if self.run is not None:
            if self.steps_per_poll:
                self._backlog.extend(self.run.events(self.steps_per_poll))
            else:
                # Still answer commands (and resumes) while no steps are being made.
                self._backlog.extend(self.run._apply_commands(self.run.step_no - 1 if self.run.paused else None))
        out, self._backlog = self._backlog[:max_events], self._backlog[max_events:]
        return out

    def send(self, command: Command) -> str | None:
        if self.closed:
            return "the source is closed"
        self.sent.append(command)
        if self.run is None:
            return None
        self.run.commands.put(command)
        return None

    def close(self) -> None:
        self.closed = True
