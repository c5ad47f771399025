"""The probe: gradient statistics from a live training loop, in two tiers.

`watch(model, optimizer)` returns a `Monitor`; `Monitor.step(loss)` is called after
`loss.backward()` and before `optimizer.step()`. Every step, the loss and the global
gradient norm reach the detectors and the guard (`runwide`); per-layer statistics come at
sampled steps (`budget`): a handful of fused kernels on the gradients' own device and one
host copy of a small vector (`stats`), with the detail statistics every `detail_every`
sampled steps. Commands from viewers apply at the step boundary (`control`); clipping
runs on the device (`clip`). Only rank 0 judges, records and serves (`judge`, `sinks`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from gradtui.model.commands import Capture, Command, validate
from gradtui.model.detectors import Detectors
from gradtui.model.events import Event, LogLine, RunEnd, RunStart, UpdateStats
from gradtui.model.guard import guard_config
from gradtui.model.rate import StepRate
from gradtui.probe import amp, exits
from gradtui.probe.announce import Announcer
from gradtui.probe.backward import FillOrder
from gradtui.probe.budget import Sampler, default_budget
from gradtui.probe.capture import DeepCapture, capture_steps
from gradtui.probe.clip import ZClip, check_clip, clip_grads
from gradtui.probe.control import Control
from gradtui.probe.dist import DistContext
from gradtui.probe.guard import Keeper, Ledger
from gradtui.probe.judge import Judge, make_detectors
from gradtui.probe.lanes import Lanes, lane_names
from gradtui.probe.layers import activations, fans, find_layers, layer_infos, module_kinds, optimizer_list
from gradtui.probe.options import (
    DEFAULT_INSTRUMENTS,
    DEFAULT_OUTPUT,
    DEFAULT_SAMPLING,
    DEFAULT_SERVING,
    Instruments,
    Output,
    Sampling,
    Serving,
)
from gradtui.probe.packed import StepMeta, update_ratio
from gradtui.probe.publisher import Publisher, Sampled
from gradtui.probe.runwide import RunWide
from gradtui.probe.server import ProbeServer
from gradtui.probe.sinks import Outputs, QueueSink, RecordSink, Sink, inherited_socket, open_server
from gradtui.probe.stats import GradIndex, GradStats, StepInputs, host_loss
from gradtui.probe.stepped import Placement, SteppedNorm
from gradtui.probe.updates import UpdateRatio
from gradtui.wire import codec
from gradtui.wire.queue import EventQueue, QueueSource
from gradtui.wire.record import open_record


class Monitor:
    """Watches a model's gradients during training. Create it with `gradtui.watch`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        sampling: Sampling = DEFAULT_SAMPLING,
        output: Output = DEFAULT_OUTPUT,
        serving: Serving = DEFAULT_SERVING,
        instruments: Instruments = DEFAULT_INSTRUMENTS,
        scheduler: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch() needs a torch.nn.Module, got {type(model).__name__}")
        optimizers = optimizer_list(optimizer)
        share = sampling.share
        guard_cfg = guard_config(instruments.guard)
        start_clip = check_clip(instruments.clip)
        if guard_cfg is not None and guard_cfg.clip and instruments.clip is None:
            start_clip = ("auto", guard_cfg.clip_z)
        self.model = model
        self.optimizers: list[torch.optim.Optimizer] = optimizers
        """The watched optimizers (learning rates, update ratios, the stepped norm)."""
        self.optimizer = optimizers[0] if optimizers else None
        """The first watched optimizer (None without one)."""
        self.detail_every = sampling.detail_every
        self.step_count = 0
        """Number of `step()` calls so far; the next call is step number `step_count`."""
        self.closed = False
        self._pid = os.getpid()
        """Only this process closes the monitor's sockets and writes its record (not a fork of it)."""
        self._fork_warned = False
        self._nonfinite: bool | None = None
        """The current step is not finite, where the host knows at `mon.step` (see `_check_finite`)."""

        self._layers = find_layers(model)
        if not self._layers:
            raise ValueError("the model has no parameters to watch")
        self.dist = DistContext.detect(model, [p for layer in self._layers for p in layer.params])
        if self.dist is not None and share:
            raise ValueError(
                "budget= needs a single process: under torch.distributed every rank must sample the same "
                "steps, so give every= (a fixed stride) instead"
            )
        if share is None:
            # The environment's budget applies only where the stride is the budget's to choose.
            share = default_budget() if self.dist is None and sampling.every is None else 0.0
        self._sampler = Sampler(sampling.every, share, sampling.detail_every)
        """Which steps are sampled: every `every`-th, or as often as the overhead budget allows."""
        self.every = self._sampler.stride
        """The sampling stride at the start (with a budget, `sampling_stride` is the one in force)."""
        self.primary = self.dist is None or self.dist.primary
        """Only the primary process (rank 0) runs detectors, records and serves."""
        self._stats = GradStats(self._layers, self.dist, instruments.defer)
        self._order = FillOrder(self._stats.params)
        self._runwide = RunWide(
            self._stats, self._sampler, self._send, lambda: self._judge.limits, self.primary, self._order
        )
        self._handover = self._runwide.handover
        """Step results on their way to the publishing thread, in step order."""
        self._rate = StepRate()
        self.lanes: tuple[str, ...] = lane_names(instruments.lanes)
        self._lanes = Lanes(self.lanes, self._stats.device, self._stats.acc)
        self._outputs = Outputs()
        self._publisher: Publisher | None = None
        """Once the run has started: the thread every event goes out through (see `publisher`)."""
        self.control = Control(optimizers, start_clip, self.dist, self._emit)
        """The settings viewers change (learning rate, clipping, pause) and their command queue."""
        self.commands = self.control.commands
        """Commands for the probe; applied at the next step boundary."""
        self._scheduler = scheduler
        self._updates = UpdateRatio(optimizers, self._stats) if optimizers and instruments.update_ratio else None
        self._stepped = SteppedNorm(optimizers, self._stats, self._on_stepped) if optimizers else None
        self._grad_scale: torch.Tensor | None = None
        """The factor the gradients carry at this `mon.step` (a GradScaler's scale), None for 1."""
        self._placement = Placement(lambda text: self._emit(LogLine(text, stream="gradtui")))
        self._ledger = Ledger(self._emit)
        self._zclip: ZClip | None = None
        auto = capture_steps(instruments.capture)
        self._capture = DeepCapture(
            model,
            self._layers,
            self._stats,
            optimizers,
            self._emit,
            auto,
            rerun=auto is not None and self._stats.on_host,  # it needs the step's finiteness at mon.step
        )
        """The deep capture: armed by trouble or `capture()` (see `probe.capture`)."""
        self.control.capture = self._capture.answer
        if self.dist is not None:
            # Every rank must sample the same steps: rank 0's asks travel as commands, which every rank
            # applies at one step (the others' asks are rank 0's too).
            self._capture.route = lambda cmd: self.commands.put_nowait(cmd) if self.primary else None
        self._capture.late = not self._stats.on_host
        self.guard = (
            Keeper(guard_cfg, model, optimizers, self._stats, self.control, self._emit, self._ledger)
            if guard_cfg is not None
            else None
        )
        """The guard at work (`watch(guard=...)`), None when off."""

        self.events: EventQueue | None = EventQueue(output.queue_size) if output.queue_size and self.primary else None
        """In-process event queue (when `queue=` was given to `watch`; rank 0 only)."""
        self._judge = Judge(
            self._outputs,
            self._stats,
            bool(self.lanes),
            self._sampler,
            make_detectors(instruments.detectors, self._layers) if self.primary else None,
            self._placement,
            self._ledger,
            self.guard,
            self._capture,
        )
        """Turns what the publishing thread gets into events and judges them."""
        self.started = time.time()
        self.run_name = output.run or _default_run_name()
        self.record_path: Path | None = None
        """The record file this run writes (a new file in the folder when `record=` named a folder)."""
        self._record: RecordSink | None = None
        self.server: ProbeServer | None = None
        """The socket server viewers attach to, when serving (rank 0 only)."""
        try:
            self._open(output, serving)
        except BaseException:
            # watch() fails as a whole: nothing of it stays hooked into the user's optimizers or on disk.
            self._undo_start()
            raise
        if self.primary:
            self._publisher = Publisher(self._judge.handle, idle=self._judge.screens)
            if self.events is not None:
                # A reader of the in-process queue sees every event made before it reads.
                self.events.settle = self._publisher.flush
        exits.register(self)

    def _open(self, output: Output, serving: Serving) -> None:
        """Open the sinks (queue, record, server, the run's own output) and send the run's start."""
        if self.events is not None:
            self._outputs.add(QueueSink(self.events))
        if self.primary:
            self._outputs.add(Announcer())
        if output.record is not None and self.primary:
            writer = open_record(output.record, run=self.run_name, overwrite=output.overwrite)
            self.record_path = writer.path
            self._record = RecordSink(writer)
            self._outputs.add(self._record, needs_frame=True)

        inherited = inherited_socket() if serving.connect else None
        if not self.primary:
            if inherited is not None:
                inherited.close()  # torchrun gives every rank the same environment: only rank 0 streams
        else:
            self.server = open_server(
                self.commands,
                run=self.run_name,
                started=self.started,
                serve=serving.serve,
                listen=serving.listen,
                token_file=serving.token_file,
                inherited=inherited,
            )
            if self.server is not None:
                self._outputs.add(self.server)
                self.control.viewers = self.server
        state = self.control.state
        self._emit(
            RunStart(
                run=self.run_name,
                pid=os.getpid(),
                started=self.started,
                layers=layer_infos(self._layers),
                lrs=state.lrs,
                lr_groups=self.control.group_names(),
                clip_mode=state.clip_mode,
                clip_threshold=state.clip_threshold,
                every=self.every,
                detail_every=self.detail_every,
                budget=self._sampler.budget,
                guard=self.guard is not None,
                activations=activations(self.model),
                modules=module_kinds(self.model),
                fan_in=tuple(fans(layer).fan_in for layer in self._layers),
                fan_out=tuple(fans(layer).fan_out for layer in self._layers),
                device=str(self._stats.device),
                world_size=self.dist.world_size if self.dist else 1,
                script=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
                sharded=bool(self.dist and any(self.dist.sharded)),
                lanes=self.lanes,
            )
        )

    def _undo_start(self) -> None:
        for hooks in (self._updates, self._stepped, self.guard):
            if hooks is not None:
                hooks.remove()
        self._capture.close(self.step_count)
        self._order.close()
        self.control.close()
        if self._record is not None and self._record in self._outputs.sinks:
            self._record.writer.discard()
            self._outputs.sinks.remove(self._record)
        with contextlib.suppress(Exception):
            self._outputs.close()

    # ------------------------------------------------------------ public API

    @property
    def clip_mode(self) -> str:
        return self.control.state.clip_mode

    @property
    def clip_threshold(self) -> float:
        return self.control.state.clip_threshold

    @property
    def detectors(self) -> Detectors | None:
        """The detectors judging this run (rank 0; None when off or on another rank)."""
        return self._judge.detectors

    @property
    def sampling_stride(self) -> int:
        """Steps between sampled steps now (fixed by `every`, or chosen by the overhead budget)."""
        return self._sampler.stride

    @property
    def paused(self) -> bool:
        return self.control.state.paused

    @property
    def scheduler(self) -> Any:
        """The scheduler given to `watch` (kept for reference: overrides need none, see `control`)."""
        return self._scheduler

    @property
    def placement(self) -> Placement:
        """The warnings about where `mon.step` sits (a framework callback words their advice)."""
        return self._placement

    @property
    def sinks(self) -> list[Sink]:
        """Where this monitor's events go."""
        return self._outputs.sinks

    def add_sink(self, sink: Sink) -> None:
        """Send this monitor's events to another sink too (from now on)."""
        self._outputs.add(sink)

    def source(self) -> QueueSource:
        """A viewer source over this monitor's in-process queue (needs `queue=` in watch)."""
        if self.events is None:
            raise ValueError("this monitor keeps no in-process queue: pass queue=True to watch()")
        return QueueSource(self.events, self.commands, name=self.run_name)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    def lane(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Measure the gradient that reaches `tensor` in the coming backward, as lane `index`.

        For activations (e.g. an RNN's hidden state at time step t, `h = mon.lane(t, h)`):
        the L2 norm of dL/d`tensor` is summed into the lane, on the device, and shows as
        a row of its own below the layers. Returns `tensor` unchanged.
        """
        if self._capture.rerunning:
            return tensor  # a re-run's forward: its gradients are not the step's
        return self._lanes.watch(index, tensor)

    def send(self, command: Command) -> None:
        """Queue a command as a viewer would; it is applied at the next step."""
        self.commands.put_nowait(command)

    def capture(self, steps: int = 32) -> None:
        """Arm a deep capture for `steps` steps from the next step (`gradtui.probe.capture`): every
        step sampled in full, each layer's activation statistics and optimizer moments, and the
        first module to produce a NaN or Inf. Costs a few times a step while it lasts."""
        why = validate(Capture(steps=steps), self.control.state)
        if why is not None:
            raise ValueError(why)
        self._capture.request(steps, "mon.capture()")

    # ------------------------------------------------------------ the step

    def step(self, loss: torch.Tensor | float | None = None, *, scaler: Any = None, batch: Any = None) -> None:
        """Record this step's gradients and apply pending commands and clipping.

        Call after `loss.backward()` and before `optimizer.step()`.

        Args:
            loss: the step's loss (a scalar tensor or a number), shown and checked.
            scaler: a `torch.amp.GradScaler` when training with one. gradtui never calls
                the scaler (no `unscale_`): the statistics are computed from the scaled
                gradients divided by its scale, so they describe the true gradients, and
                clipping acts on the scaled gradients with the threshold times the scale;
                the loss scale and the steps the scaler skips are recorded. Gradtui notices
                (and warns once) when the loop has already called `unscale_`.
            batch: identifiers of this step's batch (an int, a str, or a list/tensor of sample
                indices): kept on the record when the step spikes, is skipped or rolled back.
        """
        if self.closed:
            raise RuntimeError("this monitor is closed")
        if os.getpid() != self._pid:
            self._in_fork()
            return
        step = self.step_count
        self.step_count += 1
        publisher = self._publisher
        if publisher is not None and not publisher.following and self._order.learned():
            publisher.follow(self._order)  # it works while backward runs
        self._ledger.keep(step, batch)
        sampler = self._sampler
        value = None  # the loss on the host (a number, a CPU tensor): read where a decision needs it
        if sampler.adaptive:
            if self._stepped is not None:
                sampler.spent(self._stepped.take_spent())
            value = host_loss(loss)
            if value is not None:
                sampler.check(step, value)  # before deciding: a bad loss has this very step sampled
        sampled, detail = sampler.begin(step)
        capture = self._capture
        if capture.covers(step):
            sampled = detail = True
            sampler.untimed()  # a capture's cost is asked for: the budget does not count it
        self._nonfinite = None
        try:
            self._step(step, loss, value, scaler, sampled, detail)
        finally:
            sampler.end(step)
            try:
                capture.boundary(step, self._nonfinite)
            finally:
                capture.after_step()

    def _step(
        self,
        step: int,
        loss: torch.Tensor | float | None,
        value: float | None,
        scaler: Any,
        sampled: bool,
        detail: bool,
    ) -> None:
        stats = self._stats
        if self.guard is not None and self._publisher is not None:
            self._publisher.settle(step)  # the guard acts on the alarms of the steps before
        self._handover.resolve(block=not stats.defer)  # a step no optimizer step followed
        self.control.begin_step()
        self.control.apply_pending(step)
        scale = amp.grad_scale(scaler, self.optimizers, stats.device, stats.acc)
        if scale is not None and scale.unscaled:
            self._placement.unscaled()
        self._grad_scale = scale.factor if scale is not None else None

        mode = self.control.state.clip_mode
        clip = self._clip if mode != "off" else None
        if mode != "auto":
            self._zclip = None  # fresh statistics each time the mode is chosen
        if self._stepped is not None:
            self._stepped.disarm()
        guard = self.guard
        total = math.nan  # this step's global norm where the host has it already (unsampled, on CPU)
        screened = None  # measured by its canaries: whether unusual (None: not so measured)
        on_host = stats.on_host
        finite: bool | None = None  # the step's gradients were finite, where the host knows now
        if not sampled and clip is None and scale is None and (guard is None or not guard.config.every_step):
            screened = self._runwide.canary_step(step, value)
            finite = True if screened is False else None
        if screened is None or screened:
            index, grads = stats.current()
            unusual = bool(screened)
            if not sampled and screened is None:
                total, unusual = self._runwide.full_step(step, loss, value, index, grads, scale)
                finite = math.isfinite(total) if on_host else None
            if unusual:
                sampled, detail = True, self._sampler.promote(step)
        taken = self._capture.take(step) if sampled else None
        if sampled:
            if on_host and value is None:
                value = host_loss(loss)  # read once: the statistics and the rules after them take it
            update = self._updates.take() if self._updates is not None else None
            inputs = StepInputs(
                loss=loss if value is None else value,
                detail=detail,
                amp=scale,
                lanes=self._lanes.take() if self._lanes else None,
                update=update[1] if update is not None else None,
                capture=taken[0] if taken is not None else None,
            )
            if detail and self._updates is not None:
                self._updates.want(step)
            meta = self._meta(step, index, detail, update[0] if update is not None else None)
            meta.capture = taken[1] if taken is not None else None
            pending = stats.sample(index, inputs, meta, clip, grads)
            gather = False
            if pending is not None and on_host:
                layer_sq = pending.values()[0, : stats.n]
                finite = bool(np.isfinite(layer_sq).all())
                # A guard acts at each step on the judgement of the steps before: none waits.
                gather = self.guard is None and self._runwide.calm(step, layer_sq, value)
            if pending is not None:
                self._handover.sampled(pending, gather)
                self._arm_stepped(index.which)
        elif clip is not None:
            known = torch.tensor(total, dtype=stats.acc) if math.isfinite(total) else None
            clip(grads, known, index.which)
        if on_host:
            # Before the guard acts: a rollback at this boundary means these are no longer its weights.
            rolled_back = guard is not None and guard.discard
            self._nonfinite = self._capture.check_step(
                step, host_loss(loss) if value is None else value, finite, rolled_back
            )
        if guard is not None:
            checked = sampled or guard.config.every_step
            # Canaries that passed the screen were finite; a non-finite value elsewhere reaches the loss.
            finite = True if screened is False else None if sampled or math.isnan(total) else math.isfinite(total)
            guard.check(step, grads if checked else None, loss, scale is not None, finite)
            if guard.finish(step, scale is not None) and self._stepped is not None:
                self._stepped.disarm()  # no optimizer step uses these gradients
        if not stats.defer and self._stepped is None:
            self._handover.resolve(block=True)  # no optimizer step to wait for
        if self.control.state.paused:
            self._handover.resolve(block=not stats.defer)  # show the step we stop at
            self._handover.flush()
            if self._publisher is not None:
                self._publisher.release(now=True)  # no next backward comes to release what gathered
            since = time.perf_counter()
            self.control.wait_while_paused(step, lambda: self.closed)
            self._rate.pause(time.perf_counter() - since)  # paused time is not training time
            self._sampler.untimed()

    def _send(self, item: object) -> None:
        """Hand an item to the publishing thread (or judge it here where there is none)."""
        if self._publisher is not None:
            self._publisher.put(item, isinstance(item, Sampled) and item.gather)
        else:
            self._judge.handle(item)
            self._judge.screens()

    def _arm_stepped(self, which: list[int]) -> None:
        if self._stepped is None:
            return
        sample = self._stepped.sample(which)
        if not sample:
            return
        self._stepped.arm(self._stats.grads(sample), self._grad_scale)

    def _on_stepped(self, factor: torch.Tensor | float) -> None:
        """From the optimizer's post-step hook: what the step just taken used."""
        last = self._handover.last_sampled()
        if last is None:
            return
        last.attach_stepped(factor)
        if not self._stats.defer:
            self._handover.resolve(block=True)

    def _clip(self, grads: list[torch.Tensor], total: torch.Tensor | None, which: Sequence[int]) -> torch.Tensor:
        c, scale = self.control.state, self._grad_scale

        def global_norm() -> torch.Tensor:
            norm = self._stats.global_norm(grads, which)
            return norm if scale is None else norm / scale[0]

        if c.clip_mode == "auto" and self._zclip is None:
            self._zclip = ZClip()
        return clip_grads(grads, c.clip_mode, c.clip_threshold, total, global_norm, scale, self._zclip)

    def _meta(self, step: int, index: GradIndex, detail: bool, update_step: int | None) -> StepMeta:
        rate = self._rate.update(step, time.perf_counter())
        state = self.control.state
        lrs, schedule_lrs = self.control.recorded()
        return StepMeta(
            step=step,
            time=time.time(),
            lrs=lrs,
            schedule_lrs=schedule_lrs,
            has_grad=index.has_grad,
            numel_with_grad=index.numel,
            detail=detail,
            clip_mode=state.clip_mode,
            clip_threshold=state.clip_threshold,
            steps_per_sec=rate,
            paused=state.paused,
            update_step=update_step,
        )

    # ------------------------------------------------------------ results

    def _emit(self, event: Event) -> None:
        publisher = self._publisher
        if publisher is None or threading.get_ident() == publisher.ident:
            self._outputs.emit(event)
        else:
            publisher.put(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event made so far has reached the sinks (they are sent on a thread of
        the probe's own, so the loop never waits for them); False on timeout. A sampled step's
        statistics are made once the optimizer step that follows has been measured (at the latest
        by the next `step`); on CUDA at the first `step` that finds their host copy landed, or at `close`."""
        self._handover.flush()
        return self._publisher.flush(timeout) if self._publisher is not None else True

    def close(self, status: str = "ok", error: str = "") -> None:
        """Flush statistics still in flight, send `RunEnd` and close every sink."""
        if self.closed:
            return
        if os.getpid() != self._pid:
            # A forked child shares the parent's sockets and record file: leave them alone.
            self.closed = True
            return
        exits.unregister(self)
        self._handover.resolve(block=True)
        self._handover.flush()
        last = self._updates.take() if self._updates is not None else None
        if last is not None and self.primary and self.dist is None:
            step, upd = last
            d2, w2 = upd.to("cpu", torch.float64).numpy().reshape(2, -1)
            self._emit(UpdateStats(step=step, update_ratio=update_ratio(d2, w2)))
        self.closed = True
        for hooks in (self._updates, self._stepped, self.guard):
            if hooks is not None:
                hooks.remove()
        self._capture.close(self.step_count - 1)
        self._order.close()
        self.control.close()
        self._emit(RunEnd(step=self.step_count, status=status, error=error))
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        self._outputs.close()

    def _in_fork(self) -> None:
        if not self._fork_warned:
            self._fork_warned = True
            logging.getLogger("gradtui").warning(
                "gradtui: mon.step() in pid %d, a fork of pid %d that called watch(): this monitor only "
                "watches its own process; call gradtui.watch() in the child to watch it there",
                os.getpid(),
                self._pid,
            )

    def close_at_exit(self) -> None:
        """At interpreter exit without `close()`: end the run as the exit says (an uncaught error or ok)."""
        if self.closed or os.getpid() != self._pid:
            return
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if isinstance(exc, BaseException):
            self.close("error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        else:
            self.close()

    def terminate(self, signum: int) -> None:
        """On SIGTERM/SIGHUP, in the main thread (maybe inside `step`): the run's end on the record
        and to viewers, taking no lock the interrupted code might hold."""
        if self.closed or os.getpid() != self._pid:
            return
        self.closed = True
        end = codec.encode(
            RunEnd(step=self.step_count, status="interrupted", error=f"terminated by {signal.Signals(signum).name}")
        )
        publisher = self._publisher
        # What is queued goes out first; the end is written only once nothing else writes.
        quiet = publisher is None or publisher.halt(TERMINATE_FLUSH_S) or not publisher.busy
        if quiet and self._record is not None and self._record in self._outputs.sinks:  # not dropped (a full disk)
            with contextlib.suppress(OSError, ValueError):
                rows = self._handover.salvage()  # the last steps' loss and norm, still gathered in a batch
                if rows is not None:
                    self._record.writer.write_frame(codec.encode(rows))
                self._record.writer.write_frame(end)
                self._record.close()
        if self.server is not None:
            self.server.terminate(signum, end)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("error", "".join(traceback.format_exception(exc_type, exc, tb)))


TERMINATE_FLUSH_S = 2.0
"""On SIGTERM/SIGHUP: how long the events still queued may take to go out before the run's end is written."""


def _default_run_name() -> str:
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    stem = Path(script).stem if script and script not in ("-c", "") else "python"
    return f"{stem}-{os.getpid()}"
