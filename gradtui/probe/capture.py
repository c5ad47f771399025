"""Deep capture: instruments armed by trouble, for `DEFAULT_STEPS` steps, and where a run broke.

Nothing here costs anything while a run is healthy: no per-layer hook is installed until an
alarm at warning or critical level (the Judge, on the publishing thread, only *requests* a
capture), a non-finite loss or gradient, `mon.capture()` or a viewer's `Capture` command. The
hooks go in at the next `mon.step` boundary, on the training thread, and come out at the end.

While armed, every step is sampled with the detail statistics, and `Checks`:
- for each watched layer, sums of the powers 0-4 of its forward output's finite values, their
  max |a| and its NaN/Inf count, accumulated on the device (`torch.stack(...)` added into a
  preallocated tensor; no host read): rms, max, kurtosis follow on the host;
- finiteness checks on every module's forward output (in the order the forward hooks fire:
  a module's children finish before it) and on the gradients backward passes back (tensor hooks
  on each leaf module's inputs and the watched parameters, and on the model's output: the
  gradient the loss passed back), keeping the first of each on the device as a call number, its
  kind and its input's max |x| (`torch.where` on flag tensors, read with the step's statistics).
Each layer's optimizer moments (`moment_tensors`) are measured at each capture step's
`mon.step`, the state that step's update starts from. The results ride in the sampled step's
vector (segments `cap_*` of `packed.SEGMENTS`) and become `CaptureStats` and `NonFiniteOrigin`
events on the publishing thread (`CaptureDecoder`).

The hard case is a blow-up that leaves no time: the step that overflows is also the one whose
optimizer step spreads NaN into every weight, so a capture armed after it finds only the input
layer. Where the host knows at `mon.step` that the step is not finite (on CPU: the loss and the
norms are host values; not under torch.distributed, where every rank would have to re-run), the
step is re-run (`Rerun`) before the optimizer moves: forward from the inputs it was given (a
root forward pre-hook keeps a reference to them and the CPU RNG state, for dropout), and
backward from the gradient the loss passed back to the model's output (a root forward hook keeps
a reference to it), with the checks armed, through `torch.autograd.grad` (nothing accumulates
into `.grad`); BatchNorm's running statistics and the RNG are put back after. Those two root
hooks are the only ones a healthy run carries (`watch(capture=False)`: none); they keep
references, never copies.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtui.model.commands import MAX_CAPTURE_STEPS, ControlState, validate
from gradtui.model.commands import Capture as CaptureCommand
from gradtui.model.events import Capture, CaptureStats, CommandResult, Event, LogLine, NonFiniteOrigin
from gradtui.probe.budget import HOLD_STEPS
from gradtui.probe.checks import FLAGS, Checks, FirstNonFiniteOp, Site, floats, origin_of
from gradtui.probe.dist import local
from gradtui.probe.layers import Layer
from gradtui.probe.packed import SEGMENTS
from gradtui.probe.stats import GradStats, to_device

log = logging.getLogger("gradtui")

DEFAULT_STEPS = 32
"""Steps a capture lasts. The suite's blow-ups go from their first alarm to NaN within 3-25 steps,
so 32 steps armed by the first alarm see the NaN; a capture costs 1.5-4x a step on small CPU
models (the hooks' kernels per module), so 32 steps are a few seconds there, and well under a
second of a GPU model's time."""
MAX_AUTO = 8
"""Captures armed by alarms and non-finite steps per run at most (a user's ask always arms one)."""


@dataclass
class CaptureMeta:
    """What a capture step's vector does not carry: the checks' call tables, in call order."""

    forward: list[Site]
    backward: list[Site]
    after_bad: bool
    """The step before it was known not finite (an origin found now is only NaN carried on)."""


def moment_tensors(opt: torch.optim.Optimizer, p: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(first, second) moment of `opt`'s state for `p`: Adam/AdamW/NAdam/RAdam exp_avg, exp_avg_sq;
    RMSprop momentum_buffer, square_avg; Adagrad sum; SGD momentum_buffer (None where not kept)."""
    state = opt.state.get(p)
    if not state:
        return None, None
    m1 = state.get("exp_avg", state.get("momentum_buffer"))
    m2 = state.get("exp_avg_sq", state.get("square_avg", state.get("sum")))
    return _moment(m1), _moment(m2)


def _moment(t: object) -> torch.Tensor | None:
    return t if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() else None


WATCHFUL_STEPS = HOLD_STEPS
"""Steps after a blow-up alarm that the re-run's root hooks stay (as long as sampling stays at every step)."""


LOSS_JUMP = 100.0
"""A loss this many times the run's recent largest makes the probe keep what a re-run needs at once
(on the training thread: the publishing thread's alarm may come after the NaN)."""
LOSS_DECAY = 0.99
"""How fast that largest loss forgets (a run whose loss falls towards 0 is not flagged for rising back)."""


def capture_steps(value: object) -> int | None:
    """`watch(capture=...)`: True (default) arms `DEFAULT_STEPS`-step captures on trouble, an int
    that many steps, False none (the user's asks still arm one). None: no automatic capture."""
    if value is True:
        return DEFAULT_STEPS
    if value is False or value is None:
        return None
    if isinstance(value, int) and 1 <= value <= MAX_CAPTURE_STEPS:
        return value
    raise ValueError(f"capture must be True, False or a number of steps from 1 to {MAX_CAPTURE_STEPS}, got {value!r}")


# ---------------------------------------------------------------- the step's inputs, for a re-run


class Kept:
    """Root hooks that keep references to the step's inputs, the RNG state they met, and the
    gradient the loss passed back to the model's output: what a re-run needs."""

    def __init__(self, model: nn.Module) -> None:
        self.args: Any = None
        self.kwargs: Any = None
        self.rng: torch.Tensor | None = None
        self.outputs: list[torch.Tensor] = []
        self.grads: dict[int, torch.Tensor] = {}
        self.forwards = 0
        """Forward passes since the last `clear` (a re-run needs exactly one)."""
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]

    def _pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.rng = torch.get_rng_state()
        self.forwards += 1

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self.outputs = [t for t in floats(output) if t.requires_grad]
        for i, t in enumerate(self.outputs):
            t.register_hook(partial(self._grad, i))

    def _grad(self, i: int, grad: torch.Tensor) -> None:
        self.grads[i] = grad

    def clear(self) -> None:
        self.args = self.kwargs = self.rng = None
        self.outputs, self.grads, self.forwards = [], {}, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()


# ---------------------------------------------------------------- the capture


@dataclass
class _Armed:
    start: int
    steps: int
    reason: str
    auto: bool


@dataclass
class _Request:
    steps: int
    reason: str
    auto: bool
    after_bad: bool = False


class DeepCapture:
    """Arms and disarms the deep capture of a monitor, answers `Capture` commands, and re-runs a
    non-finite step where the host knows of it in time.

    Args:
        model: The watched model.
        layers: Its watched layers.
        stats: The monitor's gradient statistics (device, parameters, per-layer sums).
        optimizers: The watched optimizers (their moments).
        emit: Where events go.
        auto: Steps of a capture armed by trouble (None: trouble arms none).
        rerun: Keep the root hooks a re-run needs.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[Layer],
        stats: GradStats,
        optimizers: Sequence[torch.optim.Optimizer],
        emit: Callable[[Event], None],
        auto: int | None,
        rerun: bool,
    ) -> None:
        self._model = model
        self._layers = list(layers)
        self._stats = stats
        self._optimizers = list(optimizers)
        self._emit = emit
        self.auto = auto
        self._lock = threading.Lock()
        self._request: _Request | None = None
        self._armed: _Armed | None = None
        self._checks: Checks | None = None
        self._autos = 0
        self._last_bad = -2
        """The last step the training thread knew to be non-finite."""
        self._rerun = rerun
        self.kept: Kept | None = None
        """The root hooks a re-run needs: kept only while trouble is near (`watchful`), since
        keeping the step's inputs, RNG state and output gradient costs 0.5-1.5 ms a step on the
        50x128 MLP (`benchmarks/overhead.py`, capture=False against the defaults), nothing while healthy."""
        self._watchful_until = -1
        self._loss_scale = 0.0
        """The largest finite |loss| `check_step` saw, decaying by LOSS_DECAY a step (0: none yet)."""
        self.rerunning = False
        """A re-run's forward is under way (`mon.lane` passes tensors through untouched then)."""
        self.late = False
        """The host learns of a non-finite step only on the publishing thread (CUDA, distributed)."""
        self._rerun_failed = False
        self.route: Callable[[CaptureCommand], None] | None = None
        """Under torch.distributed: sends an ask as a command (rank 0's reach every rank at one step)."""
        self._routed = False
        """An ask sent as a command and not applied yet."""

    # ------------------------------------------------------------ asking

    def request(self, steps: int, reason: str, *, auto: bool = False, after_bad: bool = False) -> bool:
        """Ask for a capture of `steps` steps from the next step boundary (any thread). An automatic
        one is dropped while one is armed or asked for, or past `MAX_AUTO`; False then. With `route`
        set (torch.distributed) the ask becomes a command, which every rank applies at one step."""
        with self._lock:
            if auto:
                asked = self._request is not None or self._routed
                if self.auto is None or self._armed is not None or asked or self._autos >= MAX_AUTO:
                    return False
                self._autos += 1
                steps = self.auto
            if self.route is None:
                self._request = _Request(steps, reason, auto, after_bad)
                return True
            self._routed = True
        self.route(CaptureCommand(steps=steps, reason=reason))
        return True

    def trouble(self, step: int) -> None:
        """A non-finite step seen late (on the publishing thread, where the host does not know at
        `mon.step`: `late`): capture what follows."""
        if not self.late:
            return  # the training thread saw it at its step (`boundary`)
        if self.first_bad(step):
            self.request(0, f"non-finite loss or gradients at step {step}", auto=True, after_bad=True)
        self._last_bad = max(self._last_bad, step)

    def watchful(self, step: int) -> None:
        """Trouble is near (a blow-up alarm at any level, info included, at `step`; any thread): keep
        what a re-run needs for `WATCHFUL_STEPS`, so a step that goes non-finite before a capture is
        armed can be re-run while its weights are still those that produced it."""
        self._watchful_until = max(self._watchful_until, step + WATCHFUL_STEPS)

    def first_bad(self, step: int) -> bool:
        """Whether a non-finite `step` starts a streak (the step before it was not known bad)."""
        return step != self._last_bad + 1

    def answer(
        self, state: ControlState, cmd: CaptureCommand, step: int, reason: str = "asked from the viewer"
    ) -> tuple[ControlState, CommandResult]:
        """A `Capture` command at `step` (validated by the rule first)."""
        why = validate(cmd, state)
        if why is not None:
            return state, CommandResult(cmd.id, "capture", False, step, why)
        with self._lock:
            self._routed = False
            self._request = _Request(cmd.steps, cmd.reason or reason, bool(cmd.reason))
        return state, CommandResult(
            cmd.id, "capture", True, step, f"capture armed for {cmd.steps} steps from step {step + 1}"
        )

    # ------------------------------------------------------------ the training thread

    def covers(self, step: int) -> bool:
        armed = self._armed
        return armed is not None and armed.start <= step < armed.start + armed.steps

    def take(self, step: int) -> tuple[list[tuple[str, torch.Tensor]], CaptureMeta] | None:
        """A covered step's segments for its sampled vector (and the checks reset for the next)."""
        checks = self._checks
        if checks is None or not self.covers(step):
            return None
        n = len(self._layers)
        m1, m2, c1, c2 = self._moments()
        segs = [
            ("cap_act", checks.sums.reshape(-1).clone()),
            ("cap_amax", checks.amax.clone()),
            ("cap_m1", m1),
            ("cap_m2", m2),
            ("cap_n1", c1),
            ("cap_n2", c2),
            ("cap_origin", checks.flags.clone()),
        ]
        assert all(t.numel() == k for (_, t), k in zip(segs, (6 * n, n, n, n, n, n, FLAGS), strict=True))
        armed = self._armed
        after_bad = armed is not None and step == armed.start and self._last_bad == step - 1
        meta = CaptureMeta(list(checks.forward), list(checks.backward), after_bad)
        checks.reset()
        return segs, meta

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self._stats
        index = {id(p): i for i, p in enumerate(s.params)}
        found: list[list[tuple[int, torch.Tensor]]] = [[], []]
        for opt in self._optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    i = index.get(id(p))
                    if i is None:
                        continue
                    for k, t in enumerate(moment_tensors(opt, p)):
                        if t is not None:
                            found[k].append((i, local(t.detach())))
        out: list[torch.Tensor] = []
        counts: list[torch.Tensor] = []
        for pairs in found:
            if not pairs:
                out.append(torch.zeros(s.n, dtype=s.acc, device=s.device))
                counts.append(torch.zeros(s.n, dtype=s.acc, device=s.device))
                continue
            which = [i for i, _ in pairs]
            idx = to_device(s.param_layer[which], s.device)
            sq = s.sq_norms([t for _, t in pairs]).to(s.device, s.acc)
            out.append(s.per_layer(sq, idx, which))
            counts.append(s.per_layer(torch.ones(len(which), dtype=s.acc, device=s.device), idx, which))
        return out[0], out[1], counts[0], counts[1]

    def boundary(self, step: int, nonfinite: bool | None) -> None:
        """At the end of `mon.step(step)`: disarm after the last covered step, arm what was asked,
        keep what a re-run needs while trouble is near."""
        if self._rerun:
            near = step < self._watchful_until
            if near and self.kept is None:
                self.kept = Kept(self._model)
            elif not near and self.kept is not None:
                self.kept.remove()
                self.kept = None
        if nonfinite:
            if self.first_bad(step) and not self.covers(step):
                self.request(0, f"non-finite loss or gradients at step {step}", auto=True, after_bad=True)
            self._last_bad = step
        armed = self._armed
        if armed is not None and step >= armed.start + armed.steps - 1:
            self._disarm(step)
        with self._lock:
            request, self._request = self._request, None
        if request is None:
            return
        if self._armed is not None:
            if request.auto:
                return
            self._disarm(step)  # a user's ask starts afresh
        try:
            checks = self._checks or Checks(self._model, self._layers, self._stats.device, stats=True)
            checks.reset()
            checks.install()
        except Exception as exc:
            log.warning("gradtui: could not arm a capture (training goes on): %s", exc)
            self._emit(LogLine(f"gradtui: could not arm a capture: {exc}", stream="gradtui"))
            return
        self._checks = checks
        self._armed = _Armed(step + 1, request.steps, request.reason, request.auto)
        self._emit(Capture(step=step, start=step + 1, steps=request.steps, reason=request.reason))

    def _disarm(self, step: int) -> None:
        armed, self._armed = self._armed, None
        if self._checks is not None:
            self._checks.remove()
        if armed is not None:
            self._emit(Capture(step=step, start=armed.start, steps=armed.steps, reason=armed.reason, ended=True))

    def close(self, step: int) -> None:
        if self._armed is not None:
            self._disarm(step)
        if self.kept is not None:
            self.kept.remove()

    # ------------------------------------------------------------ the re-run

    def check_step(self, step: int, loss: float | None, finite: bool | None, rolled_back: bool) -> bool | None:
        """At `mon.step`, where the host knows at once (CPU, one process): whether the step is not
        finite (None: unknown). The first such step of a streak is re-run to find where it broke,
        before anything moves the weights (not after a rollback at this boundary)."""
        loss_finite = loss is None or math.isfinite(loss)
        if loss is not None and loss_finite:
            if 0 < self._loss_scale * LOSS_JUMP < loss:
                self.watchful(step)  # seen here at once: the publishing thread's alarm may come late
            self._loss_scale = max(self._loss_scale * LOSS_DECAY, abs(loss))
        if finite is None and loss_finite:
            return None
        if loss_finite and finite:
            return False
        if rolled_back or self.covers(step) or not self.first_bad(step) or self.kept is None:
            return True
        origin = self.rerun(step, loss if loss is not None else 0.0)
        if origin is None:
            # Nothing non-finite in the re-run: a norm that overflowed float32 over finite values.
            return not loss_finite
        self._emit(origin)
        return True

    def rerun(self, step: int, loss: float) -> NonFiniteOrigin | None:
        """Re-run step `step` (non-finite, its weights not yet moved) with the checks armed, and
        name its first non-finite module (None: no re-run possible, or nothing found)."""
        kept = self.kept
        if kept is None or self._rerun_failed or self.covers(step) or kept.args is None or kept.forwards != 1:
            return None
        model = self._model
        checks = Checks(model, self._layers, self._stats.device, stats=False)
        buffers = [b.detach().clone() for b in model.buffers()]
        rng_now = torch.get_rng_state()
        params = [p for p, _ in checks._params]
        ops = FirstNonFiniteOp()
        try:
            checks.install()
            self.rerunning = True
            assert kept.rng is not None
            torch.set_rng_state(kept.rng)
            with torch.enable_grad(), ops:
                out = model(*kept.args, **(kept.kwargs or {}))
                outs = [t for t in floats(out) if t.requires_grad]
                pairs = [(t, kept.grads[i]) for i, t in enumerate(outs) if i in kept.grads]
                if pairs and params and len(outs) == len(kept.outputs):
                    torch.autograd.grad([t for t, _ in pairs], params, [g for _, g in pairs], allow_unused=True)
            flags = checks.flags.to("cpu").numpy()
        except Exception as exc:
            self._rerun_failed = True
            log.warning("gradtui: could not re-run step %d to find its first non-finite module: %s", step, exc)
            self._emit(
                LogLine(f"gradtui: could not re-run step {step} to find where it broke: {exc}", stream="gradtui")
            )
            return None
        finally:
            self.rerunning = False
            checks.remove()
            torch.set_rng_state(rng_now)
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=False):
                    b.copy_(saved)
        origin = origin_of(step, flags, checks.forward, checks.backward, loss, "rerun", None)
        if origin is not None and origin.module and ops.op:
            origin = replace(origin, op=ops.op)  # the loss is not re-run: its op stays unnamed
        return origin

    def after_step(self) -> None:
        """At the end of `mon.step`: the kept references go (the next forward keeps its own)."""
        if self.kept is not None:
            self.kept.clear()


