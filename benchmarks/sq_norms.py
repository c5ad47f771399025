"""Squared gradient norms on CPU: a BLAS dot per tensor vs the probe's size-aware split.

The split (`gradtui.probe.stats.cpu_sq_norms`) sends tensors under `SMALL_NUMEL` values
through one `torch._foreach_norm` call and keeps a dot for the larger ones. Both run side
by side in alternating rounds on the same gradients; prints the median time per call and
the largest relative error of each against a float64 reference, then the per-tensor cost
of each way by tensor size (where the threshold comes from).

    .venv/bin/python benchmarks/sq_norms.py
    .venv/bin/python benchmarks/sq_norms.py --reps 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from gradtui.probe.stats import SMALL_NUMEL, cpu_sq_norms

Way = Callable[[Sequence[torch.Tensor]], np.ndarray]


def dot_each(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """What the probe did before the split: one dot per tensor."""
    return np.array([float(torch.dot(t.reshape(-1), t.reshape(-1))) for t in tensors], np.float64)


def foreach_all(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    norms = torch.stack(torch._foreach_norm(list(tensors))).to(torch.float64).numpy()
    out: np.ndarray = norms * norms
    return out


WAYS: dict[str, Way] = {"dot each": dot_each, "split": cpu_sq_norms}


def mlp_grads(depth: int, width: int, batch: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters() if p.grad is not None]


def medians(ways: dict[str, Way], tensors: Sequence[torch.Tensor], reps: int, rounds: int = 10) -> dict[str, float]:
    """Median seconds per call of each way, in alternating rounds (drift hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for fn in ways.values():
        for _ in range(20):
            fn(tensors)
    for _ in range(rounds):
        for name, fn in ways.items():
            for _ in range(max(1, reps // rounds)):
                t0 = time.perf_counter()
                fn(tensors)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rel_error(got: np.ndarray, tensors: Sequence[torch.Tensor]) -> float:
    ref = np.array([float(t.double().pow(2).sum()) for t in tensors])
    # Deep layers' gradients underflow when squared in float32 in every way; compare where it is representable.
    keep = ref > 1e-30
    return float(np.max(np.abs(got[keep] - ref[keep]) / ref[keep]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=1000, help="calls per way and model")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, SMALL_NUMEL {SMALL_NUMEL}")
    models = {"mlp 50x128 b128": (50, 128, 128), "mlp 12x512 b256": (12, 512, 256)}
    print(f"\n{'model':16s} {'tensors':>7s} {'values':>9s}  " + "  ".join(f"{w + ' ms':>11s}" for w in WAYS)
          + "  " + "  ".join(f"{w + ' err':>12s}" for w in WAYS))
    for name, dims in models.items():
        grads = mlp_grads(*dims)
        t = medians(WAYS, grads, args.reps)
        errs = [rel_error(fn(grads), grads) for fn in WAYS.values()]
        print(f"{name:16s} {len(grads):7d} {sum(g.numel() for g in grads):9d}  "
              + "  ".join(f"{t[w] * 1e3:11.4f}" for w in WAYS) + "  " + "  ".join(f"{e:12.2e}" for e in errs))
    print(f"\n{'shape':>12s} {'values':>8s}  {'dot us/tensor':>14s}  {'foreach us/tensor':>18s}")
    shapes: list[tuple[int, ...]] = [(128,), (128, 128), (128, 256), (255, 256), (256, 256), (256, 512), (512, 512)]
    for shape in shapes:
        tensors = [torch.randn(*shape) for _ in range(16)]
        t = medians({"dot": dot_each, "foreach": foreach_all}, tensors, max(100, args.reps // 4))
        print(f"{'x'.join(map(str, shape)):>12s} {tensors[0].numel():8d}  {t['dot'] / 16 * 1e6:14.2f}  "
              f"{t['foreach'] / 16 * 1e6:18.2f}")


if __name__ == "__main__":
    main()
