"""What the guard may do to a run that goes wrong, and the words it uses: the config of
`watch(guard=...)`, the rule that tells a transient bad step from a persistent one, and the
ledger's text, free of torch so that viewers and reports can read them.

The guard tells a bad *batch* from a bad *state*. A step whose loss or gradients are not
finite, or whose loss is far above the recent ones (OLMo-core's skip-step rule), is skipped:
its update is not applied, and a corrupt record costs one step. Rollback, with a learning-rate
cut, is kept for trouble that a skip does not cure: the weights themselves are not finite,
non-finite steps come `patience` in a row, or a *critical* exploding alarm of the detectors
(compounding growth, or a norm far above the run's own scale) is still up `patience` steps
later. Warnings and info-level alarms are shown, never acted on.
"""

from __future__ import annotations

import itertools
import math
import reprlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gradtui.model.commands import AUTO_CLIP_Z

GUARD_ACTIONS: tuple[str, ...] = ("skip", "rollback", "clip", "lr_cut")
"""The actions on the record (`GuardAction.action`) and in the report's `guard`."""

GUARD_SYMBOLS: dict[str, str] = {"skip": "⤼", "rollback": "⟲", "clip": "✂", "lr_cut": "↓"}
"""How the viewer marks each action."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What the guard does; `watch(guard=True)` takes these defaults.

    Args:
        skip: a step whose loss or gradients are not finite, or whose loss is `skip_sigma`
            standard deviations above the recent ones, is not applied (its gradients are set
            to None before `optimizer.step()`, which every torch optimizer honours; stepped
            with a closure, the optimizer's weights and state are put back after its step).
            A GradScaler's own skips are left to it.
        rollback: when a skip does not cure the trouble (the weights are not finite, or
            `patience` non-finite steps in a row), or a critical exploding alarm is up
            `patience` steps, put back the model and optimizer state of the last snapshot
            taken while no blow-up alarm was up, and multiply the learning rate by
            `lr_factor` (an override through the probe's control, so a loop that sets the LR
            every step keeps it). Without `skip`, every non-finite step rolls back.
        patience: non-finite steps in a row, or steps a critical exploding alarm may stay up,
            before a rollback.
        skip_sigma: a finite step whose loss is more than this many standard deviations above
            the last `LossWindow.SIZE` steps' is skipped too (OLMo-core's skip-step rule, on
            the log of the loss; judged once `LossWindow.MIN` positive losses are in).
            `math.inf`: only non-finite steps are skipped.
        lr_factor: each rollback multiplies the learning rate by this (they compound).
        snapshot_every: steps between snapshots (each taken only while no blow-up alarm is up,
            and kept only when its weights and optimizer state are finite).
        max_snapshot_bytes: host memory the snapshots may take in all. The guard keeps two
            (one confirmed healthy, one awaiting confirmation) when both fit, else one; when
            not even one fits there is no rollback, and the run's log says so.
        max_rollbacks: after this many rollbacks the guard only skips (a run that blows up
            again and again needs a person, not a smaller learning rate).
        clip: start with adaptive clipping ("auto": by norm, past `clip_z` standard deviations
            of the recent norms; see `gradtui.probe.clip.ZClip`) unless `watch(clip=...)` is given.
            Off by default: a healthy run stays bit for bit what it was.
        clip_z: the z-score of adaptive clipping.
        every_step: on CUDA, check the gradients at every step, not only at the steps the
            probe samples (a host read at each: a sync). Elsewhere they are checked at every
            step anyway, through the global norm the probe computes at every step, or on CPU
            its canary layers where the budget measures those instead (True keeps the pass
            over every gradient there); the loss is checked at every step either way.
    """

    skip: bool = True
    rollback: bool = True
    patience: int = 3
    skip_sigma: float = 6.0
    lr_factor: float = 0.25
    snapshot_every: int = 25
    max_snapshot_bytes: int = 4 << 30
    max_rollbacks: int = 8
    clip: bool = False
    clip_z: float = AUTO_CLIP_Z
    every_step: bool = False

    def __post_init__(self) -> None:
        for name in ("skip", "rollback", "clip", "every_step"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Guard({name}=...) must be True or False, got {getattr(self, name)!r}")
        for name in ("patience", "snapshot_every", "max_snapshot_bytes", "max_rollbacks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Guard({name}=...) must be a positive integer, got {value!r}")
        z = self.clip_z
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or not 0 < z <= 100:
            raise ValueError(f"Guard(clip_z=...) must be a number in (0, 100], got {z!r}")
        f = self.lr_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 < f < 1:
            raise ValueError(f"Guard(lr_factor=...) must be a number between 0 and 1 (a cut), got {f!r}")
        s = self.skip_sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s) or s <= 0:
            raise ValueError(f"Guard(skip_sigma=...) must be a positive number (math.inf: off), got {s!r}")


