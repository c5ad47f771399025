"""Gradient-health detectors: vanishing, exploding, non-finite, dead layers and loss spikes.

Pure NumPy, run by the probe on every sampled step (so alerts are on the record even with
no viewer) and by `gradtui report` over a record. Every detector is a per-unit state
machine with hysteresis: a flag is raised after its enter condition has held for a
minimum number of consecutive samples, and cleared after its (stricter) leave condition
has held for `clear_steps` samples; between the two thresholds nothing changes, so a
value hovering at a threshold cannot make a flag flicker. `update()` is vectorised over
layers and keeps only fixed-size ring buffers, so its cost and memory stay flat.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gradtui.core.events import Alert, StepStats

VERDICTS: tuple[str, ...] = ("healthy", "vanishing", "exploding", "nonfinite", "dead")
"""Per-layer verdicts, as in the report contract."""

# Row order of the state matrices; the verdict priority is nonfinite > exploding > vanishing > dead.
_NONFINITE, _EXPLODING, _VANISHING, _DEAD, _SPIKE = range(5)
_KINDS: tuple[str, ...] = ("nonfinite", "exploding", "vanishing", "dead", "loss_spike")

_MIN_SPREAD = 0.05
"""Floor of the robust spread of log10 norms (decades): a perfectly steady history is not infinitely sure."""
_WEIGHT_RULE_GAP = -1.0
"""The gradient-to-weight rule also needs the layer to be at least 10x below the largest layer (log10)."""


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of every detector. Counts are in sampled steps (see `watch(every=...)`)."""

    vanish_ratio: float = 3e-4
    """Vanishing when a layer's per-parameter gradient RMS falls below this fraction of the largest layer's."""
    vanish_clear_ratio: float = 1e-3
    """A vanishing flag clears once the layer is back above this fraction of the largest layer's RMS."""
    vanish_weight_ratio: float = 1e-7
    """Also vanishing when ||g||/||w|| is below this and the layer is 10x below the largest (needs detail steps)."""
    vanish_steps: int = 10
    """Consecutive samples a vanishing condition must hold before the flag is raised."""
    explode_ratio: float = 10.0
    """Exploding when a layer's (or the global) norm jumps this factor above the median of its recent window."""
    explode_z: float = 4.0
    """... and at least this many robust standard deviations (log scale, from the window's IQR) above it."""
    explode_memory: float = 0.005
    """The growth baseline is the larger of the window median and its past peak, decayed by this many decades
    per sample: a gradient that falls as the run converges and then spikes back up is not exploding."""
    explode_clear_ratio: float = 3.0
    """An exploding flag clears once the norm is back within this factor of the window median."""
    explode_ceiling: float = 1e6
    """Exploding whenever a layer's or the global gradient L2 norm exceeds this, whatever its history."""
    explode_min_history: int = 2
    """Samples of history a norm needs before the growth rule applies (the ceiling applies at once)."""
    window: int = 32
    """Samples kept for the baselines of the exploding and loss-spike rules."""
    dead_steps: int = 20
    """Consecutive samples of an exactly-zero gradient before a layer is flagged dead."""
    spike_z: float = 6.0
    """Loss spike when the loss exceeds the window median by this many robust standard deviations (of log10
    loss when the losses are positive) ..."""
    spike_ratio: float = 2.0
    """... and is at least this multiple of the window median (positive losses)."""
    spike_clear_z: float = 2.0
    """A loss-spike flag clears once the loss is back within this many robust standard deviations."""
    spike_min_history: int = 20
    """Finite loss values needed before the loss-spike rule applies."""
    clear_steps: int = 5
    """Consecutive samples a leave condition must hold before any flag is cleared."""

    def __post_init__(self) -> None:
        problems = list(_check(self))
        if problems:
            raise ValueError("invalid detector config: " + "; ".join(problems))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Names of the options, as accepted by `from_options`."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> DetectorConfig:
        """Build a config from CLI-style options, e.g. `{"vanish_ratio": "1e-3", "dead_steps": "50"}`.

        Raises:
            ValueError: An unknown key (the message lists the valid ones) or a value that does not
                parse or is out of range (the message names the key).
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for key, raw in options.items():
            if key not in fields:
                raise ValueError(f"unknown detector option {key!r}; valid options: {', '.join(fields)}")
            text = str(raw).strip()
            if fields[key].type in ("int", int):
                try:
                    number = float(text)
                except ValueError:
                    raise ValueError(f"detector option {key}: {text!r} is not a whole number") from None
                if not number.is_integer():
                    raise ValueError(f"detector option {key}: {text!r} is not a whole number")
                values[key] = int(number)
            else:
                try:
                    values[key] = float(text)
                except ValueError:
                    raise ValueError(f"detector option {key}: {text!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]


def _check(c: DetectorConfig) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(f"{f.name} must be a finite number, got {v!r}")
    if out:
        return out
    if not 0 < c.vanish_ratio < 1:
        out.append(f"vanish_ratio must be between 0 and 1, got {c.vanish_ratio}")
    if not c.vanish_ratio <= c.vanish_clear_ratio < 1:
        out.append(f"vanish_clear_ratio must be in [vanish_ratio, 1), got {c.vanish_clear_ratio}")
    if not 0 <= c.vanish_weight_ratio < 1:
        out.append(f"vanish_weight_ratio must be in [0, 1), got {c.vanish_weight_ratio}")
    if c.explode_ratio <= 1:
        out.append(f"explode_ratio must be above 1, got {c.explode_ratio}")
    if not 1 <= c.explode_clear_ratio <= c.explode_ratio:
        out.append(f"explode_clear_ratio must be in [1, explode_ratio], got {c.explode_clear_ratio}")
    if c.explode_memory < 0:
        out.append(f"explode_memory must be at least 0, got {c.explode_memory}")
    if c.explode_z < 0:
        out.append(f"explode_z must be at least 0, got {c.explode_z}")
    if c.explode_ceiling <= 0:
        out.append(f"explode_ceiling must be positive, got {c.explode_ceiling}")
    if c.spike_z <= 0 or not 0 <= c.spike_clear_z <= c.spike_z:
        out.append(f"need spike_z > 0 and 0 <= spike_clear_z <= spike_z, got {c.spike_z} and {c.spike_clear_z}")
    if c.spike_ratio < 1:
        out.append(f"spike_ratio must be at least 1, got {c.spike_ratio}")
    for name in ("vanish_steps", "dead_steps", "clear_steps", "explode_min_history", "spike_min_history"):
        v = getattr(c, name)
        if not isinstance(v, int) or v < 1:
            out.append(f"{name} must be a whole number >= 1, got {v!r}")
    if not isinstance(c.window, int) or c.window < 4:
        out.append(f"window must be a whole number >= 4, got {c.window!r}")
    elif c.explode_min_history > c.window or c.spike_min_history > c.window:
        out.append(f"explode_min_history and spike_min_history must not exceed window ({c.window})")
    return out


def _median_spread(sorted_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust standard deviation (IQR / 1.349) of each column of an axis-0-sorted array."""
    n = sorted_rows.shape[0]
    med = 0.5 * (sorted_rows[(n - 1) // 2] + sorted_rows[n // 2])
    iqr = sorted_rows[(3 * (n - 1)) // 4] - sorted_rows[(n - 1) // 4]
    return med, iqr / 1.349


class Detectors:
    """Online detectors over a stream of `StepStats`.

    Args:
        layers: Layer names, in the order of the per-layer arrays of `StepStats`.
        config: Thresholds; defaults when None.
        numel: Parameter count of each layer. Vanishing compares per-parameter RMS
            (norm / sqrt(numel)) across layers when given, raw norms otherwise.
    """

    def __init__(
        self, layers: Sequence[str], config: DetectorConfig | None = None, *, numel: Sequence[int] | None = None
    ) -> None:
        self.layers = tuple(layers)
        self.config = config or DetectorConfig()
        c = self.config
        n = len(self.layers)
        self._n = n
        if numel is not None and len(numel) != n:
            raise ValueError(f"numel has {len(numel)} entries for {n} layers")
        sizes = np.ones(n) if numel is None else np.maximum(np.asarray(numel, np.float64), 1.0)
        self._log_sqrt_numel = 0.5 * np.log10(sizes)
        self._names: tuple[str | None, ...] = (*self.layers, None)
        units = n + 1  # the layers, then the run (global norm, loss)
        self._active = np.zeros((5, units), bool)
        self._on = np.zeros((5, units), np.int64)
        self._off = np.zeros((5, units), np.int64)
        self._min_on = np.array([1, 1, c.vanish_steps, c.dead_steps, 1], np.int64)[:, None]
        self._enter = np.zeros((5, units), bool)
        self._leave = np.zeros((5, units), bool)
        self._seen = np.zeros((5, units), bool)
        """Observed this step: a unit neither entering nor leaving keeps its counters only when unobserved."""
        self._by_weight = np.zeros(n, bool)
        self._value = np.full((5, units), np.nan)
        self._threshold = np.full((5, units), np.nan)
        # Exploding: ring of log10 norms (layers + global), dense thanks to carry-forward.
        self._hist = np.zeros((c.window, units))
        self._hist_seen = np.zeros(units, np.int64)
        self._last_x = np.zeros(units)
        self._peak = np.full(units, -np.inf)
        self._rows = 0
        self._head = 0
        self._log_ratio = math.log10(c.explode_ratio)
        self._log_clear = math.log10(c.explode_clear_ratio)
        self._log_ceiling = math.log10(c.explode_ceiling)
        self._log_vanish = math.log10(c.vanish_ratio)
        self._log_vanish_clear = math.log10(c.vanish_clear_ratio)
        self._weight_norm = np.full(n, np.nan)
        # Loss spike: ring of finite losses.
        self._loss = np.zeros(c.window)
        self._loss_rows = 0
        self._loss_head = 0
        self.first_nonfinite: tuple[int, str] | None = None
        """(step, layer) of the first non-finite gradient seen, or None."""
        self.samples = 0
        """Number of `update` calls so far."""

    # ------------------------------------------------------------------ update

    def update(self, stats: StepStats) -> list[Alert]:
        """Fold one sampled step in; return the flags raised or cleared at this step."""
        n = self._n
        gn = np.asarray(stats.grad_norm, np.float64)
        if gn.shape != (n,):
            raise ValueError(f"StepStats has {gn.shape[0] if gn.ndim else 0} layers, the detectors watch {n}")
        self.samples += 1
        enter, leave, seen, value, thr = self._enter, self._leave, self._seen, self._value, self._threshold
        enter[:] = False
        leave[:] = False
        seen[:] = False
        has = np.asarray(stats.has_grad, bool)
        finite = np.isfinite(gn)
        ok = has & finite
        if stats.weight_norm is not None:
            self._weight_norm[:] = stats.weight_norm

        # Non-finite: any NaN/Inf value, or a norm that overflowed.
        bad_count = np.asarray(stats.nonfinite)
        bad = has & ((bad_count > 0) | ~finite)
        enter[_NONFINITE, :n] = bad
        leave[_NONFINITE, :n] = ok & (bad_count == 0)
        seen[_NONFINITE, :n] = has
        value[_NONFINITE, :n] = np.where(bad_count > 0, bad_count, gn)
        thr[_NONFINITE, :n] = 0.0
        if self.first_nonfinite is None and bad.any():
            self.first_nonfinite = (stats.step, self.layers[int(np.argmax(bad))])

        # Dead: exactly zero gradient.
        zero = ok & (gn == 0.0)
        enter[_DEAD, :n] = zero
        leave[_DEAD, :n] = ok & (gn > 0.0)
        seen[_DEAD, :n] = ok
        value[_DEAD, :n] = gn
        thr[_DEAD, :n] = 0.0

        pos = ok & (gn > 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_gn = np.log10(gn)
            glob = float(stats.global_norm)
            log_glob = math.log10(glob) if glob > 0 and math.isfinite(glob) else math.nan
        self._vanishing(pos, gn, log_gn)
        self._exploding(pos, log_gn, log_glob, glob)
        self._loss_spike(float(stats.loss))
        return self._transitions(stats.step)

    def _vanishing(self, pos: np.ndarray, gn: np.ndarray, log_gn: np.ndarray) -> None:
        n = self._n
        # Layers flagged exploding would make every other layer look vanishing: leave them out of the reference.
        ref_ok = pos & ~self._active[_EXPLODING, :n]
        if np.count_nonzero(ref_ok) < 2:
            return
        log_rms = log_gn - self._log_sqrt_numel
        rel = log_rms - np.max(log_rms, where=ref_ok, initial=-np.inf)
        rel[~pos] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            gw = gn / self._weight_norm
            by_weight = (gw < self.config.vanish_weight_ratio) & (rel < _WEIGHT_RULE_GAP)
            by_depth = rel < self._log_vanish
            self._enter[_VANISHING, :n] = pos & (by_depth | by_weight)
            self._leave[_VANISHING, :n] = pos & (rel > self._log_vanish_clear) & ~by_weight
        self._seen[_VANISHING, :n] = pos
        weight_only = by_weight & ~by_depth
        self._by_weight[:] = weight_only
        self._value[_VANISHING, :n] = np.where(weight_only, gw, 10.0**rel)
        self._threshold[_VANISHING, :n] = np.where(
            weight_only,
            self.config.vanish_weight_ratio,
            np.where(self._active[_VANISHING, :n], self.config.vanish_clear_ratio, self.config.vanish_ratio),
        )

    def _exploding(self, pos: np.ndarray, log_gn: np.ndarray, log_glob: float, glob: float) -> None:
        c = self.config
        n = self._n
        x = np.append(log_gn, log_glob)
        valid = np.append(pos, math.isfinite(log_glob))
        new = valid & (self._hist_seen == 0)
        if new.any():
            # A unit seen for the first time gets a flat history at its first value.
            self._hist[:, new] = x[new]
        if self._rows:
            hist = self._hist if self._rows == c.window else self._hist[: self._rows]
            med, spread = _median_spread(np.sort(hist, axis=0))
            np.maximum(spread, _MIN_SPREAD, out=spread)
            excess = x - med
            np.maximum(self._peak - c.explode_memory, med, out=self._peak)
            self._peak[self._hist_seen == 0] = -np.inf
            grow = self._peak + np.maximum(self._log_ratio, c.explode_z * spread)
            ready = valid & (self._hist_seen >= c.explode_min_history)
            with np.errstate(invalid="ignore"):
                above_ceiling = valid & (x > self._log_ceiling)
                self._enter[_EXPLODING] = (ready & (x >= grow)) | above_ceiling
                self._leave[_EXPLODING] = valid & (excess <= self._log_clear) & ~above_ceiling
            self._seen[_EXPLODING] = valid
            limit = np.where(self._active[_EXPLODING], med + self._log_clear, np.minimum(grow, self._log_ceiling))
            self._threshold[_EXPLODING] = 10.0**limit
        else:
            with np.errstate(invalid="ignore"):
                self._enter[_EXPLODING] = valid & (x > self._log_ceiling)
            self._seen[_EXPLODING] = valid
            self._threshold[_EXPLODING] = c.explode_ceiling
        self._value[_EXPLODING, :n] = 10.0**log_gn
        self._value[_EXPLODING, n] = glob
        # Push into the ring; units without a value this step repeat their last one.
        self._last_x[valid] = x[valid]
        self._hist_seen[valid] += 1
        self._hist[self._head] = self._last_x
        self._head = (self._head + 1) % c.window
        self._rows = min(self._rows + 1, c.window)

    def _loss_spike(self, loss: float) -> None:
        c = self.config
        n = self._n
        if not math.isfinite(loss):
            return
        if self._loss_rows >= c.spike_min_history:
            hist = self._loss if self._loss_rows == c.window else self._loss[: self._loss_rows]
            # Positive losses are compared on a log scale: their noise grows with their size (near zero
            # a batch can cost 10x the median without anything being wrong).
            log_scale = loss > 0 and float(hist.min()) > 0
            cur = math.log10(loss) if log_scale else loss
            med_a, spread_a = _median_spread(np.sort(np.log10(hist) if log_scale else hist))
            med, spread = float(med_a), float(spread_a)
            spread = max(spread, _MIN_SPREAD if log_scale else 1e-3 * abs(med), 1e-12)
            limit = med + c.spike_z * spread
            if log_scale:
                limit = max(limit, med + math.log10(c.spike_ratio))
            back = med + c.spike_clear_z * spread
            self._enter[_SPIKE, n] = cur > limit
            self._leave[_SPIKE, n] = cur <= back
            self._seen[_SPIKE, n] = True
            self._value[_SPIKE, n] = loss
            edge = back if self._active[_SPIKE, n] else limit
            self._threshold[_SPIKE, n] = 10.0**edge if log_scale else edge
        self._loss[self._loss_head] = loss
        self._loss_head = (self._loss_head + 1) % c.window
        self._loss_rows = min(self._loss_rows + 1, c.window)

    def _transitions(self, step: int) -> list[Alert]:
        active = self._active
        # Consecutive counts: an observed step that does not meet the condition resets it, an unobserved one does not.
        self._on = np.where(self._enter, self._on + 1, np.where(self._seen, 0, self._on))
        self._off = np.where(self._leave, self._off + 1, np.where(self._seen, 0, self._off))
        raised = ~active & (self._on >= self._min_on)
        cleared = active & (self._off >= self.config.clear_steps)
        if not (raised.any() or cleared.any()):
            return []
        active |= raised
        active &= ~cleared
        alerts: list[Alert] = []
        for k, u in zip(*np.nonzero(raised | cleared), strict=True):
            up = bool(raised[k, u])
            alerts.append(
                Alert(
                    step=step,
                    layer=self._names[u],
                    kind=_KINDS[k],
                    active=up,
                    value=float(self._value[k, u]),
                    threshold=float(self._threshold[k, u]),
                    message=self._message(int(k), int(u), up),
                )
            )
        return alerts

    def _message(self, k: int, u: int, up: bool) -> str:
        v = float(self._value[k, u])
        t = float(self._threshold[k, u])
        who = "global gradient norm" if u == self._n else "gradient"
        if not up:
            return {
                _NONFINITE: "gradient finite again",
                _EXPLODING: f"{who} {v:.3g} back within {self.config.explode_clear_ratio:g}x of its recent median",
                _VANISHING: f"gradient RMS back to {v:.2g} x the largest layer's",
                _DEAD: f"gradient nonzero again ({v:.3g})",
                _SPIKE: f"loss {v:.4g} back in its recent range",
            }[k]
        if k == _NONFINITE:
            first = self.first_nonfinite
            where = f"; first in the run: {first[1]!r} at step {first[0]}" if first else ""
            what = f"{v:.0f} non-finite gradient values" if v >= 1 else f"gradient norm {v}"
            return what + where
        if k == _EXPLODING:
            return f"{who} {v:.3g} above {t:.3g} (fast growth over its recent history, or the ceiling)"
        if k == _VANISHING:
            if self._by_weight[u]:
                return f"||g||/||w|| = {v:.2g}, below {t:g}"
            return f"gradient RMS {v:.2g} x the largest layer's, below {t:g}, for {self.config.vanish_steps} samples"
        if k == _DEAD:
            return f"gradient exactly zero for {self.config.dead_steps} samples"
        return f"loss {v:.4g} above {t:.4g} (its recent median plus {self.config.spike_z:g} robust deviations)"

    # ------------------------------------------------------------------ state

    def verdicts(self) -> dict[str, str]:
        """Layer name -> healthy | vanishing | exploding | nonfinite | dead (flags now, by priority)."""
        a = self._active[:, : self._n]
        out: dict[str, str] = {}
        for i, name in enumerate(self.layers):
            if a[_NONFINITE, i]:
                out[name] = "nonfinite"
            elif a[_EXPLODING, i]:
                out[name] = "exploding"
            elif a[_VANISHING, i]:
                out[name] = "vanishing"
            elif a[_DEAD, i]:
                out[name] = "dead"
            else:
                out[name] = "healthy"
        return out

    def active(self) -> list[tuple[str | None, str]]:
        """(layer or None, kind) of every flag raised now."""
        return [(self._names[u], _KINDS[k]) for k, u in zip(*np.nonzero(self._active), strict=True)]


__all__ = ["DetectorConfig", "Detectors", "VERDICTS"]