# ---------------------------------------------------------------- back to events (publishing thread)


@dataclass
class CaptureDecoder:
    """Turns a capture step's segments into `CaptureStats` and, at the first non-finite step of a
    streak, its `NonFiniteOrigin` (an origin found while NaN is carried on names the input layer)."""

    n: int
    _prev_bad: int = -2
    _seen: set[int] = field(default_factory=set)

    def events(
        self, parts: dict[str, np.ndarray], meta: CaptureMeta, step: int, loss: float, norm: float
    ) -> list[Event]:
        n = self.n
        sums = parts["cap_act"].reshape(n, 6)
        count, s1, s2, s3, s4, bad = (sums[:, k] for k in range(6))
        ran = count + bad > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s1 / count
            m2 = s2 / count - mean * mean
            m4 = s4 / count - 4 * mean * s3 / count + 6 * mean * mean * s2 / count - 3 * mean**4
            rms = np.where(ran, np.sqrt(s2 / count), np.nan)
            kurt = np.where(ran & (m2 > 0), m4 / (m2 * m2), np.nan)
        amax = np.where(ran & (count > 0), parts["cap_amax"], np.nan)
        with np.errstate(invalid="ignore"):
            m1 = np.where(parts["cap_n1"] > 0, np.sqrt(parts["cap_m1"]), np.nan)
            v2 = np.where(parts["cap_n2"] > 0, np.sqrt(parts["cap_m2"]), np.nan)
        out: list[Event] = [
            CaptureStats(
                step=step,
                act_rms=rms.astype(np.float64),
                act_max=amax.astype(np.float64),
                act_nonfinite=np.where(ran, np.rint(bad), 0).astype(np.int64),
                act_kurtosis=kurt.astype(np.float64),
                opt_m1=m1.astype(np.float64),
                opt_m2=v2.astype(np.float64),
            )
        ]
        flags = parts["cap_origin"]  # (ranks, 6)
        loss_finite = math.isfinite(loss)
        found: NonFiniteOrigin | None = None
        for rank, row in enumerate(flags):
            origin = origin_of(
                step, row, meta.forward, meta.backward, loss, "capture", rank if len(flags) > 1 else None
            )
            if origin is not None and (
                found is None or (found.direction == "backward" and origin.direction == "forward")
            ):
                found = origin
        bad_step = found is not None or not loss_finite  # a norm over finite values may overflow float32
        after_bad = meta.after_bad or self._prev_bad == step - 1
        if bad_step:
            self._prev_bad = step
        if found is not None and not after_bad:
            out.append(found)
        return out


def split(gathered: np.ndarray, layout: Sequence[tuple[str, int]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The blocks `names` of a step's (ranks, vector) host copy, combined across ranks as
    `packed.SEGMENTS` says (`cap_origin`: each rank's row)."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for name, length in layout:
        block = gathered[:, pos : pos + length]
        pos += length
        if name not in names:
            continue
        how = SEGMENTS[name]
        out[name] = block if how == "rows" else block.max(axis=0) if how == "max" else block.sum(axis=0)
    return out


CAPTURE_SEGMENTS = ("cap_act", "cap_amax", "cap_m1", "cap_m2", "cap_n1", "cap_n2", "cap_origin")

__all__ = [
    "CAPTURE_SEGMENTS",
    "DEFAULT_STEPS",
    "CaptureDecoder",
    "CaptureMeta",
    "Checks",
    "DeepCapture",
    "Kept",
    "capture_steps",
    "moment_tensors",
    "origin_of",
]
