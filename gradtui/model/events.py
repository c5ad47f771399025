"""Typed events that flow from the probe to viewers and record files.

Events are frozen dataclasses holding plain Python values and NumPy arrays, never
tensors, so that `core` and `ui` can use them without torch. Per-layer arrays are
indexed in the order of `RunStart.layers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

ClipMode = Literal["off", "norm", "value", "auto"]
CLIP_MODES: tuple[str, ...] = ("off", "norm", "value", "auto")
"""auto: by global norm, at mean + threshold * std of the recent norms (threshold is a z-score)."""

AlertKind = Literal["vanishing", "exploding", "nonfinite", "dead", "loss_spike"]
ALERT_KINDS: tuple[str, ...] = ("vanishing", "exploding", "nonfinite", "dead", "loss_spike")

AlertLevel = Literal["info", "warning", "critical"]
ALERT_LEVELS: tuple[str, ...] = ("info", "warning", "critical")
"""Severities, least first. info: worth a look, not a flag (a one-step spike well inside the
run's own history); warning: a flag; critical: a blow-up under way (compounding or far above
the run's scale) or non-finite values: what a guard may act on."""

OVERFLOW_NORM = float(np.sqrt(np.finfo(np.float32).max))
"""About 1.8e19: an L2 norm summed in float32 that came out infinite over finite values had a sum of
squares past float32's max (3.4e38), so the norm itself was at least this. Records made before the
probe summed in float64 hold such norms (`StepStats.global_norm` inf with no value counted non-finite)."""

FLAG_PRIORITY: tuple[str, ...] = ("nonfinite", "exploding", "vanishing", "dead", "loss_spike")
"""Alert kinds, most urgent first: a layer carrying several flags shows (and is judged by) the first."""
BLOWUP_KINDS = frozenset({"exploding", "nonfinite", "loss_spike"})
"""Alert kinds of a blow-up under way: what a guard's rollback cures and a snapshot must be free of.
A vanishing or dead layer may stay flagged for a whole run and a rollback would not cure it."""
VERDICTS: tuple[str, ...] = ("healthy", "vanishing", "exploding", "nonfinite", "dead")
"""Per-layer verdicts, as in the report contract."""

GRAD_HIST_LO = -40
"""Lowest exponent of `StepStats.grad_hist`: values below 2**-39 (about 1.8e-12) share its bucket."""
GRAD_HIST_HI = 24
"""One past the highest exponent: values of 2**23 (about 8.4e6) and above share the top bucket."""
GRAD_HIST_BUCKETS = GRAD_HIST_HI - GRAD_HIST_LO + 2
"""Columns of `StepStats.grad_hist`: exactly 0, one per exponent in [LO, HI), then NaN/Inf."""


def grad_hist_exponent(column: int) -> int | None:
    """The exponent e of a `grad_hist` column (its values have floor(log2|g|) == e, clipped to
    [GRAD_HIST_LO, GRAD_HIST_HI - 1]); None for the zero and the non-finite columns."""
    if 1 <= column <= GRAD_HIST_BUCKETS - 2:
        return GRAD_HIST_LO + column - 1
    return None


def level_rank(level: str) -> int:
    """Index of a level in `ALERT_LEVELS` (an unknown one, from a newer writer, ranks as warning)."""
    return ALERT_LEVELS.index(level) if level in ALERT_LEVELS else 1


def primary_flag(kinds: Iterable[str]) -> str | None:
    """The most urgent of some flag kinds (see `FLAG_PRIORITY`), or None when there are none."""
    have = list(kinds)
    for kind in FLAG_PRIORITY:
        if kind in have:
            return kind
    return have[0] if have else None


def verdict_of(kinds: Iterable[str]) -> str:
    """A layer's verdict from the flags it carries: its most urgent layer flag, else healthy."""
    flag = primary_flag(k for k in kinds if k in VERDICTS)
    return flag if flag is not None else "healthy"


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """A layer: a module that owns parameters directly."""

    name: str
    """Qualified name from `model.named_modules()` ("" for a root that owns parameters)."""
    kind: str
    """The module's class name, e.g. "Linear"."""
    numel: int
    """Number of parameter values the layer owns (tied parameters count in their first owner)."""


@dataclass(frozen=True, slots=True)
class RunStart:
    """First event of a run: what is being watched."""

    run: str
    pid: int
    started: float
    """Unix time at which `watch()` was called."""
    layers: tuple[LayerInfo, ...]
    lrs: tuple[float, ...]
    """Learning rate of each param group of every watched optimizer, in order (empty without one)."""
    clip_mode: str
    clip_threshold: float
    every: int
    """Per-layer statistics are sampled every `every` steps."""
    detail_every: int
    """Mean/max |g|, zero fraction, weight norm and update ratio every `detail_every` steps."""
    device: str
    world_size: int = 1
    script: str = ""
    sharded: bool = False
    """Some gradients are sharded across ranks (FSDP); statistics are reduced across them."""
    lanes: tuple[str, ...] = ()
    """Names of extra gradient lanes (e.g. dL/dh_t per time step of an RNN), see `Monitor.lane`."""
    lr_groups: tuple[str, ...] = ()
    """A name per entry of `lrs`: "0", "1", ... for one optimizer, "opt1.0" for group 0 of the
    second when several are watched (empty in records made before several optimizers)."""
    activations: tuple[str, ...] = ()
    """Class names of the parameter-free activation modules in the model (Sigmoid, ReLU, ...),
    for the report's advice (empty in older records, or a functional-only model)."""
    fan_in: tuple[int, ...] = ()
    """Per layer: inputs per output of its weight (in_features, in_channels x kernel); 0 unknown."""
    fan_out: tuple[int, ...] = ()
    """Per layer: outputs of its weight (out_features, out_channels x kernel); 0 unknown."""
    guard: bool = False
    """The guard is on (`watch(guard=...)`): it may skip steps and roll the run back."""
    budget: float = 0.0
    """The probe's overhead budget, a share of the step time: `every` is then only where sampling
    starts, and the stride follows what the probe costs (0: a fixed `every`, as in older records)."""
    modules: tuple[str, ...] = ()
    """The class name of every kind of module in the model, each once, in `model.modules()` order
    (empty in older records): what the advice reads of the architecture (`gradtui.model.architecture`)."""


@dataclass(frozen=True, slots=True, eq=False)
class StepStats:
    """Statistics of one sampled step, taken before clipping and before `optimizer.step()`."""

    step: int
    time: float
    loss: float
    """NaN when no loss was given or it was not finite."""
    lrs: tuple[float, ...]
    """The learning rate of each group that this step uses: the loop's, or a viewer's override."""
    grad_norm: np.ndarray
    """Per-layer gradient L2 norm (float64); NaN where the layer had no gradient."""
    has_grad: np.ndarray
    """Per-layer bool: at least one parameter of the layer had a gradient."""
    nonfinite: np.ndarray
    """Per-layer int64 count of NaN/Inf gradient values."""
    global_norm: float
    """L2 norm of all gradients before clipping."""
    clipped_norm: float
    """L2 norm of all gradients after clipping (== global_norm when not clipped)."""
    clip_factor: float
    """clipped_norm / global_norm; 1.0 when the step was not clipped."""
    clip_mode: str
    clip_threshold: float
    steps_per_sec: float
    paused: bool = False
    mean_abs: np.ndarray | None = None
    """Per-layer mean |g| (detail steps only, else None)."""
    max_abs: np.ndarray | None = None
    """Per-layer max |g| (detail steps only)."""
    zero_frac: np.ndarray | None = None
    """Per-layer fraction of gradient values exactly 0 (detail steps only)."""
    weight_norm: np.ndarray | None = None
    """Per-layer weight L2 norm (detail steps only)."""
    loss_scale: float = float("nan")
    """Mixed precision: the GradScaler's scale at this step (NaN without a scaler)."""
    amp_skipped: bool = False
    """Mixed precision: the scaler found inf/NaN, so `optimizer.step()` is skipped."""
    nonfinite_ranks: tuple[int, ...] = ()
    """Distributed runs: the ranks whose gradients held NaN/Inf at this step."""
    lanes: np.ndarray | None = None
    """L2 norm of the gradient reaching each lane this step (NaN where none did)."""
    schedule_lrs: tuple[float, ...] = ()
    """The learning rate of each group as the loop (or its scheduler) set it, before any override
    (empty in records made before overrides: then equal to `lrs`)."""
    stepped_norm: float = float("nan")
    """L2 norm of the gradients `optimizer.step()` used: after gradtui's clipping and the loop's
    own (clip_grad_norm_ after `mon.step`). NaN when no optimizer step followed (a GradScaler skip)."""
    grad_hist: np.ndarray | None = None
    """Per-layer histogram of the gradient values (detail steps only): int32 [layers,
    GRAD_HIST_BUCKETS]. Column 0 counts values exactly 0; column 1 + e - GRAD_HIST_LO those with
    floor(log2|g|) == e, e clipped to [GRAD_HIST_LO, GRAD_HIST_HI - 1] (so the end columns also
    hold everything beyond); the last column NaN and Inf. A row of zeros: no gradient this step.
    Taken before clipping, like the other statistics (absent in records made before it)."""

    @property
    def clipped(self) -> bool:
        return self.clip_factor < 1.0


@dataclass(frozen=True, slots=True, eq=False)
class RunSteps:
    """The run-wide signals of steps whose per-layer statistics were not sampled, in step order:
    what the detectors and the guard see at every step whatever the sampling stride. A sampled
    step carries the same values in its `StepStats`; the two together give every step once."""

    step: int
    """The last step of `steps` (where this event sits in the run)."""
    steps: np.ndarray
    """int64, increasing."""
    loss: np.ndarray
    """float64 per step; NaN where no loss was given or it was not finite."""
    global_norm: np.ndarray | None
    """float64 per step: the L2 norm of all gradients before clipping (unscaled under a GradScaler);
    NaN where not finite. None where these steps measured only canary layers: on CPU, where one
    pass over every gradient costs more than the overhead budget allows, an unsampled step screens
    a few layers instead, and one that looks unusual is sampled whole (`gradtui.probe.runwide`)."""
    canary_layers: np.ndarray | None = None
    """int64, increasing: the layers these steps measured, where they measured canaries (else None)."""
    canary_norm: np.ndarray | None = None
    """float64 [steps, canary layers]: each canary layer's gradient L2 norm at each step."""


RunRow = tuple[int, float, "float | None", "tuple[np.ndarray, np.ndarray] | None"]
"""One step of a `RunSteps`: (step, loss, global norm or None, (canary layers, their norms) or None)."""


def run_rows(event: RunSteps) -> Iterator[RunRow]:
    """The steps of `event` one by one, as the detectors take them (`Detectors.update_run`)."""
    norms = event.global_norm.tolist() if event.global_norm is not None else None
    layers, canary = event.canary_layers, event.canary_norm
    for i, (step, loss) in enumerate(zip(event.steps.tolist(), event.loss.tolist(), strict=True)):
        yield (
            int(step),
            float(loss),
            float(norms[i]) if norms is not None else None,
            (layers, canary[i]) if layers is not None and canary is not None else None,
        )


@dataclass(frozen=True, slots=True, eq=False)
class UpdateStats:
    """Size of the optimizer update taken at `step`, relative to the weights before it."""

    step: int
    update_ratio: np.ndarray
    """Per-layer ||w_after - w_before|| / ||w_before|| (float64); NaN where undefined."""


@dataclass(frozen=True, slots=True, eq=False)
class CaptureStats:
    """A deep-capture step's extra per-layer statistics (`gradtui.probe.capture`): each watched
    layer's forward output, and the optimizer's state after the step. NaN where not measured (a
    layer that did not run this step; an optimizer that keeps no such state)."""

    step: int
    act_rms: np.ndarray
    """float64 per layer: root mean square of the layer's forward output this step."""
    act_max: np.ndarray
    """float64 per layer: max |a| of its forward output (over the finite values)."""
    act_nonfinite: np.ndarray
    """int64 per layer: NaN/Inf values in its forward output."""
    act_kurtosis: np.ndarray
    """float64 per layer: E[(a - mean)^4] / var^2 of its forward output (3 for a Gaussian)."""
    opt_m1: np.ndarray
    """float64 per layer: L2 norm of the optimizer's first moment (Adam's exp_avg, SGD's momentum buffer)."""
    opt_m2: np.ndarray
    """float64 per layer: L2 norm of its second moment (Adam's exp_avg_sq, RMSprop's square_avg,
    Adagrad's sum)."""


@dataclass(frozen=True, slots=True)
class Capture:
    """A deep capture (`gradtui.probe.capture`): armed at `start` for `steps` steps, and sent again
    with `ended` once it is over (`step` is then its last step)."""

    step: int
    start: int
    steps: int
    reason: str
    """Why it was armed, in words ("exploding gradients (critical) on layer 'h.3'", "asked from the
    viewer", "mon.capture()", "non-finite loss")."""
    ended: bool = False


@dataclass(frozen=True, slots=True)
class NonFiniteOrigin:
    """The first module, in execution order, that produced a NaN or Inf at `step`: where a run broke."""

    step: int
    module: str
    """Its qualified name in the model ("transformer.h.3.attn"); "" for the loss itself."""
    layer: int | None
    """Its index in `RunStart.layers` when it is a watched layer, else None."""
    direction: str
    """"forward" (its output) or "backward" (the gradient it passed back)."""
    kind: str
    """"nan" or "inf"."""
    input_max: float
    """max |x| over its inputs (the incoming gradient, backward), over their finite values; NaN unknown."""
    op: str = ""
    """The operator that produced it, where named (e.g. "aten::exp"); "" unknown."""
    rank: int | None = None
    """Under torch.distributed: the rank it was found on."""
    how: str = "capture"
    """"capture" (checks armed before the step) or "rerun" (the step's forward re-run from its inputs
    before the optimizer moved)."""

    def words(self) -> str:
        """'first non-finite: h.3.attn forward output, step 152, Inf; its input max 3.4e+38'."""
        where = self.module or "the loss"
        what = "forward output" if self.direction == "forward" else "gradient passed back"
        text = f"first non-finite: {where} {what}, step {self.step}, {'NaN' if self.kind == 'nan' else 'Inf'}"
        if self.input_max == self.input_max:
            text += f"; its input max {self.input_max:.2g}"
        if self.op:
            text += f" (in {self.op})"
        if self.rank is not None:
            text += f" on rank {self.rank}"
        return text


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Acknowledgement of a command: applied at `step`, or refused with a reason."""

    command_id: str
    kind: str
    ok: bool
    step: int
    """Step at which the command took effect (or was refused)."""
    message: str
    """What changed ("lr 0.1 -> 0.05 (all groups)") or why it was refused."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A detector state change: a flag raised (`active`) or cleared on a layer or the run."""

    step: int
    layer: str | None
    """Layer name, or None for a run-wide alert (loss_spike, global exploding)."""
    kind: str
    active: bool
    value: float
    """The value that tripped (or released) the detector."""
    threshold: float
    message: str = ""
    level: str = "warning"
    """One of `ALERT_LEVELS`. A raised flag may be raised again at a higher level while it is up
    (an escalation); a clear carries the level the flag had. Records made before levels hold none:
    read as warning."""


@dataclass(frozen=True, slots=True)
class GuardAction:
    """Something the guard did to the run (see `gradtui.model.guard`)."""

    step: int
    """The step it acted at (a skip or rollback: that step's gradients were not applied)."""
    action: str
    """One of `GUARD_ACTIONS`: skip, rollback, clip, lr_cut."""
    detail: str
    """What it did, in words: "rolled back to step 140 (non-finite gradients), lr 0.03 -> 0.0075"."""
    to_step: int | None = None
    """A rollback: the step whose state it restored (the detectors' baselines go back there too)."""


@dataclass(frozen=True, slots=True)
class BadBatch:
    """The ledger of bad batches: the identifiers given to `mon.step(loss, batch=...)` at a step
    that spiked, was skipped or was rolled back, so they can be pulled out of the data set."""

    step: int
    why: str
    """"loss_spike", "skip" or "rollback"."""
    batch: int | str
    """The identifiers: an int or a str as given (an int within 64 bits, a str within 1000
    characters), anything else as text ("3,17,42", "0,1,…(+4094) [64x64 int64]"; see
    `gradtui.model.guard.batch_text`)."""


@dataclass(frozen=True, slots=True)
class Dropped:
    """Events a slow consumer missed since the last report (training never waits)."""

    count: int
    total: int


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line of text from the training process (stdout/stderr or the probe's own log)."""

    text: str
    stream: str = "log"


@dataclass(frozen=True, slots=True)
class RunEnd:
    """Last event of a run."""

    step: int
    status: str
    """"ok", "error" or "interrupted"."""
    error: str = ""
    """Exception summary and traceback when status is "error"."""


Event = (
    RunStart
    | StepStats
    | RunSteps
    | UpdateStats
    | CaptureStats
    | Capture
    | NonFiniteOrigin
    | CommandResult
    | Alert
    | GuardAction
    | BadBatch
    | Dropped
    | LogLine
    | RunEnd
)

EVENT_TYPES: dict[str, type] = {
    "run_start": RunStart,
    "step": StepStats,
    "run_steps": RunSteps,
    "update": UpdateStats,
    "capture_stats": CaptureStats,
    "capture": Capture,
    "origin": NonFiniteOrigin,
    "command_result": CommandResult,
    "alert": Alert,
    "guard": GuardAction,
    "bad_batch": BadBatch,
    "dropped": Dropped,
    "log": LogLine,
    "run_end": RunEnd,
}

__all__ = [
    "ALERT_KINDS",
    "ALERT_LEVELS",
    "BLOWUP_KINDS",
    "AlertLevel",
    "CLIP_MODES",
    "Alert",
    "AlertKind",
    "BadBatch",
    "Capture",
    "CaptureStats",
    "ClipMode",
    "CommandResult",
    "Dropped",
    "EVENT_TYPES",
    "FLAG_PRIORITY",
    "GuardAction",
    "GRAD_HIST_BUCKETS",
    "GRAD_HIST_HI",
    "GRAD_HIST_LO",
    "VERDICTS",
    "Event",
    "LayerInfo",
    "LogLine",
    "NonFiniteOrigin",
    "OVERFLOW_NORM",
    "RunEnd",
    "RunStart",
    "RunSteps",
    "StepStats",
    "UpdateStats",
    "grad_hist_exponent",
    "level_rank",
    "primary_flag",
    "run_rows",
    "verdict_of",
]
