"""Squared gradient norms on CPU, the ways side by side, where the probe takes them: right
after a backward pass.

- probe: `gradtui.probe.stats.cpu_sq_norms`, one `torch._foreach_norm` call over the tensors
  under `SMALL_NUMEL` values and a torch dot on each larger one;
- foreach: one `torch._foreach_norm` call over every tensor (the probe's pass over a whole
  unsampled step, `gradtui.probe.runwide.measure`);
- torch dot: a torch dot per tensor;
- numpy dot: a NumPy dot per tensor, on the tensor's own memory (a NumPy call costs less than
  a torch one, hot: the second table). Faster here on most models, yet a whole-step A/B in one
  process (copies of a model watched at `every=1`, one per way) showed no difference: whoever
  reads the gradients first after backward pays for their cache misses, and the optimizer
  reads them next;
- lightning: Lightning's `grad_norm` (a norm per parameter, their total through
  `torch.tensor(list)`): the whole cost of that anchor method, for scale.

Each model of `benchmarks/overhead.py` trains (AdamW), and after each backward pass one way,
in rotation, measures its gradients (cold in cache, as in a real step). Prints each way's
median time per step and its largest relative error against a float64 reference, then the
per-tensor cost of the fused call and of each dot by tensor size (hot, repeated calls: where
the probe's threshold comes from).

    .venv/bin/python benchmarks/sq_norms.py
    .venv/bin/python benchmarks/sq_norms.py --steps 200 --models "mlp 50x128 b128"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import DEFAULT_MODELS, MODELS, lightning_grad_norm, make_opt  # noqa: E402

from gradtui.probe.stats import SMALL_NUMEL, cpu_sq_norms  # noqa: E402

Way = Callable[[Sequence[torch.Tensor]], object]


def foreach(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    norms = torch.stack(torch._foreach_norm(list(tensors))).to(torch.float64).numpy()
    out: np.ndarray = norms * norms
    return out


def torch_dot(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    return np.array([float(torch.dot(t.reshape(-1), t.reshape(-1))) for t in tensors], np.float64)


def numpy_dot(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    return np.array([np.dot(v, v) for v in (t.numpy().reshape(-1) for t in tensors)], np.float64)


WAYS: dict[str, Way] = {"probe": cpu_sq_norms, "foreach": foreach, "torch dot": torch_dot, "numpy dot": numpy_dot}


def rel_error(got: np.ndarray, tensors: Sequence[torch.Tensor]) -> float:
    ref = np.array([float(t.double().pow(2).sum()) for t in tensors])
    # Deep layers' gradients underflow when squared in float32 in every way; compare where it is representable.
    keep = ref > 1e-30
    return float(np.max(np.abs(got[keep] - ref[keep]) / ref[keep]))


def gradients(name: str) -> list[torch.Tensor]:
    """The gradients of one backward pass of a model of `benchmarks/overhead.py`."""
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    nn.CrossEntropyLoss()(model(x), y).backward()
    return [p.grad for p in model.parameters() if p.grad is not None]


def in_loop(name: str, steps: int) -> tuple[dict[str, float], dict[str, float], int, int]:
    """Median seconds per measurement of each way (and of Lightning's method) right after backward,
    each way's largest relative error, and the model's gradient count and values."""
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    opt = make_opt("adamw", model)
    loss_fn = nn.CrossEntropyLoss()
    ways: dict[str, Callable[[Sequence[torch.Tensor]], object]] = {
        **WAYS,
        "lightning": lambda _: lightning_grad_norm(model),
    }
    times: dict[str, list[float]] = {w: [] for w in ways}
    order = list(ways)
    grads: list[torch.Tensor] = []
    for i in range(steps + 2 * len(order)):
        way = order[i % len(order)]
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        t0 = time.perf_counter()
        ways[way](grads)
        if i >= 2 * len(order):  # warm-up: allocations, the optimizer's state
            times[way].append(time.perf_counter() - t0)
        opt.step()
    errors = {w: rel_error(np.asarray(fn(grads), np.float64), grads) for w, fn in WAYS.items()}
    return {w: statistics.median(t) for w, t in times.items()}, errors, len(grads), sum(g.numel() for g in grads)


def hot(fn: Way, tensors: Sequence[torch.Tensor], reps: int) -> float:
    for _ in range(20):
        fn(tensors)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(tensors)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160, help="training steps per model (the ways take turns)")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, SMALL_NUMEL {SMALL_NUMEL}")
    names = [*WAYS, "lightning"]
    print(f"\n{'model':26s} {'tensors':>7s} {'values':>9s}  " + "  ".join(f"{w + ' ms':>12s}" for w in names)
          + "  " + "  ".join(f"{w + ' err':>13s}" for w in WAYS))
    for name in args.models:
        t, errs, count, values = in_loop(name, args.steps)
        print(f"{name:26s} {count:7d} {values:9d}  " + "  ".join(f"{t[w] * 1e3:12.3f}" for w in names)
              + "  " + "  ".join(f"{errs[w]:13.1e}" for w in WAYS), flush=True)
    hot_ways: dict[str, Way] = {"foreach": foreach, "torch dot": torch_dot, "numpy dot": numpy_dot}
    print(f"\n{'shape':>12s} {'values':>8s}  " + "  ".join(f"{w + ' us/tensor':>19s}" for w in hot_ways))
    shapes: list[tuple[int, ...]] = [(128,), (128, 128), (255, 256), (256, 256), (256, 512), (512, 512)]
    for shape in shapes:
        tensors = [torch.randn(*shape) for _ in range(16)]
        per = [hot(fn, tensors, 200) / 16 * 1e6 for fn in hot_ways.values()]
        print(f"{'x'.join(map(str, shape)):>12s} {tensors[0].numel():8d}  " + "  ".join(f"{t:19.2f}" for t in per))


if __name__ == "__main__":
    main()
