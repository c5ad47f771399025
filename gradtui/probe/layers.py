"""What the probe watches: layers (modules that own parameters directly), their names
without wrapper segments, and the optimizer inside wrappers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from gradtui.model.events import LayerInfo
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
    so that it is counted once, as `model.parameters()` does. Parameters on the `meta`
    device (weights offloaded elsewhere, as accelerate leaves them) hold no values and are
    left out; a module with only those is not a layer.
    """
    seen: set[int] = set()
    layers: list[Layer] = []
    for name, module in model.named_modules():
        own = []
        for p in module._parameters.values():
            if p is not None and not p.is_meta and id(p) not in seen:
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
    """The values of a gradient: the local shard of a DTensor, the values of a sparse one; detached
    where backward made it with `create_graph=True` (the probe's reductions stay out of that graph);
    real (`real_values`)."""
    g = local(g)
    if g.requires_grad:
        g = g.detach()
    return real_values(g.coalesce()._values() if g.is_sparse else g)


def real_values(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its real and imaginary parts (a real view of its memory: its L2 norm is
    the complex one, and clipping it in place clips the tensor); any other tensor as it is."""
    return torch.view_as_real(t) if t.is_complex() else t


def value_count(t: torch.Tensor) -> int:
    """The values `real_values` makes of `t`: a complex one's parts count apart."""
    return t.numel() * (2 if t.is_complex() else 1)


def by_device(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Tensors grouped by (device, dtype), as the fused `torch._foreach_*` ops need them."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def optimizer_list(optimizer: Any) -> list[torch.optim.Optimizer]:
    """`watch`'s optimizer argument as a list: None, one optimizer, or a sequence of them."""
    if optimizer is None:
        return []
    many = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    out: list[torch.optim.Optimizer] = []
    for i, opt in enumerate(many):
        if not isinstance(opt, torch.optim.Optimizer):
            where = f"optimizer {i}" if isinstance(optimizer, (list, tuple)) else "optimizer"
            raise TypeError(f"{where} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        inner = unwrap_optimizer(opt)
        assert inner is not None
        if any(inner is o for o in out):
            raise ValueError(f"optimizer {i} is given twice")
        out.append(inner)
    return out


ACTIVATIONS = frozenset(
    {"Sigmoid", "Tanh", "ReLU", "LeakyReLU", "GELU", "SiLU", "ELU", "Softsign", "Hardtanh", "LogSigmoid", "Mish"}
)
"""Activation modules the report's advice knows (saturating ones make gradients vanish)."""


def activations(model: nn.Module) -> tuple[str, ...]:
    """The activation modules' class names in `model`, each once, in order of first use."""
    seen: dict[str, None] = {}
    for m in model.modules():
        if type(m).__name__ in ACTIVATIONS:
            seen.setdefault(type(m).__name__, None)
    return tuple(seen)


MAX_MODULE_KINDS = 256
"""Module classes `RunStart.modules` names at most (a record carries the architecture, not a catalogue)."""


def module_kinds(model: nn.Module) -> tuple[str, ...]:
    """The class name of every kind of module in `model`, each once, in order of first use."""
    seen: dict[str, None] = {}
    for m in model.modules():
        seen.setdefault(type(m).__name__, None)
        if len(seen) >= MAX_MODULE_KINDS:
            break
    return tuple(seen)


class Fans(NamedTuple):
    fan_in: int
    fan_out: int


def fans(layer: Layer) -> Fans:
    """fan_in and fan_out of a layer's weight as torch.nn.init computes them; (0, 0) without one."""
    weight = getattr(layer.module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return Fans(0, 0)
    field = math.prod(weight.shape[2:])  # the shape only: a sharded weight is not indexed
    return Fans(int(weight.shape[1] * field), int(weight.shape[0] * field))


def layer_infos(layers: Iterable[Layer]) -> tuple[LayerInfo, ...]:
    """What `RunStart` says of each layer."""
    return tuple(LayerInfo(x.name, type(x.module).__name__, sum(p.numel() for p in x.params)) for x in layers)
