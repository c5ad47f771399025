"""`gradtui.watch`: the one call a training loop adds to start watching."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from gradtui.probe.monitor import Monitor
from gradtui.probe.options import Instruments, Output, Sampling, Serving


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    record: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    every: int | None = None,
    detail_every: int = 50,
    budget: float | str | None = None,
    clip: tuple[str, float] | None = None,
    queue: bool | int = False,
    detectors: Any = True,
    run: str | None = None,
    update_ratio: bool = True,
    serve: bool | None = None,
    listen: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    lanes: Sequence[str] | int = (),
    scheduler: Any = None,
    guard: Any = None,
    capture: bool | int = True,
) -> Monitor:
    """Start watching `model`'s gradients (and `optimizer`'s learning rates).

    Args:
        model: the module being trained (plain, DDP/FSDP-wrapped or `torch.compile`d).
        optimizer: its optimizer, or a list of them (a GAN, a separate head optimizer); needed
            for learning-rate commands, update ratios and the stepped norm.
        record: write every event to this record file (refuses to replace an existing one
            unless `overwrite=True`), or to a new timestamped file in this folder (an
            existing directory, a path ending in "/", or one with no suffix); missing
            folders are created. `mon.record_path` is the file chosen.
        every: sample per-layer statistics every `every` steps, exactly. Default: as often
            as the overhead budget allows (every step unless the probe would cost more).
        detail_every: compute mean/max |g|, zero fraction, weight norm and update ratio on
            every `detail_every`-th sampled step.
        budget: the share of the loop's step time the probe may take when `every` is not
            given (default `GRADTUI_BUDGET`, else 0.01; 0 or "off": every step). Past it,
            per-layer statistics are sampled every 2, 4, ... up to 32 steps, and every step
            again for a while as soon as the loss or the norm jumps or a detector alarms
            (`gradtui.probe.budget`). Single-process runs only.
        clip: start with clipping on, e.g. ("norm", 1.0) or ("value", 0.5).
        queue: keep events in an in-process queue (`mon.events`): True for 20,000 events,
            or the queue size.
        detectors: True (defaults), False, or a `gradtui.model.detectors.DetectorConfig`.
        run: the run's name (default: script name and pid).
        update_ratio: snapshot weights on detail steps to measure ||Δw||/||w||.
        serve: serve viewers (`gradtui attach`, `gradtui ls`) on a Unix socket in the
            user's private runtime directory. Default: on when GRADTUI_SERVE=1 is set or
            `listen` is given; False also ignores GRADTUI_LISTEN and GRADTUI_TOKEN_FILE.
        listen: also serve on TCP at "HOST:PORT" (host defaults to 127.0.0.1, for
            `ssh -L`; default: GRADTUI_LISTEN). Viewers must present a token: read from
            `token_file` (written there, mode 0600, when missing), else a new one logged
            at start.
        token_file: where the TCP token lives (default: GRADTUI_TOKEN_FILE).
        lanes: extra rows for gradients that reach activations, as names or a count;
            fill them with `mon.lane(i, tensor)` during the forward pass.
        scheduler: accepted for compatibility; not needed: a learning-rate override is
            re-applied at every step on top of whatever the loop or its scheduler sets.
        guard: True (the defaults) or a `gradtui.Guard(...)`: skip a bad step (not finite, or
            a loss far above the recent ones), and roll trouble a skip does not cure back to
            the last healthy snapshot with a lower learning rate. Off by default. Costs a
            finiteness check of the gradients at sampled steps (every step with
            `Guard(every_step=True)`), the loss read at every step, and a host copy of the model
            and optimizer state every `snapshot_every` steps (README "Guard").
        capture: deep captures armed by trouble (an alarm at warning or critical level, a
            non-finite loss or gradient): every step sampled in full for that many steps, each
            layer's activation statistics and optimizer moments, and the first module to produce a
            NaN or Inf (`gradtui.probe.capture`). True: 32 steps; an int: that many; False: none
            armed by trouble, and no root hooks kept for re-running a non-finite step
            (`mon.capture()` and a viewer's ask still arm one). Nothing is hooked per layer
            until then.

    Returns:
        The `Monitor`: call `mon.step(loss)` after backward, `mon.close()` at the end.
    """
    if isinstance(queue, bool):
        queue_size = 20_000 if queue else None
    elif isinstance(queue, int) and queue > 0:
        queue_size = queue
    else:
        raise ValueError(f"queue must be True, False or a positive size, got {queue!r}")
    return Monitor(
        model,
        optimizer,
        sampling=Sampling(every, detail_every, budget),
        output=Output(record, overwrite, queue_size, run),
        serving=Serving(True, serve, listen, token_file),
        instruments=Instruments(detectors, clip, update_ratio, lanes, guard, capture=capture),
        scheduler=scheduler,
    )
