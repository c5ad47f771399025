"""A run's deep captures, folded from its events (`Capture`, `CaptureStats`, `NonFiniteOrigin`):
the arrays `gradtui.load` exposes and the section `gradtui report` prints. One fold, two readers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtui.model.events import Capture, CaptureStats, Event, NonFiniteOrigin
from gradtui.model.layer_stats import CAPTURE_STATS


@dataclass
class CaptureData:
    """The captured steps of a run (C of them) and L layers: `steps` [C] int64 and, per statistic of
    `CAPTURE_STATS` (act_rms, act_max, act_nonfinite, act_kurtosis, opt_m1, opt_m2), a [C, L] array
    (`stats[name]`; int64 for act_nonfinite, float64 with NaN where not measured for the others)."""

    steps: np.ndarray
    stats: dict[str, np.ndarray]
    windows: list[dict[str, Any]] = field(default_factory=list)
    """Each capture: `{"start", "steps", "reason", "ended"}` (ended: its last step, None if cut short)."""
    origins: list[dict[str, Any]] = field(default_factory=list)
    """Each first non-finite module found: the `NonFiniteOrigin` fields and its `words`."""

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    @property
    def act_rms(self) -> np.ndarray:
        return self.stats["act_rms"]

    @property
    def act_max(self) -> np.ndarray:
        return self.stats["act_max"]

    @property
    def act_nonfinite(self) -> np.ndarray:
        return self.stats["act_nonfinite"]

    @property
    def act_kurtosis(self) -> np.ndarray:
        return self.stats["act_kurtosis"]

    @property
    def opt_m1(self) -> np.ndarray:
        return self.stats["opt_m1"]

    @property
    def opt_m2(self) -> np.ndarray:
        return self.stats["opt_m2"]


def origin_entry(origin: NonFiniteOrigin) -> dict[str, Any]:
    """A `NonFiniteOrigin` as the report's JSON has it."""
    return {
        "step": origin.step,
        "module": origin.module,
        "layer": origin.layer,
        "direction": origin.direction,
        "kind": origin.kind,
        "input_max": origin.input_max if math.isfinite(origin.input_max) else None,
        "op": origin.op or None,
        "rank": origin.rank,
        "how": origin.how,
        "words": origin.words(),
    }


class CaptureFold:
    """Folds a run's capture events (others are ignored); `n_layers` fixes the width of its rows
    (None: the first `CaptureStats` does; a row of another width is left out)."""

    def __init__(self, n_layers: int | None = None) -> None:
        self.n_layers = n_layers
        self._steps: list[int] = []
        self._rows: dict[str, list[np.ndarray]] = {name: [] for name in CAPTURE_STATS}
        self.windows: list[dict[str, Any]] = []
        self.origins: list[NonFiniteOrigin] = []

    def add(self, event: Event) -> None:
        if isinstance(event, CaptureStats):
            arrays = {name: np.asarray(getattr(event, name)) for name in CAPTURE_STATS}
            width = self.n_layers if self.n_layers is not None else len(arrays[CAPTURE_STATS[0]])
            if any(a.shape != (width,) for a in arrays.values()):
                return
            self.n_layers = width
            self._steps.append(event.step)
            for name, values in arrays.items():
                self._rows[name].append(values)
        elif isinstance(event, Capture):
            if not event.ended:
                self.windows.append({"start": event.start, "steps": event.steps, "reason": event.reason, "ended": None})
            else:
                for window in reversed(self.windows):
                    if window["start"] == event.start and window["ended"] is None:
                        window["ended"] = event.step
                        break
        elif isinstance(event, NonFiniteOrigin):
            self.origins.append(event)

    @staticmethod
    def empty() -> CaptureData:
        return CaptureFold().data()

    def data(self) -> CaptureData:
        width = self.n_layers or 0
        stats = {}
        for name in CAPTURE_STATS:
            dtype = np.int64 if name == "act_nonfinite" else np.float64
            rows = self._rows[name]
            stats[name] = np.array(rows, dtype).reshape(len(rows), width) if rows else np.zeros((0, width), dtype)
        return CaptureData(
            steps=np.array(self._steps, np.int64),
            stats=stats,
            windows=[dict(w) for w in self.windows],
            origins=[origin_entry(o) for o in self.origins],
        )

    def section(self, names: list[str]) -> dict[str, Any] | None:
        """The report's `capture` object (None when the run had no capture): its windows, the
        origins found, and per layer over every captured step the largest rms and max |a| and
        kurtosis, the non-finite activations, and the smallest and last second-moment norm."""
        if not self.windows and not self.origins and not self._steps:
            return None
        data = self.data()
        layers = []
        if len(data):
            for i, name in enumerate(names[: data.stats["act_rms"].shape[1]]):
                col = {k: v[:, i] for k, v in data.stats.items()}
                layers.append(
                    {
                        "name": name,
                        "act_rms_max": _reduce(col["act_rms"], np.nanmax),
                        "act_max_max": _reduce(col["act_max"], np.nanmax),
                        "act_kurtosis_max": _reduce(col["act_kurtosis"], np.nanmax),
                        "act_nonfinite": int(col["act_nonfinite"].sum()),
                        "opt_m2_min": _reduce(col["opt_m2"], np.nanmin),
                        "opt_m2_last": _reduce(col["opt_m2"][-1:], np.nanmax),
                    }
                )
        return {
            "windows": data.windows,
            "steps": [int(s) for s in data.steps],
            "origins": data.origins,
            "layers": layers,
        }


def _reduce(values: np.ndarray, how: Any) -> float | None:
    finite = values[np.isfinite(values)]
    return float(how(finite)) if finite.size else None


__all__ = ["CaptureData", "CaptureFold", "origin_entry"]
