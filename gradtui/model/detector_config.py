"""Thresholds of the detectors (`DetectorConfig`): defaults, `key=value` options and validation.

The rules that use them live in `gradtui.model.detectors`; README.md (Detectors) describes both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds of every detector. Persistence counts steps, whatever the sampling stride; the
    histories (`window`, `explode_min_history`, ...) hold samples."""

    vanish_ratio: float = 3e-4
    """Vanishing when a layer's per-parameter gradient RMS is below this fraction of the largest layer's."""
    vanish_clear_ratio: float = 1e-3
    """A vanishing flag clears once the layer is back above this fraction of the largest layer's RMS."""
    vanish_weight_ratio: float = 1e-7
    """Also vanishing when ||g||/||w|| is below this and the layer is 10x below the largest (detail steps)."""
    vanish_steps: int = 10
    """Steps a vanishing condition must hold before the flag is raised."""
    explode_ratio: float = 10.0
    """Exploding when a norm jumps this factor above its baseline (recent median, or its decayed past peak)."""
    explode_z: float = 4.0
    """... and at least this many robust standard deviations (log10 scale, from the window's IQR) above it."""
    explode_memory: float = 0.005
    """Decay of the baseline's past peak, in decades per step: a norm that fell as the run converged and
    spikes back toward its old level is not exploding."""
    explode_loss_z: float = 2.0
    """The growth rule also needs the loss this many robust deviations above its recent median (when the
    loss is known): a gradient that jumps while the loss holds or falls is a run leaving a plateau."""
    explode_warn_ratio: float = 3.0
    """Severity of an exploding flag, judged against the run's scale (the largest median of `window`
    samples the norm has had, never decaying): within this factor of it the flag is only info (a hard
    batch on a converged run is a jump back toward where the run once was, not a blow-up); at or above
    it a warning."""
    explode_scale_ratio: float = 10.0
    """An exploding flag is critical once the norm is this factor above the run's scale ..."""
    explode_compound_ratio: float = 2.0
    """... or once it has grown by at least this factor at each of `explode_critical_steps` samples in a
    row (a blow-up compounds; a hard batch returns at once) ..."""
    explode_critical_steps: int = 2
    """... (the number of those samples), or is above `explode_ceiling`."""
    explode_clear_ratio: float = 3.0
    """An exploding flag clears once the norm is back within this factor of its recent median."""
    explode_ceiling: float = 1e6
    """Exploding whenever a layer's or the global gradient L2 norm exceeds this, whatever its history."""
    explode_min_history: int = 2
    """Samples a norm needs before the growth rule applies (the ceiling applies from the first)."""
    window: int = 32
    """Samples kept for the recent medians of the exploding and loss-spike rules."""
    dead_steps: int = 20
    """Steps of an exactly-zero gradient before a layer is flagged dead."""
    spike_z: float = 6.0
    """Loss spike when the loss exceeds its recent median by this many robust standard deviations (of
    log10 loss when the losses are positive) ..."""
    spike_ratio: float = 2.0
    """... and is at least this multiple of its recent median (positive losses)."""
    spike_clear_z: float = 2.0
    """A loss-spike flag clears once the loss is back within this many robust standard deviations."""
    spike_min_history: int = 20
    """Finite losses needed before the loss-spike rule applies."""
    clear_steps: int = 5
    """Steps a leave condition must hold before any flag is cleared."""

    def __post_init__(self) -> None:
        problems = _check(self)
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
            ValueError: An unknown key (the message lists the valid ones), or a value that does not
                parse or is out of range (the message names the key).
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, float | int] = {}
        for key, raw in options.items():
            if key not in fields:
                raise ValueError(f"unknown detector option {key!r}; valid options: {', '.join(fields)}")
            text = str(raw).strip()
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"detector option {key}: {text!r} is not a number") from None
            if fields[key].type in ("int", int):
                if not number.is_integer():
                    raise ValueError(f"detector option {key}: {text!r} is not a whole number")
                values[key] = int(number)
            else:
                values[key] = number
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, items: Iterable[str]) -> DetectorConfig | None:
        """Build a config from "key=value" strings (`-D` options, `GRADTUI_DETECTORS` split on ","):
        None when there are none.

        Raises:
            ValueError: an item that is not key=value, an unknown key, or a bad value.
        """
        options: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item.strip()!r} is not key=value")
            options[key.strip()] = value.strip()
        return cls.from_options(options) if options else None


def _check(c: DetectorConfig) -> list[str]:
    """Everything wrong with a config, one readable phrase each."""
    out: list[str] = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(f"{f.name} must be a finite number, got {v!r}")
        elif f.type in ("int", int) and not isinstance(v, int):
            out.append(f"{f.name} must be a whole number, got {v!r}")
    if out:
        return out
    if not 0 < c.vanish_ratio < 1:
        out.append(f"vanish_ratio must be between 0 and 1, got {c.vanish_ratio}")
    elif not c.vanish_ratio <= c.vanish_clear_ratio < 1:
        out.append(f"vanish_clear_ratio must be in [vanish_ratio, 1), got {c.vanish_clear_ratio}")
    if not 0 <= c.vanish_weight_ratio < 1:
        out.append(f"vanish_weight_ratio must be in [0, 1), got {c.vanish_weight_ratio}")
    if c.explode_ratio <= 1:
        out.append(f"explode_ratio must be above 1, got {c.explode_ratio}")
    elif not 1 <= c.explode_clear_ratio <= c.explode_ratio:
        out.append(f"explode_clear_ratio must be in [1, explode_ratio], got {c.explode_clear_ratio}")
    if not 1 <= c.explode_warn_ratio <= c.explode_scale_ratio:
        out.append(f"explode_warn_ratio must be in [1, explode_scale_ratio], got {c.explode_warn_ratio}")
    if c.explode_compound_ratio <= 1:
        out.append(f"explode_compound_ratio must be above 1, got {c.explode_compound_ratio}")
    for name in ("explode_z", "explode_memory", "explode_loss_z", "spike_clear_z"):
        if getattr(c, name) < 0:
            out.append(f"{name} must be at least 0, got {getattr(c, name)}")
    if c.explode_ceiling <= 0:
        out.append(f"explode_ceiling must be positive, got {c.explode_ceiling}")
    if c.spike_z <= 0 or c.spike_clear_z > c.spike_z:
        out.append(f"spike_z must be positive and at least spike_clear_z, got {c.spike_z}")
    if c.spike_ratio < 1:
        out.append(f"spike_ratio must be at least 1, got {c.spike_ratio}")
    counts = ("vanish_steps", "dead_steps", "clear_steps", "explode_critical_steps", "explode_min_history")
    for name in (*counts, "spike_min_history"):
        if getattr(c, name) < 1:
            out.append(f"{name} must be at least 1, got {getattr(c, name)}")
    if c.window < 4:
        out.append(f"window must be at least 4, got {c.window}")
    elif max(c.explode_min_history, c.spike_min_history) > c.window:
        out.append(f"explode_min_history and spike_min_history must not exceed window ({c.window})")
    return out


__all__ = ["DetectorConfig"]
