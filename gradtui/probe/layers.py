"""What the probe watches: layers (modules that own parameters directly), their names
without wrapper segments, and the optimizer inside wrappers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from gradtui.probe.dist import local

_WRAPPERS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "module")
"""Name segments added by torch.compile, FSDP, checkpointing and DDP, left out of layer names."""


@dataclass
class Layer:
    name: str
    module: nn.Module
    params: list[nn.Parameter]


def layer_name(qualified: str) -> str:
    """A module's name without the segments that wrappers (DDP, FSDP, compile) add."""
    parts = [p for p in qualified.split(".") if p and p not in _WRAPPERS] if qualified else []
    return ".".join(parts)


def find_layers(model: nn.Module) -> list[Layer]:
    """Modules that own parameters directly, in `named_modules()` order.

    A parameter shared by several modules (tied weights) belongs to the first of them,
    so that it is counted once, as `model.parameters()` does.
    """
    seen: set[int] = set()
    layers: list[Layer] = []
    for name, module in model.named_modules():
        own = []
        for p in module._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                own.append(p)
        if own:
            layers.append(Layer(layer_name(name), module, own))
    return layers


def unwrap_optimizer(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """The optimizer inside wrappers (accelerate's AcceleratedOptimizer, ...) that subclass
    Optimizer without its hook machinery; their param groups are the inner ones."""
    while (
        optimizer is not None
        and not hasattr(optimizer, "_optimizer_step_pre_hooks")
        and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)
    ):
        optimizer = optimizer.optimizer  # type: ignore[attr-defined]
    return optimizer


def grad_values(g: torch.Tensor) -> torch.Tensor:
    """The values of a gradient: the local shard of a DTensor, the values of a sparse one."""
    g = local(g)
    return g.coalesce()._values() if g.is_sparse else g


def by_device(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped by (device, dtype), as the fused `torch._foreach_*` ops need them."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())
