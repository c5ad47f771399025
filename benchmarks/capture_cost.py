"""What a deep capture costs per benchmark model (`gradtui.probe.capture`): the step time healthy
(the defaults), healthy with `capture=False` (nothing armed by trouble), and with a capture armed; the root
hooks' own time; and one re-run of a step. Blocks alternate, medians are reported; the box is
shared and noisy: read differences under ~5% as noise.

    python benchmarks/capture_cost.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from overhead import DEFAULT_MODELS, MODELS, make_opt
from torch import nn

import gradtui


def _step(
    model: nn.Module, opt: torch.optim.Optimizer, mon: gradtui.Monitor, batch: tuple[torch.Tensor, torch.Tensor]
) -> float:
    x, y = batch
    t0 = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    mon.step(loss)
    opt.step()
    return time.perf_counter() - t0


def _block(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    mon: gradtui.Monitor,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
) -> float:
    return statistics.median(_step(model, opt, mon, batch) for _ in range(steps))


def rerun_time(
    model: nn.Module, opt: torch.optim.Optimizer, mon: gradtui.Monitor, batch: tuple[torch.Tensor, torch.Tensor]
) -> float:
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t0 = time.perf_counter()
    mon._capture.rerun(mon.step_count, 0.0)
    took = time.perf_counter() - t0
    mon.step(loss)
    opt.step()
    return took


def hook_time(repeats: int = 2000) -> float:
    """The root hooks' time per step on a model whose own step costs next to nothing."""
    model = nn.Linear(4, 4)
    x = torch.randn(2, 4)

    def loop() -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x).sum().backward()
        return (time.perf_counter() - t0) / repeats

    bare = min(loop() for _ in range(3))
    from gradtui.probe.capture import Kept

    kept = Kept(model)
    hooked = min(loop() for _ in range(3))
    kept.remove()
    return hooked - bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"root hooks (kept inputs, output gradient): {hook_time() * 1e6:.1f} us a step")
    print("| model | healthy (ms) | capture=False (ms) | capture armed (ms) | capture / healthy | one re-run (ms) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        runs = {}
        for label, capture in (("healthy", True), ("off", False)):
            torch.manual_seed(0)
            model, batch = MODELS[name]()
            opt = make_opt("adamw", model)
            mon = gradtui.watch(model, opt, serve=False, capture=capture, detectors=False)
            for _ in range(10):
                _step(model, opt, mon, batch)
            runs[label] = (model, opt, mon, batch)
        times: dict[str, list[float]] = {"healthy": [], "off": [], "armed": []}
        for _ in range(args.rounds):
            times["healthy"].append(_block(*runs["healthy"], args.steps))
            times["off"].append(_block(*runs["off"], args.steps))
            model, opt, mon, batch = runs["healthy"]
            mon.capture(steps=args.steps + 1)
            _step(model, opt, mon, batch)  # armed at this step's boundary
            times["armed"].append(_block(model, opt, mon, batch, args.steps))
        rerun = statistics.median(rerun_time(*runs["healthy"]) for _ in range(3))
        for run in runs.values():
            run[2].close()
        h, o, a = (statistics.median(times[k]) * 1e3 for k in ("healthy", "off", "armed"))
        print(f"| {name} | {h:.2f} | {o:.2f} | {a:.2f} | {a / h:.2f}x | {rerun * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
