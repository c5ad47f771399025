"""`gradtui.load(PATH)`: a record as NumPy arrays: the run-wide loss and global norm at every
step, the per-layer statistics (and the settings of each step) at sampled steps.

    run = gradtui.load("run.gtr")
    run.run_steps, run.loss, run.global_norm          # every step, sampled or not
    run.steps, run.grad_norm[:, run.layers.index("0")], run.lr[:, 0]   # sampled steps
    run.loss[run.sampled]                             # the loss at the sampled steps
    df = run.to_pandas()        # a row per step; needs pandas

The record is streamed (`iter_record`), and its alerts and interventions come from the
same `gradtui.model.report.Summary` that `gradtui report` uses, so they are exactly the
entries of `gradtui report --json` (`--recorded` for `load`'s default, the alerts the
probe raised; `recompute=True` re-runs the detectors as the report does by default).
The same goes for what is left out: damaged bytes (`damage`) and events that do not fit
the run (`skipped`); either also gives one `RuntimeWarning`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradtui.model.capture_summary import CaptureData, CaptureFold
from gradtui.model.events import RunSteps, StepStats
from gradtui.model.report import Summary
from gradtui.wire.record import Record, iter_record


@dataclass(eq=False)
class RunData:
    """A recorded run. Two kinds of rows: every step whose run-wide values were read (T of them,
    `run_steps`: `loss` and `global_norm`), and the sampled steps (S, a `StepStats` of the record
    each: `steps` and every other array). Where every step is sampled (`watch(every=1)`, or a
    record made before unsampled steps were recorded) the two are the same rows.

    T is the number of steps read, S of sampled steps, L of layers, G of param groups (0 without
    an optimizer).
    """

    path: str
    """The record file."""
    run: str | None
    """The run's name (None when the record has no RunStart)."""
    status: str
    """"ok", "error", "interrupted", or "unfinished" when the record has no RunEnd."""
    layers: list[str]
    """The L layer names, in the order of the columns of `grad_norm` and `nonfinite`."""
    lr_groups: list[str]
    """A name per param group ("0", "1", ...; "opt1.0" for group 0 of a second optimizer)."""
    run_steps: np.ndarray
    """[T] int64: every step whose loss and global norm were read, sampled or not."""
    sampled: np.ndarray
    """[T] bool: the step of each `run_steps` row was sampled (`run_steps[sampled]` is `steps`)."""
    loss: np.ndarray
    """[T] float64: the loss at every step of `run_steps` (NaN where unknown or not finite)."""
    global_norm: np.ndarray
    """[T] float64: the global gradient L2 norm before any clipping, at every step of `run_steps`
    that measured it (`norm_measured`; NaN elsewhere, and where it was not finite)."""
    norm_measured: np.ndarray
    """[T] bool: the step measured its global norm (an unsampled step on CPU may measure canary
    layers only, where the overhead budget cannot pay for a pass over every gradient)."""
    steps: np.ndarray
    """[S] int64: the step of each sampled row."""
    time: np.ndarray
    """[S] float64: Unix time of each sampled row."""
    grad_norm: np.ndarray
    """[S, L] float64: gradient L2 norm per layer (NaN where the layer had no gradient)."""
    lr: np.ndarray
    """[S, G] float64: the learning rate in force (the loop's, or a viewer's override)."""
    schedule_lr: np.ndarray
    """[S, G] float64: the learning rate the loop or its scheduler set, before any override."""
    clipped_norm: np.ndarray
    """[S] float64: global norm after gradtui's clipping."""
    stepped_norm: np.ndarray
    """[S] float64: what the optimizer stepped with, the loop's own clipping included (NaN
    where unknown: no optimizer step followed, or a record made before it was measured)."""
    nonfinite: np.ndarray
    """[S, L] int64: NaN/Inf gradient values per layer."""
    loss_scale: np.ndarray
    """[S] float64: a GradScaler's scale (NaN without one)."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    """As in `gradtui report --json`: `{"step", "layer", "kind", "level", "value", "threshold"}`."""
    interventions: list[dict[str, Any]] = field(default_factory=list)
    """As in `gradtui report --json`: `{"step", "kind", "message"}` and the value in force after."""
    bad_batches: list[dict[str, Any]] = field(default_factory=list)
    """As in `gradtui report --json`: `{"step", "why", "batch"}`, the `mon.step(loss, batch=...)` ids
    of each step that spiked, was skipped or rolled back (an int or a str as given, else text)."""
    truncated_bytes: int = 0
    """Bytes after the record's last whole frame (a file cut mid-write)."""
    damage: list[dict[str, Any]] = field(default_factory=list)
    """As in `gradtui report --json`: damaged regions skipped, `{"offset", "bytes", "frames",
    "after_step", "before_step", "reason"}`."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """As in `gradtui report --json`: events left out because they do not fit the run, one
    entry per reason (`{"event", "reason", "count", "first_step", "last_step", "example"}`)."""

    capture: CaptureData = field(default_factory=CaptureFold.empty)
    """The run's deep captures (`watch(capture=...)`, `mon.capture()`): `capture.steps` [C] and a
    [C, L] array per statistic (`act_rms`, `act_max`, `act_nonfinite`, `act_kurtosis`, `opt_m1`,
    `opt_m2`), `capture.windows` and `capture.origins` (where the run first produced a NaN or Inf,
    as in `gradtui report --json`'s `capture`)."""

    def __len__(self) -> int:
        """The number of sampled steps (S)."""
        return int(self.steps.shape[0])

    def __repr__(self) -> str:
        return (
            f"RunData(run={self.run!r}, status={self.status!r}, {self.run_steps.shape[0]} steps, "
            f"{len(self)} sampled steps, "
            f"{len(self.layers)} layers, {len(self.lr_groups)} param groups, path={self.path!r})"
        )

    def to_pandas(self) -> Any:
        """A `pandas.DataFrame`, one row per step read (`run_steps`, sampled or not).

        Columns: `step`, `loss`, `global_norm`, `sampled`, then the sampled statistics, NaN on
        the rows of unsampled steps: `stepped_norm`, the learning rate (`lr` with one param
        group, `lr_<group>` for each of several, none without an optimizer), and
        `grad_norm/<layer>` for each layer. `df[df.sampled]` has a row per sampled step.

        Raises:
            ImportError: pandas is not installed.
        """
        try:
            pd = importlib.import_module("pandas")
        except ImportError:
            raise ImportError("RunData.to_pandas() needs pandas: pip install pandas") from None
        rows = np.flatnonzero(self.sampled)

        def spread(values: np.ndarray) -> np.ndarray:
            out = np.full(self.run_steps.shape[0], np.nan)
            out[rows] = values
            return out

        columns: dict[str, np.ndarray] = {
            "step": self.run_steps,
            "loss": self.loss,
            "global_norm": self.global_norm,
            "sampled": self.sampled,
            "stepped_norm": spread(self.stepped_norm),
        }
        if len(self.lr_groups) == 1:
            columns["lr"] = spread(self.lr[:, 0])
        else:
            for g, name in enumerate(self.lr_groups):
                columns[f"lr_{name}"] = spread(self.lr[:, g])
        for i, name in enumerate(self.layers):
            columns[f"grad_norm/{name}"] = spread(self.grad_norm[:, i])
        return pd.DataFrame(columns)


class _Rows:
    """The per-step columns, grown row by row (`RunCheck` has made sure their shapes agree)."""

    def __init__(self) -> None:
        self.n_layers: int | None = None
        self.n_groups: int | None = None
        self.steps: list[int] = []
        self.scalars: dict[str, list[float]] = {k: [] for k in ("time", "clipped_norm", "stepped_norm", "loss_scale")}
        self.run_steps: list[np.ndarray] = []
        """Every step read, in chunks: one per `StepStats` or `RunSteps`."""
        self.sampled: list[np.ndarray] = []
        self.loss: list[np.ndarray] = []
        self.global_norm: list[np.ndarray] = []
        self.norm_measured: list[np.ndarray] = []
        self.grad_norm: list[np.ndarray] = []
        self.nonfinite: list[np.ndarray] = []
        self.lr: list[tuple[float, ...]] = []
        self.schedule_lr: list[tuple[float, ...]] = []

    def add(self, ev: StepStats) -> None:
        if self.n_layers is None:
            self.n_layers, self.n_groups = len(ev.grad_norm), len(ev.lrs)
        self.steps.append(ev.step)
        for key, values in self.scalars.items():
            values.append(float(getattr(ev, key)))
        self.grad_norm.append(np.asarray(ev.grad_norm, np.float64))
        self.nonfinite.append(np.asarray(ev.nonfinite, np.int64))
        self.lr.append(ev.lrs)
        self.schedule_lr.append(ev.schedule_lrs or ev.lrs)
        self._run_wide(np.array([ev.step], np.int64), np.array([ev.loss]), np.array([ev.global_norm]), True)

    def add_run(self, ev: RunSteps) -> None:
        """Unsampled steps (`RunCheck` has made sure their arrays agree)."""
        self._run_wide(ev.steps, ev.loss, ev.global_norm, False)

    def _run_wide(self, steps: np.ndarray, loss: np.ndarray, norm: np.ndarray | None, sampled: bool) -> None:
        self.run_steps.append(np.asarray(steps, np.int64))
        self.sampled.append(np.full(len(steps), sampled))
        self.loss.append(np.asarray(loss, np.float64))
        self.global_norm.append(np.asarray(norm, np.float64) if norm is not None else np.full(len(steps), np.nan))
        self.norm_measured.append(np.full(len(steps), norm is not None))

    def joined(self, name: str, dtype: type) -> np.ndarray:
        """One of the every-step columns as one array."""
        chunks: list[np.ndarray] = getattr(self, name)
        return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype)


