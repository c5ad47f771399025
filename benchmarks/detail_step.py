"""What a detail step costs the loop: `mon.step` and the optimizer step that follows it, on
detail steps and on the others, at `every=1`.

A detail step (every `detail_every`-th sampled step, 50 by default) adds the histograms of
log2|g|, the zero fraction, max and mean |g|, the weight norms and the update ratio (a snapshot
of the weights at `mon.step`, measured again in the optimizer's post-step hook). Here every
10th step is one, so that a short run holds many; it prints the median of each kind of step,
in ms, and the extra time of a detail step over an ordinary one (the two phases together).
Run it against an older checkout with `PYTHONPATH=that/checkout` to compare.

    .venv/bin/python benchmarks/detail_step.py
    .venv/bin/python benchmarks/detail_step.py --models "mlp 12x512 b256" --steps 600
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import DEFAULT_MODELS, MODELS, make_opt  # noqa: E402

import gradtui  # noqa: E402

DETAIL_EVERY = 10
WARM = 20
"""Steps left out at the start (allocation, caches)."""


def run(name: str, steps: int, tmp: Path) -> tuple[float, float, float, float]:
    """Medians in seconds: mon.step on ordinary steps and on detail steps, then the optimizer step after each."""
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    opt = make_opt("adamw", model)
    loss_fn = nn.CrossEntropyLoss()
    mon = gradtui.watch(model, opt, record=tmp / "detail.gtr", overwrite=True, every=1, detail_every=DETAIL_EVERY)
    probe: dict[bool, list[float]] = {False: [], True: []}
    after: dict[bool, list[float]] = {False: [], True: []}
    for step in range(steps + WARM):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        mon.step(loss)
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if step >= WARM:
            detail = step % DETAIL_EVERY == 0  # the first sampled step is a detail step
            probe[detail].append(t1 - t0)
            after[detail].append(t2 - t1)
    mon.close()
    med = statistics.median
    return med(probe[False]), med(probe[True]), med(after[False]), med(after[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, AdamW, every=1, a detail step in {DETAIL_EVERY}")
    print("| model | mon.step ms | detail mon.step ms | opt.step ms | opt.step after detail ms | detail extra ms |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            plain, detail, opt_plain, opt_detail = run(name, args.steps, Path(tmp))
            extra = (detail - plain) + (opt_detail - opt_plain)
            cells = [plain, detail, opt_plain, opt_detail, extra]
            print(f"| {name} | " + " | ".join(f"{v * 1e3:.2f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
