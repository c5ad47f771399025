"""Where gradtui's training-step overhead goes: each phase of a step (forward, zero_grad,
backward, `mon.step`, the optimizer step) in a watched copy of a model against a plain copy.

Copies of one model train on the same batch in one process, in rotating rounds of `--steps`
steps each: two plain copies, one watched at the defaults, one at `every=1`, and one measured
by Lightning's method. For each other copy and each phase it prints the median over rounds of
(its mean phase time in the round) - (the first plain copy's in the same round), in
microseconds. The second plain copy is printed the same way: what two identical unwatched
copies differ by, the noise floor of the other rows. A last copy runs Lightning's `grad_norm`
(`benchmarks/overhead.py`'s anchor) where `mon.step` would be: its row says where the `every=1`
copy's cost differs from that method's. `benchmarks/overhead.py` gives the whole step's ratios;
this says which part of the step moved (work on the probe's publishing thread shows up in
backward, where that thread runs; the optimizer's post-step hook, in the optimizer step).

    .venv/bin/python benchmarks/phases.py
    .venv/bin/python benchmarks/phases.py --models "mlp 12x512 b256" --rounds 60
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import DEFAULT_MODELS, MODELS, lightning_grad_norm, make_opt  # noqa: E402

import gradtui  # noqa: E402

PHASES = ("forward", "zero_grad", "backward", "mon.step", "opt.step", "total")
COPIES: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "plain (2nd copy)": None,
    "gradtui": {},
    "gradtui every=1": {"every": 1},
    "lightning": None,
}
LIGHTNING = "lightning"
"""The anchor `gradtui every=1` is held to: Lightning's `grad_norm` where `mon.step` would be."""


def run(name: str, rounds: int, steps: int, tmp: Path) -> dict[str, dict[str, float]]:
    """Per copy (the first plain one left out), the median per-round difference of each phase, in us."""
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    loss_fn = nn.CrossEntropyLoss()
    copies = []
    for label, options in COPIES.items():
        m = copy.deepcopy(model)
        opt = make_opt("adamw", m)
        mon = None
        if options is not None:
            mon = gradtui.watch(m, opt, record=tmp / f"{len(label)}.gtr", overwrite=True, **options)
        copies.append((label, m, opt, mon))
    diffs: dict[str, dict[str, list[float]]] = {label: {p: [] for p in PHASES} for label in COPIES}
    warm = 4  # rounds left out: caches, allocation, the budget's first choice of stride
    for r in range(rounds + warm):
        order = copies[r % len(copies) :] + copies[: r % len(copies)]
        means: dict[str, list[float]] = {}
        for label, m, opt, mon in order:
            acc = [0.0] * len(PHASES)
            for _ in range(steps):
                t0 = time.perf_counter()
                loss = loss_fn(m(x), y)
                t1 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                if mon is not None:
                    mon.step(loss)
                elif label == LIGHTNING:
                    lightning_grad_norm(m)
                t4 = time.perf_counter()
                opt.step()
                t5 = time.perf_counter()
                for i, d in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                    acc[i] += d / steps
            means[label] = acc
        if r >= warm:
            base = means["plain"]
            for label, acc in means.items():
                for i, phase in enumerate(PHASES):
                    diffs[label][phase].append((acc[i] - base[i]) * 1e6)
    for _, _, _, mon in copies:
        if mon is not None:
            mon.close()
    return {label: {p: statistics.median(v) for p, v in d.items()} for label, d in diffs.items() if label != "plain"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=36, help="rotating rounds per model")
    parser.add_argument("--steps", type=int, default=16, help="steps per copy per round")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, AdamW, "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    print("median per-round difference from the plain copy, us a step:")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"\n{name}")
            print(f"  {'copy':18s}" + "".join(f"{p:>10s}" for p in PHASES))
            for label, row in run(name, args.rounds, args.steps, Path(tmp)).items():
                print(f"  {label:18s}" + "".join(f"{row[p]:10.0f}" for p in PHASES), flush=True)


if __name__ == "__main__":
    main()