def guard_config(guard: object) -> Guard | None:
    """The guard `watch(guard=...)` asks for: None (off), True (the defaults) or a `Guard`."""
    if guard is None or guard is False:
        return None
    if guard is True:
        return Guard()
    if isinstance(guard, Guard):
        return guard
    raise TypeError(f"guard must be True, False or a gradtui.Guard(...), got {type(guard).__name__}")


# ---------------------------------------------------------------- transient or persistent


class Outlier(NamedTuple):
    """A loss far above the recent ones."""

    loss: float
    mean: float
    """The recent losses' geometric mean."""
    sds: float
    """How far above it, in standard deviations of the log of the loss."""

    def words(self) -> str:
        return f"loss {self.loss:.4g} is {self.sds:.0f} sd above the recent ones (geometric mean {self.mean:.4g})"


class LossWindow:
    """The recent losses a step's loss is judged against: OLMo-core's skip-step rule
    (`SkipStepOptimizer`: a rolling window of 128, judged from 64 on, above mean + sigma * sd)
    on the log of the loss.

    On the log, because per-batch losses are heavy-tailed at small batches: in a healthy
    two-moons classifier (batches of 32) a batch with one hard example lies up to 12 sd above
    the recent mean on a linear scale, under 3 on a log scale, while a corrupt record that
    multiplies the loss stands out on either. So the rule holds for positive losses; a loss
    of 0 or below (a log-likelihood of a density, a GAN's) empties the window, and the rule
    waits for 64 positive ones again. Every finite loss goes in, an outlier's too: a run
    whose loss moves to a new level for good stops being an outlier within a few steps
    rather than being skipped for good. A non-finite loss stays out. The sums are a sliding
    Welford mean and M2, recomputed exactly once per window: a step costs a few float
    operations.
    """

    SIZE = 128
    MIN = 64

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma
        self._values: deque[float] = deque(maxlen=self.SIZE)
        self._mean = 0.0
        self._m2 = 0.0
        self._since_exact = 0

    def judge(self, loss: float) -> Outlier | None:
        """Whether `loss` is an outlier of the window so far; then it joins the window."""
        if not math.isfinite(loss):
            return None
        if loss <= 0:
            self._values.clear()
            self._mean = self._m2 = 0.0
            return None
        x = math.log(loss)
        out = None
        n = len(self._values)
        if n >= self.MIN:
            sd = math.sqrt(max(self._m2, 0.0) / (n - 1))
            if sd > 0 and x - self._mean > self.sigma * sd:
                out = Outlier(loss, math.exp(self._mean), (x - self._mean) / sd)
        self._add(x)
        return out

    def _add(self, x: float) -> None:
        values = self._values
        if len(values) == self.SIZE:
            old = values.popleft()
            n = len(values)
            delta = old - self._mean
            self._mean -= delta / n
            self._m2 -= delta * (old - self._mean)
        values.append(x)
        n = len(values)
        delta = x - self._mean
        self._mean += delta / n
        self._m2 += delta * (x - self._mean)
        self._since_exact += 1
        if self._since_exact >= self.SIZE:  # rounding in the sliding sums does not pile up
            self._since_exact = 0
            self._mean = math.fsum(values) / n
            self._m2 = math.fsum((v - self._mean) ** 2 for v in values)

class BadRun:
    """Counts non-finite steps in a row (a skipped step leaves the state as it was, so the next
    step starts from the same weights: trouble that comes back there is in the state)."""

    def __init__(self) -> None:
        self._last: int | None = None
        self.length = 0

    def bad(self, step: int) -> int:
        """A non-finite step; returns how many in a row it makes."""
        self.length = self.length + 1 if self._last is not None and step == self._last + 1 else 1
        self._last = step
        return self.length


# ---------------------------------------------------------------- adaptive clipping


ZCLIP_WARMUP = 25
"""Norms that only build adaptive clipping's statistics (a plain running mean) before it clips."""
ZCLIP_ALPHA = 0.97
"""EMA weight of the past: about the last 33 steps count."""
ZCLIP_MIN_CV = 0.05
"""The standard deviation's floor, as a share of the mean: the threshold is at least
mean * (1 + z * ZCLIP_MIN_CV), 1.125 times the mean at z = 2.5."""
ZCLIP_EPS = 1e-6
"""As in `torch.nn.utils.clip_grad_norm_`."""


