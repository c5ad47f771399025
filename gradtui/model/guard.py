"""What the guard may do to a run that goes wrong, and the words it uses: the config of
`watch(guard=...)`, free of torch so that viewers and reports can read it.

The guard acts only on what cannot be wrong about a blow-up: a step whose gradients or loss
are not finite (checked at every step while the guard is on), and a *critical* exploding
alarm of the detectors (compounding growth, or a norm far above the run's own scale) that is
still up `patience` steps later. Warnings and info-level alarms are shown, never
acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradtui.model.commands import AUTO_CLIP_Z

GUARD_ACTIONS: tuple[str, ...] = ("skip", "rollback", "clip", "lr_cut")
"""The actions on the record (`GuardAction.action`) and in the report's `guard`."""

GUARD_SYMBOLS: dict[str, str] = {"skip": "⤼", "rollback": "⟲", "clip": "✂", "lr_cut": "↓"}
"""How the viewer marks each action."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What the guard does; `watch(guard=True)` takes these defaults.

    Args:
        skip: a step with a non-finite loss or gradient is not applied (its gradients are set
            to None before `optimizer.step()`, which every torch optimizer honours). A
            GradScaler's own skips are left to it.
        rollback: on a non-finite step, or a critical exploding alarm up `patience`
            steps, put back the model and optimizer state of the last snapshot taken while no
            blow-up alarm was up, and multiply the learning rate by `lr_factor` (an override
            through the probe's control, so a loop that sets the LR every step keeps it).
        patience: steps a critical exploding alarm may stay up before a rollback.
        lr_factor: each rollback multiplies the learning rate by this (they compound).
        snapshot_every: steps between snapshots (each taken only while no blow-up alarm is up).
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
            step anyway, through the global norm the probe computes at every step; the loss
            is checked at every step either way.
    """

    skip: bool = True
    rollback: bool = True
    patience: int = 3
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


def guard_config(guard: object) -> Guard | None:
    """The guard `watch(guard=...)` asks for: None (off), True (the defaults) or a `Guard`."""
    if guard is None or guard is False:
        return None
    if guard is True:
        return Guard()
    if isinstance(guard, Guard):
        return guard
    raise TypeError(f"guard must be True, False or a gradtui.Guard(...), got {type(guard).__name__}")


def batch_text(ids: object, limit: int = 64) -> str:
    """Batch identifiers as the ledger keeps them: "17", "a.jsonl:3", "3,17,42" (long lists cut)."""
    if ids is None:
        return ""
    if isinstance(ids, str):
        return ids[:400]
    if isinstance(ids, bool) or isinstance(ids, int):
        return str(int(ids))
    tolist = getattr(ids, "tolist", None)
    values = tolist() if callable(tolist) else ids
    if isinstance(values, (int, float, str)):
        return str(values)[:400]
    try:
        flat = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"batch= takes an int, a str, or a sequence/tensor of indices, got {type(ids).__name__}"
        ) from None
    shown = ",".join(str(v) for v in flat[:limit])
    return shown + (f",…(+{len(flat) - limit})" if len(flat) > limit else "")
