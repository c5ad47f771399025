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

from gradtui.model.architecture import norms_in, run_family
from gradtui.model.capture_summary import CaptureData
from gradtui.model.commands import AUTO_CLIP_Z, CLIP_RANGE, Command, CommandRefused, ControlState, SetClip, SetLR, apply
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
    clip: tuple[str, float] | None = None
    """The clipping in force at the run's last sampled step (None: as the run started)."""
    origins: list[NonFiniteOrigin] = field(default_factory=list)
    """Where the run first produced a NaN or Inf (deep capture, `gradtui.model.origin_advice`)."""
    capture: CaptureData | None = None
    """Its deep captures' statistics (None: not at hand, as in a viewer's store)."""

    def clipping(self) -> tuple[str, float]:
        """(mode, threshold) in force: nothing already on is suggested."""
        if self.clip is not None:
            return self.clip
        return (self.start.clip_mode, self.start.clip_threshold) if self.start is not None else ("off", 1.0)

    @property
    def guarded(self) -> bool:
        return self.start is not None and self.start.guard


def store_facts(store: RunStore) -> RunFacts:
    """The facts of a run as a viewer's store holds them (its ring: the newest steps)."""
    return RunFacts(
        start=store.run,
        alerts=store.alerts,
        steps=store.series_steps("global_norm"),
        global_norm=store.series("global_norm"),
        weight_norm=store.first_weight_norm,
        bad_batches=[{"step": b.step, "why": b.why, "batch": b.batch} for b in store.bad_batches],
        clip=(store.last.clip_mode, store.last.clip_threshold) if store.last is not None else None,
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


def accepted(cmd: Command, start: RunStart | None) -> bool:
    """Whether the run would take `cmd` (the rule the probe applies: `commands.apply`)."""
    lrs = start.lrs if start is not None and start.lrs else (1.0,)
    try:
        apply(ControlState(lrs=lrs), cmd)
    except CommandRefused:
        return False
    return True


def suggested_commands(entry: dict[str, Any]) -> list[Command]:
    """The commands a suggestion's values stand for (`clip`, `auto_clip`, `lr_factor`)."""
    out: list[Command] = []
    if "clip" in entry:
        out.append(SetClip("norm", entry["clip"]["threshold"]))
    if entry.get("auto_clip"):
        out.append(SetClip("auto", AUTO_CLIP_Z))
    if "lr_factor" in entry:
        out.append(SetLR(factor=entry["lr_factor"]))
    return out


def suggestions(facts: RunFacts) -> list[dict[str, Any]]:
    """One suggestion per alarm kind the run raised (warning or critical), most urgent first:
    `{"kind", "layers", "first_step", "cause", "cure"}`, and for a blow-up `"clip"`
    (`{"threshold", "would_clip", "of_steps", "healthy_clipped"}`), `"auto_clip"` and `"lr_factor"`
    where they apply: every value is one the run would take (`accepted`), derived from its healthy
    part, and nothing already in force (the guard, the clipping) is suggested."""
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
    return _with_origin(out, origin_suggestions(facts.origins, facts.capture, names))


def _with_origin(out: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The advice with what the origin says: where the run broke is the cause of its non-finite
    alarm, so its entry takes the origin's cause and cure (one entry a kind)."""
    for extra in found:
        same = next((e for e in out if e["kind"] == extra["kind"]), None)
        if same is None:
            out.append(extra)
        else:
            same.update({k: v for k, v in extra.items() if v or k not in same})  # an empty list names no layer
    return out


def _blowup_start(facts: RunFacts) -> int | None:
    steps = [a.step for a in facts.alerts if a.active and a.level != "info" and a.kind in ("exploding", "nonfinite")]
    return min(steps) if steps else None


def _exploding(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    norms, steps = facts.global_norm, facts.steps
    start = _blowup_start(facts)
    begin = start if start is not None else first
    bad = ~np.isfinite(norms)
    # What a clip would have done is judged up to the first non-finite norm: after it every step is lost anyway.
    upto = int(steps[bad][0]) if bad.any() else None
    before = norms[steps < upto] if upto is not None else norms
    earlier = norms[steps < begin]
    # A norm of 0 (a loss weighted 0, frozen layers) is no measure of a healthy step's size.
    healthy = earlier[np.isfinite(earlier) & (earlier > 0)]
    out: dict[str, Any] = {}
    cures = []
    mode, in_force = facts.clipping()
    threshold = _sig(float(np.percentile(healthy, CLIP_PERCENTILE))) if healthy.size >= 5 else math.nan
    if math.isfinite(threshold):
        threshold = min(max(threshold, CLIP_RANGE[0]), CLIP_RANGE[1])
    lower = mode == "norm" and threshold < in_force
    if (math.isfinite(threshold) and mode in ("off", "value")) or lower:
        would = clip_preview(before, threshold)
        out["clip"] = {
            "threshold": threshold,
            "would_clip": would,
            "of_steps": int(before.size),
            "healthy_clipped": int((healthy > threshold).sum()),
        }
        span = f" before the first non-finite norm (step {upto})" if upto is not None else ""
        how = f"lower the norm clip from {in_force:g} to" if lower else "clip the gradient norm at"
        cures.append(
            f"{how} {threshold:g} (watch(clip=('norm', {threshold:g})), or c in the viewer): "
            f"the {CLIP_PERCENTILE:g}th percentile of the {healthy.size} healthy norms before step {begin}; it "
            f"would have clipped {would} of the {before.size} steps{span}, "
            f"{out['clip']['healthy_clipped']} of them healthy"
        )
    elif not healthy.size >= 5:
        zeros = int((earlier == 0).sum())
        why = f" ({zeros} of the {earlier.size} norms before it were 0)" if zeros else ""
        cures.append(f"no healthy stretch before step {begin} to take a clip threshold from{why}")
        if mode != "auto":
            out["auto_clip"] = True
            cures.append(
                f"adaptive clipping (m in the viewer, or SetClip('auto', {AUTO_CLIP_Z:g})) sets its threshold "
                "from the run's own norms as they come"
            )
    growth = _growth(norms, steps, begin)
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
    if accepted(SetLR(factor=factor), facts.start):
        out["lr_factor"] = factor
        cures.append(f"cut the learning rate to x{factor:g} of its value {how}")
    if not facts.guarded:
        cures.append("or watch with guard=True: it rolls the blow-up back to a healthy snapshot and cuts the rate")
    out["cause"] = cause
    out["cure"] = "; ".join(cures) or "the clipping and the guard were on already: see the guard's actions"
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
    guard = (
        "the guard was on: its actions are on the record; "
        if facts.guarded
        else "watch with guard=True: a non-finite step is skipped and the run rolled back to a healthy snapshot "
        "with a lower learning rate; "
    )
    cure = (
        guard
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
    family = run_family(start) if start is not None else "mlp"
    kinds: dict[str, str] = {}
    init_notes = []
    if start is not None:
        index = {layer.name: i for i, layer in enumerate(start.layers)}
        for name in names:
            if name in index:
                i = index[name]
                kinds[name] = start.layers[i].kind
                note = _init_note(facts, i, family)
                if note:
                    init_notes.append(f"{name}: {note}")
    cause = f"gradients fade on the way back to {_names(names)}"
    if saturating:
        used = ", ".join(saturating)
        cause += f"; the net uses {used}, whose derivative is small (Sigmoid's at most 0.25), once per layer"
    if init_notes:
        cause += "; " + "; ".join(init_notes[:3])
    cures = _transformer_cures(facts) if family == "transformer" else _stack_cures(facts, saturating, kinds)
    return {"cause": cause, "cure": "; ".join(cures)}


def _transformer_cures(facts: RunFacts) -> list[str]:
    """A transformer's (LayerNorm and residual blocks are its own): the rate, its warm-up, the init
    scale and Adam's eps, and clipping where none is on."""
    cures = [
        "a learning-rate warm-up (a few hundred steps, linear) and a lower peak rate: early updates that are too "
        "large leave the attention and the LayerNorm gains where gradients fade",
        "the init scale: GPT-2 draws weights at std 0.02 and its residual projections at 0.02 / sqrt(2 x layers)",
        "Adam's eps below the gradients' size (torch's default 1e-8; with gradients this small a larger eps "
        "damps every update)",
    ]
    if facts.clipping()[0] == "off":
        cures.append(
            f"clipping the global norm (adaptive: SetClip('auto', {AUTO_CLIP_Z:g}), m in the viewer), so one "
            "large early step does not undo the warm-up"
        )
    return cures


def _stack_cures(facts: RunFacts, saturating: list[str], kinds: dict[str, str]) -> list[str]:
    """A plain deep stack's (MLP, convnet, recurrent net): activation, init, skips and normalisation."""
    cures = []
    if saturating:
        cures.append("ReLU with He init (tour: sigmoid-relu-he)")
        cures.append("or keep the activation with Glorot init (sigmoid-glorot)")
    norms = norms_in(facts.start) if facts.start is not None else []
    if norms:
        cures.append(f"residual connections for a deep stack (it has {', '.join(norms)} already)")
    else:
        cures.append("residual connections with BatchNorm for a deep stack (deep-sigmoid-cure)")
    if any(k in ("RNN", "RNNCell") for k in kinds.values()):
        cures.append("a gated cell (GRU/LSTM) for long sequences (rnn-gru)")
    return cures


GPT_INIT_STD = 0.02
"""The weight std GPT-2 (and nanoGPT) start a transformer's weights at."""


def _init_note(facts: RunFacts, i: int, family: str = "mlp") -> str:
    start = facts.start
    if start is None or facts.weight_norm is None or i >= len(start.fan_in) or i >= len(facts.weight_norm):
        return ""
    fan_in, fan_out, numel = start.fan_in[i], start.fan_out[i], start.layers[i].numel
    w = float(facts.weight_norm[i])
    if not (fan_in and fan_out and numel and math.isfinite(w)):
        return ""
    rms = w / math.sqrt(numel)
    if family == "transformer":
        # A transformer's yardstick is its own init, not Glorot's or He's (made for plain stacks).
        if rms < 0.25 * GPT_INIT_STD:
            return f"weights start at rms {rms:.2g}, a quarter or less of the {GPT_INIT_STD:g} GPT-2 starts at"
        return ""
    glorot = math.sqrt(2.0 / (fan_in + fan_out))
    he = math.sqrt(2.0 / fan_in)
    if rms < 0.7 * glorot:
        return f"weights start at rms {rms:.2g}, below Glorot's {glorot:.2g} and He's {he:.2g} for its fans"
    return ""


def _dead(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    return {
        "cause": f"units of {_names([a.layer for a in alerts])} output 0 for every input (dead ReLUs): "
        "no gradient reaches their weights",
        "cure": "a lower learning rate, He init, or "
        + (
            "/".join(x for x in ("LeakyReLU", "GELU") if x not in (facts.start.activations if facts.start else ()))
            or "a leaky activation"
        )
        + ", which keep a gradient for negative inputs",
    }


def _loss_spike(facts: RunFacts, alerts: list[Alert], first: int) -> dict[str, Any]:
    spikes = sorted({a.step for a in alerts})
    batches = [b for b in facts.bad_batches if b.get("why") == "loss_spike"]
    cause = f"the loss jumped at step{'s' if len(spikes) > 1 else ''} {', '.join(map(str, spikes[:8]))}"
    if batches:
        cause += "; the batches: " + "; ".join(f"step {b['step']}: {b['batch']}" for b in batches[:5])
    auto = facts.clipping()[0] == "auto"
    cure = (
        (
            "adaptive clipping was on and bounded the step each took; "
            if auto
            else f"adaptive clipping (m in the viewer to auto, or SetClip('auto', {AUTO_CLIP_Z:g})) bounds the step "
            "a bad batch takes; "
        )
        + (
            "pull the batches listed out of the data set"
            if batches
            else "pass mon.step(loss, batch=ids) to learn which batches they were"
        )
    )
    return {"cause": cause, "cure": cure, **({} if auto else {"auto_clip": True})}


_ADVISERS = {
    "exploding": _exploding,
    "nonfinite": _nonfinite,
    "vanishing": _vanishing,
    "dead": _dead,
    "loss_spike": _loss_spike,
}