class ZClipStats(NamedTuple):
    """Adaptive clipping's statistics: the moving mean and variance of the norms after clipping,
    and how many norms they hold."""

    mean: float = 0.0
    var: float = 0.0
    seen: int = 0


def zclip_step(stats: ZClipStats, norm: float, z: float) -> tuple[float, ZClipStats]:
    """Adaptive clipping's rule on one step, on the host: (the factor the gradients are scaled
    by, the statistics after). `gradtui.probe.clip.ZClip` is the same rule on the device.

    A norm that is not finite, or 0 (a frozen phase, a loss weight warmed up from 0), leaves
    the statistics as they were: zeros would take the mean and variance to 0 and the threshold
    with them, and every later step would be clipped to nothing."""
    mean, var, seen = stats
    if seen < ZCLIP_WARMUP:
        coef, alpha = 1.0, seen / (seen + 1)
    else:
        sd = max(math.sqrt(max(var, 0.0)), ZCLIP_MIN_CV * mean)
        coef, alpha = min(1.0, (mean + z * sd) / (norm + ZCLIP_EPS)), ZCLIP_ALPHA
    clipped = norm * coef
    if not (math.isfinite(clipped) and clipped > 0):
        return coef, stats
    delta = clipped - mean
    return coef, ZClipStats(mean + (1 - alpha) * delta, alpha * (var + (1 - alpha) * delta * delta), seen + 1)


# ---------------------------------------------------------------- the ledger's text

MAX_IDS = 64
"""Batch identifiers kept per step: the first ones, and the count of the rest."""
MAX_TEXT = 1000
"""Characters of a step's identifiers on the record at most."""
_ITEM = reprlib.Repr()
_ITEM.maxstring = _ITEM.maxother = 80
_ITEM.maxlist = _ITEM.maxtuple = _ITEM.maxdict = _ITEM.maxset = 8
_ITEM.maxlevel = 2


class IdsHead(NamedTuple):
    """A step's batch identifiers as the ledger keeps them: the first `MAX_IDS` values, how
    many there are (`total`), and for an array the shape and dtype."""

    values: list[object]
    total: int
    shape: tuple[int, ...] | None = None
    dtype: str | None = None


def ids_text(head: IdsHead) -> str:
    """"3,17,42"; "0,1,…(+4094) [64x64 int64]" for more, or not a vector of integers."""
    shown = head.values[:MAX_IDS]
    text = ",".join(_item(v) for v in shown)
    if head.total > len(shown):
        text += f",…(+{head.total - len(shown)})"
    if head.shape is not None and (len(head.shape) > 1 or not _integers(head.dtype)):
        text += f" [{'x'.join(str(n) for n in head.shape) or 'scalar'} {head.dtype}]"
    return _bounded(text.lstrip())


def batch_text(ids: object, limit: int = MAX_IDS) -> str:
    """Any `batch=` value as bounded text: "17", "a.jsonl:3", "3,17,42", "0,1,2,…(+67)". Never
    raises: what cannot be read says so (a tensor is read by the probe, `gradtui.probe.guard`)."""
    try:
        if ids is None:
            return ""
        if isinstance(ids, str):
            return _bounded(ids)
        if isinstance(ids, (bool, int, float)):
            return _item(ids)
        if isinstance(ids, np.ndarray):
            return ids_text(array_head(ids, limit))
        if isinstance(ids, (list, tuple, range)):
            return ids_text(IdsHead(list(itertools.islice(ids, limit)), len(ids)))
        if isinstance(ids, Mapping):
            return _bounded(_ITEM.repr(ids))  # a whole batch dict: its keys and a glimpse of each value
        tolist = getattr(ids, "tolist", None)
        if callable(tolist):
            return batch_text(tolist(), limit)
        if isinstance(ids, Sequence):
            return ids_text(IdsHead(list(itertools.islice(ids, limit)), len(ids)))
        return _bounded(_ITEM.repr(ids))
    except Exception as exc:  # a user's object whose reading raises: the step goes on without its ids
        return unreadable(ids, exc)


def array_head(arr: np.ndarray, limit: int = MAX_IDS) -> IdsHead:
    """The first values of `arr` in C order (`flat` slicing reads only those), count, shape, dtype."""
    return IdsHead(arr.flat[:limit].tolist(), int(arr.size), tuple(arr.shape), str(arr.dtype))


def unreadable(ids: object, exc: BaseException) -> str:
    return _bounded(f"<{type(ids).__name__}: unreadable: {type(exc).__name__}: {exc}>")


def _item(value: object) -> str:
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, (bool, int)):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return _ITEM.repr(value)


def _integers(dtype: str | None) -> bool:
    return dtype is not None and ("int" in dtype or dtype.endswith("bool"))


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
