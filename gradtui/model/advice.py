"""What to change: for each kind of alarm a run raised, a cause and a cure drawn from the run
itself, in the words of the guided tour. `gradtui report` prints them (`suggestions` in
`--json`) and the viewer's layer detail shows the one for the layer's flag.

Pure NumPy over what a record holds: the alarms, the global norm of every step, the
layers (their kinds, fans and first weight norms) and the activations the model uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtui.model.capture_summary import CaptureData
from gradtui.model.commands import AUTO_CLIP_Z
from gradtui.model.events import FLAG_PRIORITY, Alert, NonFiniteOrigin, RunStart
from gradtui.model.guard import ZClipStats, zclip_step
from gradtui.model.origin_advice import origin_suggestions
from gradtui.model.store import RunStore

SATURATING = ("Sigmoid", "Tanh", "Softsign", "Hardtanh", "LogSigmoid")
"""Activations whose derivative is small away from 0 (Sigmoid's is at most 0.25)."""
CLIP_PERCENTILE = 95.0
"""A clip threshold suggested from the healthy norms: their 95th percentile touches about 1 healthy step in 20."""


def _sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}") if x and math.isfinite(x) else x


def _names(layers: Sequence[str | None]) -> str:
    shown = [name or "(root)" for name in layers if name is not None]
    return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")


@dataclass
class RunFacts:
    """What the advice reads of a run (filled by the report's `Summary` or the viewer's store)."""

    start: RunStart | None
    alerts: list[Alert]
    steps: np.ndarray
    global_norm: np.ndarray
    weight_norm: np.ndarray | None = None
    """Per-layer weight norms at the first detail step (None: none recorded)."""
    bad_batches: list[dict[str, Any]] = field(default_factory=list)
    origins: list[NonFiniteOrigin] = field(default_factory=list)
    """Where the run first produced a NaN or Inf (deep capture, `gradtui.model.origin_advice`)."""
    capture: CaptureData | None = None
    """Its deep captures' statistics (None: not at hand, as in a viewer's store)."""


def store_facts(store: RunStore) -> RunFacts:
    """The facts of a run as a viewer's store holds them (its ring: the newest steps)."""
    return RunFacts(
        start=store.run,
        alerts=store.alerts,
        steps=store.series_steps("global_norm"),
        global_norm=store.series("global_norm"),
        weight_norm=store.first_weight_norm,
        bad_batches=[{"step": b.step, "why": b.why, "batch": b.batch} for b in store.bad_batches],
        origins=list(store.origins),
    )


def clip_preview(norms: np.ndarray, threshold: float) -> int:
    """Steps whose global norm a norm clip at `threshold` would have scaled down."""
    finite = norms[np.isfinite(norms)]
    return int((finite > threshold).sum()) + int((~np.isfinite(norms)).sum())


def zclip_preview(norms: np.ndarray, z: float = AUTO_CLIP_Z) -> int:
    """Steps adaptive clipping (ZClip's rule, `zclip_step`) would have clipped (a norm that is
    not finite counts: clipping it is all it can do)."""
    stats, count = ZClipStats(), 0
    for g in (float(x) for x in norms):
        coef, stats = zclip_step(stats, g, z)
        count += not math.isfinite(g) or coef < 1.0
    return count


def suggestions(facts: RunFacts) -> list[dict[str, Any]]:
    """One suggestion per alarm kind the run raised (warning or critical), most urgent first:
    `{"kind", "layers", "first_step", "cause", "cure"}`, and for a blow-up `"clip"`
    (`{"threshold", "would_clip", "of_steps", "healthy_clipped"}`) and `"lr_factor"`."""
    raised = [a for a in facts.alerts if a.active and a.level != "info"]
    out = []
    for kind in FLAG_PRIORITY:
        mine = [a for a in raised if a.kind == kind]
        if not mine:
            continue
        layers = list(dict.fromkeys(a.layer for a in mine))
        first = min(a.step for a in mine)
        entry: dict[str, Any] = {"kind": kind, "layers": [x for x in layers if x is not None], "first_step": first}
        entry.update(_ADVISERS[kind](facts, mine, first))
        out.append(entry)
    names = [layer.name or "" for layer in facts.start.layers] if facts.start else []
    return out + origin_suggestions(facts.origins, facts.capture, names)


