"""The packed vector of a sampled step, the one layout both ends read: its segments
(`SEGMENTS`), what travels beside it (`StepMeta`), and `publish`, which turns a host copy
back into events on the publishing thread (`gradtui.probe.stats` packs it on the training
thread)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtui.model.events import GRAD_HIST_BUCKETS, StepStats, UpdateStats

SEGMENTS: dict[str, str] = {
    "layer_sq": "sum",  # per layer: squared gradient L2 norm (unscaled)
    "grad_params": "sum",  # per layer: parameters with a gradient (distributed)
    "numel": "sum",  # per layer: values with a gradient (distributed)
    "l1": "sum",  # per layer: L1 norm (detail)
    "nnz": "sum",  # per layer: non-zero values (detail)
    "amax": "max",  # per layer: max |g| (detail)
    "w_sq": "sum",  # per layer: squared weight norm (detail)
    "hist": "sum",  # per layer x GRAD_HIST_BUCKETS: histogram of log2|g| (detail)
    "nonfinite": "sum",  # per layer: NaN/Inf values (counted on the device)
    "rank_nonfinite": "ranks",  # per rank: NaN/Inf values in its copy
    "loss": "mean",  # the step's loss
    "lane_sq": "sum",  # per lane: squared norm of the gradient reaching it
    "lane_seen": "max",  # per lane: a gradient reached it
    "scale": "first",  # a GradScaler's loss scale
    "upd_d2": "sum",  # per layer: squared update norm (the last detail step's)
    "upd_w2": "sum",  # per layer: squared weight norm before that update
    "clipped": "first",  # the global norm after gradtui's clipping (global already)
    "cap_act": "sum",  # capture, per layer x 6: finite values, sums of a^1..a^4, non-finite values
    "cap_amax": "max",  # capture, per layer: max |a| over the finite values
    "cap_m1": "sum",  # capture, per layer: squared norm of the optimizer's first moment
    "cap_m2": "sum",  # capture, per layer: squared norm of its second moment
    "cap_n1": "sum",  # capture, per layer: tensors in cap_m1 (0: no such state)
    "cap_n2": "sum",  # capture, per layer: tensors in cap_m2
    "cap_origin": "rows",  # capture: first non-finite forward and backward call (`capture.Checks.flags`)
}
"""The packed vector of a sampled step: each segment's name and how ranks combine it (sum | max |
mean | first | ranks: one value per rank | rows: each rank's whole block). The one table both ends read."""


@dataclass
class StepMeta:
    """What a step's vector does not carry: known on the host when the step was sampled."""

    step: int
    time: float
    lrs: tuple[float, ...]
    schedule_lrs: tuple[float, ...]
    has_grad: np.ndarray
    numel_with_grad: np.ndarray
    detail: bool
    clip_mode: str
    clip_threshold: float
    steps_per_sec: float
    paused: bool
    update_step: int | None = None
    layout: list[tuple[str, int]] = field(default_factory=list)
    """(segment name, length) in the order of the vector (each segment's meaning: `SEGMENTS`)."""
    counts: np.ndarray | None = None
    capture: Any = None
    """A deep capture's step: its `gradtui.probe.capture.CaptureMeta` (None otherwise)."""


