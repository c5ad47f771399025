"""The guard at work: a step that is not finite is skipped, a blow-up is rolled back to the
last healthy snapshot with a lower learning rate, and the batches at fault are kept.

Where each decision is made, so that every rank makes the same one at the same step:
- finiteness is checked at every step on the training thread (the loss, and the gradients at
  sampled steps or with `every_step`: one host read; under torch.distributed, where every
  rank samples the same steps, one MIN all-reduce), so a skip, and the rollback that follows
  a non-finite step, happen on every rank at once;
- a critical exploding alarm is seen by rank 0's detectors on the publishing thread, which
  sends the probe a `Rollback` command: it reaches every rank through the command broadcast
  and is applied at the same step boundary, like a viewer's command.

Snapshots (`snapshot`) are taken at a step boundary while no blow-up alarm is up, every
`snapshot_every` steps. Alarms reach the guard a step or two late (the detectors run on
the publishing thread), so a new snapshot is only a *candidate* until the next one is due
with no alarm raised in between; a rollback goes to the confirmed one when there is one.
The learning-rate cut is an override of the probe's control (`SetLR(factor=...)` through
the command rule), which holds however the loop sets its learning rate.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from gradtui.model.commands import ControlState, Rollback, SetLR, respond
from gradtui.model.events import BLOWUP_KINDS, Alert, BadBatch, CommandResult, Event, GuardAction, LogLine, StepStats
from gradtui.model.guard import Guard, batch_text
from gradtui.probe import snapshot
from gradtui.probe.amp import any_nonfinite
from gradtui.probe.control import Control
from gradtui.probe.stats import GradStats, host_loss, loss_tensor

log = logging.getLogger("gradtui")

LEDGER_STEPS = 64
"""Steps whose batch identifiers are kept for the ledger (a spike is judged a step or two late)."""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


class Ledger:
    """The batch identifiers of the last steps (`mon.step(loss, batch=...)`), for `BadBatch` events."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._ids: deque[tuple[int, object]] = deque(maxlen=LEDGER_STEPS)
        self._emit = emit

    def keep(self, step: int, ids: object) -> None:
        if ids is None:
            return
        if isinstance(ids, torch.Tensor):
            ids = ids.detach()
        elif not isinstance(ids, (int, str, list, tuple, range)) and not hasattr(ids, "tolist"):
            raise TypeError(f"batch= takes an int, a str, or a sequence/tensor of indices, got {type(ids).__name__}")
        self._ids.append((step, ids))

    def note(self, step: int, why: str) -> None:
        """Put the batch of `step` (if it had identifiers) on the record as a bad one."""
        for at, ids in list(self._ids):
            if at == step:
                try:
                    text = batch_text(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
                except TypeError as exc:
                    text = f"(unreadable: {exc})"
                self._emit(BadBatch(step, why, text))
                return


class Keeper:
    """Runs a `Guard` on one monitor (every rank has one; only rank 0 sees alarms)."""

    def __init__(
        self,
        config: Guard,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        stats: GradStats,
        control: Control,
        emit: Callable[[Event], None],
        ledger: Ledger,
    ) -> None:
        if config.rollback and not optimizers:
            raise ValueError("guard rollback needs the optimizer: pass it to watch(model, optimizer)")
        self.config = config
        self.model = model
        self.optimizers = list(optimizers)
        self.stats = stats
        self.control = control
        self._emit = emit
        self._ledger = ledger
        self.discard = False
        """This step's gradients must not be applied (a skip or a rollback at this boundary)."""
        self.rollbacks = 0
        self.snapshots_taken = 0
        self.confirmed: snapshot.Snapshot | None = None
        self.candidate: snapshot.Snapshot | None = None
        self._slots: int | None = None
        """Snapshots memory allows (2, 1 or 0), decided at the first one."""
        self._lock = threading.Lock()
        self._up: dict[tuple[str | None, str], str] = {}
        """Blow-up alarms up now (warning or critical): (layer, kind) -> level. Publishing thread."""
        self._critical_since: int | None = None
        """The step from which a critical exploding alarm has been up (None: none is). Publishing thread."""
        self._last_flag_step: int | None = None
        """The last sampled step a blow-up alarm was up at (None: none yet)."""
        self._last_rollback = -1
        self._requested = False
        self._gave_up = False
        control.rollback = self.answer

    # ------------------------------------------------------------ the training thread

    def check(
        self, step: int, grads: list[torch.Tensor] | None, loss: Any, scaled: bool, finite: bool | None = None
    ) -> None:
        """At the step boundary, after the statistics: skip (and roll back) a non-finite step.
        `grads` None: the gradients are not checked here, either because `finite` says already
        whether they are (the run-wide norm, read on the host) or at a step that is not sampled
        on a device the norm is read from a step later."""
        if self.discard or scaled:
            return  # a rollback already threw this step away; a GradScaler skips its own overflows
        if finite is not False and self._finite(grads, loss):
            return
        if self.config.skip:
            self.discard = True
            self._act(step, "skip", "non-finite loss or gradients: this step's update is not applied")
            self._ledger.note(step, "skip")
        if self.config.rollback and self._can_roll_back():
            self.control.apply_all([Rollback(f"non-finite gradients at step {step}")], step)

    def _finite(self, grads: list[torch.Tensor] | None, loss: Any) -> bool:
        stats = self.stats
        value = host_loss(loss)  # a number or a CPU tensor: read without a device sync
        loss_ok = value is None or math.isfinite(value)
        if grads is None and stats.dist is None and (loss is None or value is not None):
            return loss_ok  # an unsampled step on one process: no tensor op at all
        ok = ~any_nonfinite(grads or [], stats.device)
        if value is None and loss is not None:
            ok = ok & torch.isfinite(loss_tensor(loss, stats.device, stats.acc)).all()
        elif not loss_ok:
            ok = torch.zeros_like(ok)
        if stats.dist is not None:
            return stats.dist.all_true(ok)
        return bool(ok)

    def finish(self, step: int, scaled: bool) -> bool:
        """Before `optimizer.step()`: throw this step's gradients away if it must not be applied
        (True then), else take a snapshot when one is due."""
        if self.discard:
            self.discard = False
            for opt in self.optimizers:
                for group in opt.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        if scaled:
                            p.grad.fill_(math.nan)  # the scaler finds it and skips the step (a step of None it refuses)
                        else:
                            p.grad = None  # every torch optimizer leaves a parameter without gradient alone
            return True
        if self.config.rollback and self._snapshot_due(step):
            self._take(step)
        return False

    def _snapshot_due(self, step: int) -> bool:
        if self._slots == 0:
            return False
        with self._lock:
            if self._up or (self._last_flag_step is not None and step - self._last_flag_step <= 2):
                return False  # an alarm is up, or was a moment ago (alarms arrive a step or two late)
        last = self.candidate or self.confirmed
        return last is None or step - last.step >= self.config.snapshot_every

    def _take(self, step: int) -> None:
        need = snapshot.state_bytes(self.model, self.optimizers)
        limit = self.config.max_snapshot_bytes
        slots = 2 if 2 * need <= limit else 1 if need <= limit else 0
        if slots != self._slots and (self._slots is None or slots < self._slots):
            if slots == 0:
                self._say(
                    f"gradtui guard: the model and optimizer state take {_size(need)}, over max_snapshot_bytes "
                    f"{_size(limit)}: no snapshots, so no rollback (non-finite steps are still skipped)"
                )
                self.confirmed = self.candidate = None
            elif slots == 1:
                self._say(
                    f"gradtui guard: keeping one snapshot of {_size(need)} (two would pass max_snapshot_bytes "
                    f"{_size(limit)}); a rollback may then go to a state alarms had not yet judged"
                )
            self._slots = slots
        if slots == 0:
            return
        with self._lock:
            flagged = self._last_flag_step
            clean = self.candidate is not None and (flagged is None or flagged < self.candidate.step)
        if clean:
            self.confirmed = self.candidate
        self.candidate = None
        if slots == 1:
            self.confirmed = None  # its memory goes to the new one
        self.candidate = snapshot.take(step, self.model, self.optimizers)
        self.snapshots_taken += 1

    def _target(self) -> snapshot.Snapshot | None:
        return self.confirmed or self.candidate

    def _can_roll_back(self) -> bool:
        if self.rollbacks < self.config.max_rollbacks:
            return self._target() is not None
        if not self._gave_up:
            self._gave_up = True
            self._say(
                f"gradtui guard: {self.rollbacks} rollbacks and the run still blows up; no more rollbacks "
                "(non-finite steps are still skipped): the run needs a person"
            )
        return False

    def answer(self, state: ControlState, cmd: Rollback, step: int) -> tuple[ControlState, CommandResult]:
        """Carry out a `Rollback` at `step` (on every rank): restore, cut the learning rate."""
        target = self._target()
        self._requested = False
        if target is None:
            why = "no healthy snapshot yet to roll back to"
            return state, CommandResult(cmd.id, "rollback", False, step, why)
        snapshot.restore(target, self.model, self.optimizers, keep_groups=True)
        self.candidate = None
        self.confirmed = target  # where a next blow-up goes back to as well
        self.discard = True
        self.rollbacks += 1
        self._last_rollback = step
        with self._lock:
            self._critical_since = None
        new, cut = respond(state, SetLR(factor=self.config.lr_factor), step)
        why = f" ({cmd.reason})" if cmd.reason else ""
        lr = cut.message.split(" (")[0] if cut.ok else f"lr unchanged: {cut.message}"
        detail = f"rolled back to step {target.step}{why}, {lr}"
        self._act(step, "rollback", detail)
        if cut.ok:
            self._act(step, "lr_cut", f"{lr} (x{self.config.lr_factor:g}, cut {self.rollbacks})")
        self._ledger.note(step, "rollback")
        return new, CommandResult(cmd.id, "rollback", True, step, detail)

    def _act(self, step: int, action: str, detail: str) -> None:
        self._emit(GuardAction(step, action, detail))

    def _say(self, text: str) -> None:
        log.warning("%s", text)
        self._emit(LogLine(text, stream="gradtui"))

    # ------------------------------------------------------------ the publishing thread (rank 0)

    def observe(self, step: int, alerts: list[Alert], stats: StepStats | None) -> None:
        """A step's alarms (and its statistics when it was sampled): say what adaptive clipping did,
        track blow-ups, and ask for a rollback when a critical exploding alarm has been up for
        `patience` steps."""
        if stats is not None and stats.clip_mode == "auto" and stats.clipped:
            self._act(
                step,
                "clip",
                f"norm {stats.global_norm:.4g} clipped to {stats.clipped_norm:.4g} "
                f"(past {stats.clip_threshold:g} std of the recent norms)",
            )
        with self._lock:
            for a in alerts:
                if a.kind not in BLOWUP_KINDS:
                    continue
                key = (a.layer, a.kind)
                if a.active and a.level != "info":
                    self._up[key] = a.level
                elif not a.active:
                    self._up.pop(key, None)
            if self._up:
                self._last_flag_step = step
            critical = any(k[1] == "exploding" and lvl == "critical" for k, lvl in self._up.items())
            if not critical or step <= self._last_rollback:
                self._critical_since = None
            elif self._critical_since is None:
                self._critical_since = step
            held = step - self._critical_since + 1 if self._critical_since is not None else 0
            due = held >= self.config.patience and not self._requested
        if due and self.config.rollback and self.rollbacks < self.config.max_rollbacks and self._target():
            self._requested = True
            self.control.commands.put_nowait(Rollback(f"critical exploding alarm up {held} steps"))
