"""The per-layer statistics a run carries, described once: what each is called on screen,
when it is measured, and how it reads (the store, the consistency check, the heatmap's
scales, the detail page and the number formats all take it from here)."""

from __future__ import annotations

from typing import Literal, NamedTuple


class StatSpec(NamedTuple):
    """One per-layer statistic."""

    label: str
    """Its name on screen."""
    when: Literal["sampled", "detail", "update"]
    """Measured at every sampled step, at detail steps, or after the optimizer step of a detail step
    (it comes in an `UpdateStats`)."""
    per_gradient: bool
    """A statistic of the gradient: unknown (NaN) where the layer had none that step."""
    log_range: tuple[float, float] | None
    """Its fixed log10 colour range (a vanishing or exploding layer looks the same in every run);
    None where it is not drawn on a log scale."""
    form: Literal["sig", "percent", "count"] = "sig"
    """How a value reads: significant digits, a percentage of values, a count."""


LAYER_STATS: dict[str, StatSpec] = {
    "grad_norm": StatSpec("‖g‖₂", "sampled", True, (-7.0, 3.0)),
    "mean_abs": StatSpec("mean|g|", "detail", True, (-9.0, 1.0)),
    "max_abs": StatSpec("max|g|", "detail", True, (-8.0, 2.0)),
    "update_ratio": StatSpec("‖Δw‖/‖w‖", "update", False, (-7.0, 1.0)),
    "weight_norm": StatSpec("‖w‖₂", "detail", False, (-3.0, 3.0)),
    "zero_frac": StatSpec("zero frac", "detail", True, (-4.0, 0.0), "percent"),
    "nonfinite": StatSpec("non-finite", "sampled", False, None, "count"),
}
"""Every per-layer statistic, by its field name in `StepStats` (`UpdateStats` for update_ratio)."""

STEP_FLOAT_STATS: tuple[str, ...] = tuple(
    name for name, spec in LAYER_STATS.items() if spec.when != "update" and spec.form != "count"
)
"""The per-layer float arrays of a `StepStats` (grad_norm always, the others on detail steps)."""

__all__ = ["LAYER_STATS", "STEP_FLOAT_STATS", "StatSpec"]
