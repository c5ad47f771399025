"""The detectors' words: the message of every alert, from the facts of the flag that moved.

`Detectors` (gradtui/model/detectors.py) decides which flags move and with which value,
threshold and level; this module only says it in English, from a `Change`. The texts are
quoted by README.md (Detectors) and the tests: change one here, not in the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from gradtui.model.detector_config import DetectorConfig


class FirstNonfinite(NamedTuple):
    """Where a run's first non-finite gradient was seen."""

    step: int
    layer: str


class Severity(NamedTuple):
    """What an exploding flag's level rests on (below the ceiling, once the rule has history)."""

    scale: float
    """The run's scale: the largest recent median the norm has had."""
    times: float
    """The norm (now, or the last one seen) over that scale."""
    rise: int
    """Samples in a row at which the norm grew by `explode_compound_ratio` or more."""


class Change(NamedTuple):
    """A flag raised, raised again at a higher level (escalated) or cleared at a step, and the
    facts its message gives. The last four fields matter to one kind each."""

    kind: str
    """One of ALERT_KINDS."""
    layer: str | None
    """The layer, or None for the run (its global norm, its loss)."""
    up: bool
    """Raised (or escalated), not cleared."""
    escalated: bool
    value: float
    threshold: float
    level: str
    """The flag's level (one of ALERT_LEVELS): its new one, or for a clear the one it had."""
    by_weight: bool = False
    """vanishing: by the gradient-to-weight rule, not by depth."""
    ceiling_hit: bool = False
    """exploding: the norm is past `explode_ceiling`."""
    overflow: bool = False
    """exploding: the norm overflowed a float32 sum over finite values (its value is `OVERFLOW_NORM`, a bound)."""
    severity: Severity | None = None
    """exploding: why the flag has its level; None where the level needs no reason (the ceiling)."""
    loss_scale: float = math.nan
    """loss_spike: the largest median the loss has had."""
    first_nonfinite: FirstNonfinite | None = None
    """nonfinite: the run's first non-finite gradient."""


def message(change: Change, config: DetectorConfig) -> str:
    """The message of an alert, in the words of its kind."""
    return _BY_KIND[change.kind](change, config)


def _norm(change: Change) -> str:
    return "global gradient norm" if change.layer is None else "gradient norm"


def exploding_message(change: Change, config: DetectorConfig) -> str:
    v, t = change.value, change.threshold
    if not change.up:
        return f"{_norm(change)} {v:.3g} back within {config.explode_clear_ratio:g}x of its recent median"
    if change.escalated:
        return f"{_norm(change)} {v:.3g} past {t:.3g}" + severity_words(change, config)
    if change.overflow:
        return (
            f"{_norm(change)} overflowed float32: ‖g‖ ≥ {v:.2g} (its sum of squares passed float32's max, "
            "3.4e38), every gradient value finite"
        )
    if change.ceiling_hit:
        return f"{_norm(change)} {v:.3g} above the ceiling {config.explode_ceiling:g}"
    return f"{_norm(change)} {v:.3g} jumped past {t:.3g}, over {config.explode_ratio:g}x its recent level" + (
        severity_words(change, config)
    )


def severity_words(change: Change, config: DetectorConfig) -> str:
    """Why an exploding flag has its level: "; critical: ..." (nothing at the ceiling)."""
    s = change.severity
    if s is None:
        return ""
    if change.level == "critical" and s.rise >= config.explode_critical_steps:
        return f"; critical: grown {config.explode_compound_ratio:g}x or more at {s.rise} samples in a row"
    if change.level == "critical":
        return f"; critical: {s.times:.3g}x the run's scale {s.scale:.3g}"
    if change.level == "warning":
        return f"; warning: {s.times:.3g}x the run's scale {s.scale:.3g}"
    return f"; info: within {config.explode_warn_ratio:g}x of the run's scale {s.scale:.3g}, as a hard batch is"


def loss_spike_message(change: Change, config: DetectorConfig) -> str:
    v, t = change.value, change.threshold
    if not change.up:
        return f"loss {v:.4g} back within its recent range"
    if change.escalated:
        return f"loss {v:.4g} above its recent range" + spike_words(change)
    return f"loss {v:.4g} above {t:.4g}, far above its recent range" + spike_words(change)


def spike_words(change: Change) -> str:
    """Why a loss spike has its level: within the run's earlier range (info) or above it."""
    scale = f"{change.loss_scale:.4g}"
    if change.level == "info":
        return f"; info: within the run's earlier range (up to {scale})"
    return f"; warning: above the run's earlier range (up to {scale})"


def nonfinite_message(change: Change, config: DetectorConfig) -> str:
    v = change.value
    if not change.up:
        return "gradient finite again"
    if change.layer is None:
        return f"global gradient norm {v} at a step whose layers were not sampled"
    what = f"{v:.0f} non-finite gradient values" if v >= 1 else f"gradient norm {v}"
    first = change.first_nonfinite
    return what + (f"; first in the run: layer {first.layer!r} at step {first.step}" if first else "")


def vanishing_message(change: Change, config: DetectorConfig) -> str:
    v, t = change.value, change.threshold
    if not change.up:
        return f"gradient RMS back to {v:.2g}x the largest layer's"
    if change.by_weight:
        return f"||g||/||w|| = {v:.2g}, below {t:g}, for {config.vanish_steps} steps"
    return f"gradient RMS {v:.2g}x the largest layer's, below {t:g}, for {config.vanish_steps} steps"


def dead_message(change: Change, config: DetectorConfig) -> str:
    if not change.up:
        return f"gradient nonzero again ({change.value:.3g})"
    return f"gradient exactly zero for {config.dead_steps} steps"


def rolled_back_message(to_step: int) -> str:
    """A flag that the guard's rollback cleared: the run is back where it was before it rose."""
    return f"cleared: the guard rolled the run back to step {to_step}, before it rose"


_BY_KIND: dict[str, Callable[[Change, DetectorConfig], str]] = {
    "nonfinite": nonfinite_message,
    "exploding": exploding_message,
    "vanishing": vanishing_message,
    "dead": dead_message,
    "loss_spike": loss_spike_message,
}

__all__ = [
    "Change",
    "FirstNonfinite",
    "Severity",
    "dead_message",
    "exploding_message",
    "loss_spike_message",
    "message",
    "nonfinite_message",
    "rolled_back_message",
    "severity_words",
    "spike_words",
    "vanishing_message",
]