def publish(
    gathered: np.ndarray, meta: StepMeta, n: int, lanes: bool, stepped_factor: float = math.nan
) -> tuple[StepStats, UpdateStats | None]:
    """The events of a sampled step from its (ranks, vector) host copy and the factor between the
    gradients after gradtui's clipping and those the optimizer used (NaN: unknown)."""
    parts: dict[str, np.ndarray] = {}
    per_rank: dict[str, np.ndarray] = {}
    one = gathered.shape[0] == 1  # one process: each combined segment is its one row, as it is
    pos = 0
    for name, length in meta.layout:
        how = SEGMENTS[name]
        block = gathered[:, pos : pos + length]
        pos += length
        if one and how not in ("ranks", "rows"):
            parts[name] = block[0]
        elif how == "max":
            parts[name] = block.max(axis=0)
        elif how == "mean":
            parts[name] = block.mean(axis=0)
        elif how == "first":
            parts[name] = block[0]
        elif how == "ranks":
            per_rank[name] = block[:, 0]
        elif how == "rows":
            continue  # read by its own reader (`gradtui.probe.capture.split`)
        else:
            parts[name] = block.sum(axis=0)

    if "grad_params" in parts:
        has = parts["grad_params"] > 0
        numel = parts["numel"]
    else:
        has, numel = meta.has_grad, meta.numel_with_grad
    layer_sq = parts["layer_sq"]
    total = float(np.sqrt(layer_sq.sum()))
    mean_abs = max_abs = zero_frac = weight_norm = None
    if meta.detail:
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.where(has, numel, 1)
            mean_abs = np.where(has, parts["l1"] / denom, np.nan)
            zero_frac = np.where(has, 1.0 - parts["nnz"] / denom, np.nan)
        max_abs = np.where(has, parts["amax"], np.nan)
        weight_norm = np.sqrt(parts["w_sq"])
    grad_hist = None
    if "hist" in parts:
        hist = np.rint(np.nan_to_num(parts["hist"])).reshape(n, GRAD_HIST_BUCKETS)
        grad_hist = np.clip(hist, 0, np.iinfo(np.int32).max).astype(np.int32)
        # Its zero column is exact where the 0-"norm" is not (half precision, huge tensors).
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_frac = np.where(has, hist[:, 0] / np.where(has, numel, 1), np.nan)
    if "nonfinite" in parts:
        counts = np.rint(np.nan_to_num(parts["nonfinite"])).astype(np.int64)
    else:
        counts = meta.counts if meta.counts is not None else np.zeros(n, np.int64)
    ranks = per_rank.get("rank_nonfinite")
    nonfinite_ranks = tuple(int(r) for r in np.flatnonzero(ranks > 0)) if ranks is not None else ()
    clipped_norm = float(parts["clipped"][0]) if "clipped" in parts else total
    if meta.clip_mode == "off" or total == 0.0:
        clip_factor = 1.0
    elif not math.isfinite(total):
        clip_factor = float("nan")
    else:
        clip_factor = min(1.0, clipped_norm / total)
    stats = StepStats(
        step=meta.step,
        time=meta.time,
        loss=float(parts["loss"][0]),
        lrs=meta.lrs,
        grad_norm=np.where(has, np.sqrt(layer_sq), np.nan),
        has_grad=np.asarray(has, bool).copy(),
        nonfinite=counts,
        global_norm=total,
        clipped_norm=clipped_norm,
        clip_factor=clip_factor,
        clip_mode=meta.clip_mode,
        clip_threshold=meta.clip_threshold,
        steps_per_sec=meta.steps_per_sec,
        paused=meta.paused,
        mean_abs=mean_abs,
        max_abs=max_abs,
        zero_frac=zero_frac,
        weight_norm=weight_norm,
        loss_scale=float(parts["scale"][0]) if "scale" in parts else math.nan,
        # A GradScaler skips the step when any gradient is inf/NaN: then so is their norm.
        amp_skipped="scale" in parts and not math.isfinite(total),
        nonfinite_ranks=nonfinite_ranks,
        lanes=np.where(parts["lane_seen"] > 0, np.sqrt(parts["lane_sq"]), np.nan) if lanes else None,
        schedule_lrs=meta.schedule_lrs,
        stepped_norm=clipped_norm * stepped_factor,
        grad_hist=grad_hist,
    )
    update = None
    if meta.update_step is not None:
        update = UpdateStats(step=meta.update_step, update_ratio=update_ratio(parts["upd_d2"], parts["upd_w2"]))
    return stats, update


def update_ratio(d2: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """||Δw|| / ||w|| per layer from squared norms; 0/0 (no update, zero weights) stays NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out: np.ndarray = np.sqrt(d2) / np.sqrt(w2)
    return out
