"""The per-layer statistics a run carries, described once: what each is called on screen,
when it is measured, and how it reads (the store, the consistency check, the heatmap's
scales, the detail page and the number formats all take it from here)."""

from __future__ import annotations

from typing import Literal, NamedTuple


class StatSpec(NamedTuple):
    """One per-layer statistic."""

    label: str
    """Its name on screen."""
    when: Literal["sampled", "detail", "update", "capture"]
    """Measured at every sampled step, at detail steps, after the optimizer step of a detail step
    (it comes in an `UpdateStats`), or at the steps of a deep capture (in a `CaptureStats`)."""
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
    "act_rms": StatSpec("rms(a)", "capture", False, (-4.0, 4.0)),
    "act_max": StatSpec("max|a|", "capture", False, (-3.0, 6.0)),
    "act_kurtosis": StatSpec("kurt(a)", "capture", False, (0.0, 4.0)),
    "act_nonfinite": StatSpec("non-finite a", "capture", False, None, "count"),
    "opt_m1": StatSpec("‖m‖₂", "capture", False, (-8.0, 2.0)),
    "opt_m2": StatSpec("‖v‖₂", "capture", False, (-14.0, 2.0)),
}
"""Every per-layer statistic, by its field name in `StepStats` (`UpdateStats` for update_ratio,
`CaptureStats` for those measured in a deep capture)."""

CAPTURE_STATS: tuple[str, ...] = tuple(name for name, spec in LAYER_STATS.items() if spec.when == "capture")
"""The per-layer arrays of a `CaptureStats`."""

STEP_FLOAT_STATS: tuple[str, ...] = tuple(
    name for name, spec in LAYER_STATS.items() if spec.when in ("sampled", "detail") and spec.form != "count"
)
"""The per-layer float arrays of a `StepStats` (grad_norm always, the others on detail steps)."""

__all__ = ["CAPTURE_STATS", "LAYER_STATS", "STEP_FLOAT_STATS", "StatSpec"]