def _blowup_start(facts: RunFacts) -> int | None:
    steps = [a.step for a in facts.alerts if a.active and a.level != "info" and a.kind in ("exploding", "nonfinite")]
    return min(steps) if steps else None


def _exploding(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    norms, steps = facts.global_norm, facts.steps
    start = _blowup_start(facts)
    bad = ~np.isfinite(norms)
    # What a clip would have done is judged up to the first NaN: after it every step is lost anyway.
    upto = int(steps[bad][0]) if bad.any() else None
    before = norms[steps < upto] if upto is not None else norms
    healthy = norms[(steps < (start if start is not None else first)) & ~bad]
    out: dict[str, Any] = {}
    cures = []
    if healthy.size >= 5:
        threshold = _sig(float(np.percentile(healthy, CLIP_PERCENTILE)))
        would = clip_preview(before, threshold)
        out["clip"] = {
            "threshold": threshold,
            "would_clip": would,
            "of_steps": int(before.size),
            "healthy_clipped": int((healthy > threshold).sum()),
        }
        span = f" before the first NaN (step {upto})" if upto is not None else ""
        cures.append(
            f"clip the gradient norm at {threshold:g} (watch(clip=('norm', {threshold:g})), or c in the viewer): "
            f"the {CLIP_PERCENTILE:g}th percentile of the {healthy.size} healthy norms before step {start}; it "
            f"would have clipped {would} of the {before.size} steps{span}, "
            f"{out['clip']['healthy_clipped']} of them healthy"
        )
    growth = _growth(norms, steps, start if start is not None else first)
    if growth is not None:
        factor = _sig(min(0.5, max(0.01, 2.0 / (1.0 + growth))), 1)
        cause = (
            f"the global norm grew x{growth:.3g} per step from step {start}: each step overshot, the mark of a "
            "learning rate past the loss's stability limit"
        )
        how = (
            f"(2 / (1 + {growth:.3g}): a step that overshoots by a factor r shrinks under 1 once the rate is cut "
            "by 2 / (1 + r))"
        )
    else:
        factor = 0.5
        cause = "the gradient norm jumped within a step or two: the learning rate is far past the stability limit"
        how = "(the blow-up was too quick to measure its growth: halve it, and again if it recurs)"
    out["lr_factor"] = factor
    cures.append(f"cut the learning rate to x{factor:g} of its value {how}")
    cures.append("or watch with guard=True: it rolls the blow-up back to a healthy snapshot and cuts the rate")
    out["cause"] = cause
    out["cure"] = "; ".join(cures)
    return out


def _growth(norms: np.ndarray, steps: np.ndarray, start: int) -> float | None:
    """The per-step growth of the global norm over the blow-up: from its start to the peak (or the last finite)."""
    after = (steps >= start) & np.isfinite(norms) & (norms > 0)
    if after.sum() < 2:
        return None
    s, g = steps[after], norms[after]
    peak = int(np.argmax(g))
    base = max(0, peak - 8)  # the steps just before the peak: the compounding itself
    if peak == base or s[peak] == s[base]:
        return None
    rate = float(np.exp(np.log(g[peak] / g[base]) / (s[peak] - s[base])))
    return rate if rate > 1.05 else None


def _nonfinite(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    layers = _names([a.layer for a in alerts if a.step == first])
    explode = any(a.kind == "exploding" and a.step <= first for a in facts.alerts if a.active)
    cause = f"NaN/Inf first appeared at step {first}" + (f" in {layers}" if layers else "")
    cause += (
        ", after the norm exploded"
        if explode
        else " with no blow-up before it: a bad batch, a log or division of 0, or an overflow"
    )
    cure = (
        "watch with guard=True: a non-finite step is skipped and the run rolled back to a healthy snapshot with a "
        "lower learning rate; "
        + (
            "see the exploding advice for the clip threshold and the rate"
            if explode
            else "look at the batch of that step (mon.step(loss, batch=ids) keeps it)"
        )
    )
    return {"cause": cause, "cure": cure}


def _vanishing(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    start = facts.start
    acts = start.activations if start is not None else ()
    saturating = [a for a in acts if a in SATURATING]
    names = [a.layer for a in alerts]
    kinds = {}
    init_notes = []
    if start is not None:
        index = {layer.name: i for i, layer in enumerate(start.layers)}
        for name in names:
            if name in index:
                i = index[name]
                kinds[name] = start.layers[i].kind
                note = _init_note(facts, i)
                if note:
                    init_notes.append(f"{name}: {note}")
    cause = f"gradients fade on the way back to {_names(names)}"
    if saturating:
        used = ", ".join(saturating)
        cause += f"; the net uses {used}, whose derivative is small (Sigmoid's at most 0.25), once per layer"
    if init_notes:
        cause += "; " + "; ".join(init_notes[:3])
    cures = []
    if saturating:
        cures.append("ReLU with He init (tour: sigmoid-relu-he)")
        cures.append("or keep the activation with Glorot init (sigmoid-glorot)")
    cures.append("residual connections with BatchNorm for a deep stack (deep-sigmoid-cure)")
    if any(k in ("RNN", "RNNCell") for k in kinds.values()):
        cures.append("a gated cell (GRU/LSTM) for long sequences (rnn-gru)")
    return {"cause": cause, "cure": "; ".join(cures)}


def _init_note(facts: RunFacts, i: int) -> str:
    start = facts.start
    if start is None or facts.weight_norm is None or i >= len(start.fan_in) or i >= len(facts.weight_norm):
        return ""
    fan_in, fan_out, numel = start.fan_in[i], start.fan_out[i], start.layers[i].numel
    w = float(facts.weight_norm[i])
    if not (fan_in and fan_out and numel and math.isfinite(w)):
        return ""
    rms = w / math.sqrt(numel)
    glorot = math.sqrt(2.0 / (fan_in + fan_out))
    he = math.sqrt(2.0 / fan_in)
    if rms < 0.7 * glorot:
        return f"weights start at rms {rms:.2g}, below Glorot's {glorot:.2g} and He's {he:.2g} for its fans"
    return ""


def _dead(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    return {
        "cause": f"units of {_names([a.layer for a in alerts])} output 0 for every input (dead ReLUs): "
        "no gradient reaches their weights",
        "cure": "a lower learning rate, He init, or LeakyReLU/GELU, which keep a gradient for negative inputs",
    }


def _loss_spike(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    spikes = sorted({a.step for a in alerts})
    batches = [b for b in facts.bad_batches if b.get("why") == "loss_spike"]
    cause = f"the loss jumped at step{'s' if len(spikes) > 1 else ''} {', '.join(map(str, spikes[:8]))}"
    if batches:
        cause += "; the batches: " + "; ".join(f"step {b['step']}: {b['batch']}" for b in batches[:5])
    cure = (
        f"adaptive clipping (m in the viewer to auto, or SetClip('auto', {AUTO_CLIP_Z:g})) bounds the step a bad "
        "batch takes; "
        + (
            "pull the batches listed out of the data set"
            if batches
            else "pass mon.step(loss, batch=ids) to learn which batches they were"
        )
    )
    return {"cause": cause, "cure": cure}


_ADVISERS = {
    "exploding": _exploding,
    "nonfinite": _nonfinite,
    "vanishing": _vanishing,
    "dead": _dead,
    "loss_spike": _loss_spike,
}