def _table(rows: list[Any], width: int, dtype: type) -> np.ndarray:
    if not rows:
        return np.zeros((0, width), dtype)
    return np.array(rows, dtype=dtype).reshape(len(rows), width)


def load(path: str | os.PathLike[str], *, recompute: bool = False, detector_config: Any = None) -> RunData:
    """Read a record file as NumPy arrays: the loss and global norm at every step, the rest at
    sampled steps (see `RunData`).

    Args:
        path: the record file (one still being written reads to its last whole frame).
        recompute: re-run the detectors over the recorded statistics for `alerts` (as
            `gradtui report` does by default); False keeps the alerts the probe recorded.
        detector_config: a `DetectorConfig` for `recompute` (None: defaults).

    A damaged record loads past the damage, and events that do not fit the run (another
    number of layers than its RunStart declared, steps going backwards, ...) are left out;
    both are listed (`damage`, `skipped`) and warned of once. A record holding several
    runs loads as its last, as `gradtui report` summarises it.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
        gradtui.wire.codec.WireError: it is not a gradtui record.
    """
    where = os.fspath(path)
    state = Record()
    summary = Summary(detector_config=detector_config, recompute=recompute)
    rows = _Rows()
    segment = 0
    for event in iter_record(path, state):
        if not summary.add(event):
            continue
        if summary.check.segment != segment:  # another run starts: this one is the last so far
            segment, rows = summary.check.segment, _Rows()
        if isinstance(event, StepStats):
            rows.add(event)
        elif isinstance(event, RunSteps):
            rows.add_run(event)
    start = summary.start
    damage = [d.entry() for d in state.damage]
    skipped = summary.check.entries()
    if damage or skipped:
        words = [f"{len(damage)} damaged region(s), {sum(d['bytes'] for d in damage)} bytes"] if damage else []
        words += [f"{sum(s['count'] for s in skipped)} event(s) that do not fit the run"] if skipped else []
        warnings.warn(f"{where}: left out {' and '.join(words)} (see .damage, .skipped)", RuntimeWarning, stacklevel=2)

    n_layers = rows.n_layers if rows.n_layers is not None else (len(start.layers) if start else 0)
    if start is not None:
        layers = [layer.name for layer in start.layers]
    else:
        layers = [f"layer{i}" for i in range(n_layers)]
    n_groups = rows.n_groups if rows.n_groups is not None else (len(start.lrs) if start else 0)
    names = list(start.lr_groups) if start is not None else []
    lr_groups = names if len(names) == n_groups else [str(g) for g in range(n_groups)]

    def column(key: str) -> np.ndarray:
        return np.array(rows.scalars[key], dtype=np.float64)

    return RunData(
        path=where,
        run=start.run if start else None,
        status=summary.status,
        layers=layers,
        lr_groups=lr_groups,
        run_steps=rows.joined("run_steps", np.int64),
        sampled=rows.joined("sampled", np.bool_),
        loss=rows.joined("loss", np.float64),
        global_norm=rows.joined("global_norm", np.float64),
        norm_measured=rows.joined("norm_measured", np.bool_),
        steps=np.array(rows.steps, dtype=np.int64),
        time=column("time"),
        grad_norm=_table(rows.grad_norm, n_layers, np.float64),
        lr=_table(rows.lr, n_groups, np.float64),
        schedule_lr=_table(rows.schedule_lr, n_groups, np.float64),
        clipped_norm=column("clipped_norm"),
        stepped_norm=column("stepped_norm"),
        nonfinite=_table(rows.nonfinite, n_layers, np.int64),
        loss_scale=column("loss_scale"),
        alerts=summary.alert_entries(),
        interventions=[dict(entry) for entry in summary.interventions.entries],
        bad_batches=[dict(entry) for entry in summary.bad_batches],
        truncated_bytes=state.truncated_bytes,
        damage=damage,
        skipped=skipped,
        capture=summary.capture.data(),
    )


__all__ = ["RunData", "load"]
