""""What to change" from where a run broke: the first non-finite module a deep capture or a re-run
named (`NonFiniteOrigin`), and an optimizer second moment that collapsed during a capture. Kept
apart from the per-alarm advice (`gradtui.model.advice`), which adds these to its own."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradtui.model.capture_summary import CaptureData
from gradtui.model.events import NonFiniteOrigin

OVERFLOW_INPUT = 1e4
"""An input this large (max |x|) to the module that went non-finite is an overflow, not a bad op."""
COLLAPSE = 1e-3
"""A layer's second-moment norm that falls below this share of its first captured value collapsed."""


def origin_advice(origin: NonFiniteOrigin) -> dict[str, Any]:
    """Cause and cure for the first non-finite value of a run: `{"kind": "nonfinite", "layers",
    "first_step", "origin", "cause", "cure"}`."""
    where = origin.module or "the loss"
    big = origin.input_max == origin.input_max and origin.input_max >= OVERFLOW_INPUT
    size = f"{origin.input_max:.2g}" if origin.input_max == origin.input_max else "unknown"
    if origin.direction == "forward" and not origin.module:
        cause = (
            f"the loss itself was the first non-finite value (step {origin.step}); the model's output reached "
            f"max |y| {size}"
        )
        cure = (
            "compute the loss in a stable form (cross_entropy / log_softmax on logits, never log(softmax)); "
            "normalise regression targets; if the output grew over the steps before, lower the learning rate "
            "or clip gradients"
        )
    elif origin.direction == "forward" and big:
        cause = (
            f"{where} overflowed in the forward pass at step {origin.step}: its input reached max |x| {size} "
            f"({'Inf' if origin.kind == 'inf' else 'NaN'} out); activations grew until float range ran out"
        )
        cure = (
            f"if {where} is a softmax or exp, subtract the max first (torch.logsumexp, F.log_softmax); "
            "otherwise keep the activations bounded: a lower learning rate, gradient clipping, or a "
            f"normalisation (LayerNorm) before {where}"
        )
    elif origin.direction == "forward":
        cause = (
            f"{where} produced {'NaN' if origin.kind == 'nan' else 'Inf'} from finite, moderate input "
            f"(max |x| {size}) at step {origin.step}: an op outside its domain (log of <= 0, sqrt of a "
            "negative, 0/0, a division by ~0)"
        )
        cure = f"guard the input of the op in {where}: clamp it, or add an epsilon (log(x + eps), x / (n + eps))"
    else:
        cause = (
            f"the gradient {where} passed back went {'NaN' if origin.kind == 'nan' else 'Inf'} first, at step "
            f"{origin.step} (the gradient reaching it was max {size}): its backward amplifies (sqrt, pow or "
            "norm at 0, a custom autograd op)"
        )
        cure = (
            f"add an epsilon inside sqrt / norm in {where} (torch.sqrt(x + eps)), check its custom backward; "
            "gradient clipping bounds what the layers before receive"
        )
    return {
        "kind": "nonfinite",
        "layers": [origin.module] if origin.module else [],
        "first_step": origin.step,
        "origin": origin.words(),
        "cause": cause,
        "cure": cure,
    }


def collapsed_moments(capture: CaptureData | None, layers: list[str]) -> dict[str, Any] | None:
    """Advice for layers whose optimizer second moment (Adam's exp_avg_sq) fell below `COLLAPSE`
    times its first captured value within a capture (None: none did)."""
    if capture is None or len(capture) < 2:
        return None
    v = capture.opt_m2
    hit: list[str] = []
    first_step = None
    for i in range(min(v.shape[1], len(layers))):
        col = v[:, i]
        ok = np.isfinite(col) & (col >= 0)
        if ok.sum() < 2:
            continue
        start = float(col[ok][0])
        low = np.flatnonzero(ok & (col < COLLAPSE * start))
        if start > 0 and low.size:
            hit.append(layers[i])
            step = int(capture.steps[low[0]])
            first_step = step if first_step is None else min(first_step, step)
    if not hit:
        return None
    return {
        "kind": "second_moment",
        "layers": hit,
        "first_step": first_step,
        "cause": (
            f"the optimizer's second moment (‖v‖) of {', '.join(hit[:6])} collapsed by over {1 / COLLAPSE:.0f}x "
            "within the capture: Adam steps by m / (sqrt(v) + eps), so with v near 0 eps alone sets the step "
            "size and a small eps makes it huge"
        ),
        "cure": (
            "raise Adam's eps (1e-8 -> 1e-6 .. 1e-4) or lower the learning rate; check for gradients that went "
            "to zero before it (dead units, a frozen branch)"
        ),
    }


def origin_suggestions(
    origins: list[NonFiniteOrigin], capture: CaptureData | None, layers: list[str]
) -> list[dict[str, Any]]:
    """The advice from where the run broke: its first origin, and a collapsed second moment."""
    out = [origin_advice(origins[0])] if origins else []
    collapse = collapsed_moments(capture, layers)
    if collapse is not None:
        out.append(collapse)
    return out


__all__ = ["collapsed_moments", "origin_advice", "origin_suggestions"]
