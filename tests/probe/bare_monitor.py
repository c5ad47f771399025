"""A `Monitor` built directly, for tests that count what one probe sends: no detectors, no deep
capture armed by trouble (a test's injected NaN would sample every step after it), no viewer
connection, events kept in an in-process queue."""

from __future__ import annotations

import torch
from torch import nn

from gradtui.probe.monitor import Monitor
from gradtui.probe.options import Instruments, Output, Sampling, Serving


def bare_monitor(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    queue_size: int,
    detail_every: int = 50,
    every: int | None = None,
    defer: bool | None = None,
) -> Monitor:
    return Monitor(
        model,
        optimizer,
        sampling=Sampling(every=every, detail_every=detail_every),
        output=Output(queue_size=queue_size),
        serving=Serving(connect=False),
        instruments=Instruments(detectors=False, defer=defer, capture=False),
    )
