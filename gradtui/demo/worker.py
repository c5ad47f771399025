"""The demo's training process: one scenario, trained for real, streamed to the viewer.

Started by the viewer (`gradtui demo`) with GRADTUI_CONNECT naming an inherited socket;
also runnable by hand: `python -m gradtui.demo.worker sigmoid --steps 300`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import torch

import gradtui
from gradtui.wire.env import VIEWER_PID_ENV


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gradtui.demo.worker", description=__doc__)
    p.add_argument("scenario")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--speed", type=float, default=0.0, help="steps per second at most (0: no limit)")
    p.add_argument("--record", default=None)
    p.add_argument("--run", default=None, help="run name shown in the viewer")
    return p.parse_args(argv)


def _viewer_pid() -> int:
    """The viewer that started this worker: named by it (no race with its exit), else our parent."""
    named = os.environ.get(VIEWER_PID_ENV, "")
    return int(named) if named.isdigit() else os.getppid()


def check_device(device: str) -> str | None:
    """Why `device` cannot be used here, or None."""
    if device == "cpu":
        return None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return "CUDA was asked for but torch sees no CUDA device here"
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"torch sees {torch.cuda.device_count()} CUDA device(s) here: there is no {device}"
        return None
    return f"unknown device {device!r} (use cpu or cuda)"


def main(argv: Sequence[str] | None = None) -> int:
    from gradtui.demo.scenarios import get

    args = parse_args(argv)
    try:
        scenario = get(args.scenario)
    except ValueError as exc:
        print(f"gradtui worker: {exc}", file=sys.stderr)
        return 2
    reason = check_device(args.device)
    if reason is not None:
        print(f"gradtui worker: {reason}", file=sys.stderr)
        return 2
    steps = args.steps if args.steps is not None else scenario.steps
    if steps < 1:
        print(f"gradtui worker: --steps must be at least 1, got {steps}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    torch.manual_seed(args.seed)
    setup = scenario.build(args.seed, args.device)
    options = dict(scenario.watch_options)
    # The tour's stories are told step by step, the same on any machine: no overhead budget.
    options.setdefault("every", 1)
    # The tour's viewer shows every alarm and guard action as it happens; the run's own log lines
    # (gradtui.probe.announce) would only repeat them in its log pane.
    logging.getLogger("gradtui").setLevel(logging.ERROR)
    mon = gradtui.watch(
        setup.model,
        setup.optimizer,
        record=args.record,
        run=args.run or f"demo: {scenario.name}",
        lanes=setup.lanes,
        scheduler=setup.scheduler,
        **options,
    )
    setup.use_monitor_lanes(mon.lane)
    period = 1.0 / args.speed if args.speed > 0 else 0.0
    next_at = time.perf_counter()
    parent = _viewer_pid()
    with mon:
        for _ in range(steps):
            if os.getppid() != parent:
                # The viewer that started us is gone (its pane closed, it was killed):
                # nobody is watching, so stop rather than train unseen.
                raise KeyboardInterrupt
            setup.train_step(mon)
            if period:
                next_at += period
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.perf_counter()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
