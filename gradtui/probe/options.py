"""The settings of a `Monitor`, grouped by what they are for and checked once.

`gradtui.watch` takes them as plain keyword arguments (the call a user writes stays short) and
builds these; `Monitor` takes these. Each group validates itself, so a bad value is refused
with its name before anything is hooked into the user's model or optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradtui.probe.budget import parse_budget


@dataclass(frozen=True)
class Sampling:
    """Which steps get per-layer statistics (`gradtui.probe.budget`)."""

    every: int | None = None
    """A fixed stride, exactly; None: as often as the overhead budget allows."""
    detail_every: int = 50
    """Every `detail_every`-th sampled step also gets the detail statistics."""
    budget: float | str | None = None
    """The overhead budget (None: `GRADTUI_BUDGET`, else the default); only without `every`."""

    def __post_init__(self) -> None:
        for label, value in (("every", 1 if self.every is None else self.every), ("detail_every", self.detail_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if self.every is not None and self.budget is not None:
            raise ValueError("give every= (a fixed sampling stride) or budget= (a stride the probe chooses), not both")
        if self.budget is not None:
            parse_budget(self.budget)

    @property
    def share(self) -> float | None:
        """The budget given here as a share of the step time (None when not given)."""
        return parse_budget(self.budget) if self.budget is not None else None


@dataclass(frozen=True)
class Output:
    """Where the run's events go besides the viewers."""

    record: str | os.PathLike[str] | None = None
    """A record file, or a folder for a new one."""
    overwrite: bool = False
    queue_size: int | None = None
    """Keep events in an in-process queue of this size (None: no queue)."""
    run: str | None = None
    """The run's name (default: script name and pid)."""


@dataclass(frozen=True)
class Serving:
    """How viewers reach the run (`gradtui.probe.sinks.open_server`)."""

    connect: bool = True
    """Stream to the viewer that started this process (`gradtui run`), when there is one."""
    serve: bool | None = None
    listen: str | None = None
    token_file: str | os.PathLike[str] | None = None


@dataclass(frozen=True)
class Instruments:
    """What is measured and done besides the per-layer norms."""

    detectors: Any = True
    """True (defaults), False, or a `DetectorConfig`."""
    clip: tuple[str, float] | None = None
    update_ratio: bool = True
    lanes: Sequence[str] | int = ()
    guard: Any = None
    """None/False, True, or a `gradtui.Guard`."""
    defer: bool | None = None
    """Read each step's host copy a step later (default: on CUDA)."""
    capture: bool | int = True
    """Deep captures armed by trouble: True (`capture.DEFAULT_STEPS` steps), a number of steps, or
    False (none; `mon.capture()` and a viewer's ask still arm one). See `gradtui.probe.capture`."""


DEFAULT_SAMPLING = Sampling()
DEFAULT_OUTPUT = Output()
DEFAULT_SERVING = Serving()
DEFAULT_INSTRUMENTS = Instruments()
