"""The checks a deep capture (or a re-run) arms on a model: hooks that keep, on the device, each
watched layer's activation sums and the first non-finite value going forward and going back
(`gradtui.probe.capture` arms them; `origin_of` names the module they found)."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from gradtui.model.events import NonFiniteOrigin
from gradtui.probe.backward import unhook
from gradtui.probe.dist import local
from gradtui.probe.layers import Layer, layer_name

_NONE = math.inf
"""A flag's call number while no call was found non-finite."""
FLAGS = 7
"""Length of `Checks.flags`."""


class Site(NamedTuple):
    """A place a check ran: a module's qualified name ("" for the loss) and its watched layer."""

    module: str
    layer: int | None


def floats(tree: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def finite_abs_max(t: torch.Tensor) -> torch.Tensor:
    """max |t| over its finite values, float64, on its device (0 when none)."""
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=t.device)
    return torch.nan_to_num(t.detach().abs(), 0.0, 0.0, 0.0).amax().to(torch.float64)


class Checks:
    """Hooks on a model for one capture (or one re-run): finiteness checks on every module, and
    (`stats`) the watched layers' activation sums. Results stay on the device until `take`."""

    def __init__(self, model: nn.Module, layers: Sequence[Layer], device: torch.device, stats: bool) -> None:
        self.device = device
        self._stats = stats
        n = len(layers)
        watched = {id(layer.module): i for i, layer in enumerate(layers)}
        self._modules: list[nn.Module] = []
        self._sites: list[Site] = []
        self._leaf: list[bool] = []
        self._layer_of: list[int | None] = []
        for name, module in model.named_modules():
            self._modules.append(module)
            layer = watched.get(id(module))
            self._sites.append(Site(layer_name(name) if name else type(module).__name__, layer))
            self._leaf.append(next(iter(module.children()), None) is None)
            self._layer_of.append(layer)
        self._root = model
        self._params = [(p, watched[id(layer.module)]) for layer in layers for p in layer.params if p.requires_grad]
        self._slot_of_layer = {watched[id(m)]: j for j, m in enumerate(self._modules) if id(m) in watched}
        f64 = torch.float64
        self.sums = torch.zeros(n, 6, dtype=f64, device=device)
        """Per layer: finite values, sum a, a^2, a^3, a^4 over them, non-finite values."""
        self.amax = torch.zeros(n, dtype=f64, device=device)
        self.flags = torch.full((FLAGS,), _NONE, dtype=f64, device=device)
        """First non-finite forward (call, kind 1 NaN / 2 Inf, input max), then the same backward,
        then max |y| over the model's output (the loss's input)."""
        self.flags[6] = math.nan
        self._gmax = torch.full((len(self._modules),), math.nan, dtype=f64, device=device)
        self.forward: list[Site] = []
        self.backward: list[Site] = []
        self._handles: list[Any] = []
        self._param_hooks: list[tuple[nn.Parameter, RemovableHandle]] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        for j, module in enumerate(self._modules):
            self._handles.append(module.register_forward_hook(partial(self._forward, j)))
        for p, layer in self._params:
            self._param_hooks.append((p, p.register_hook(partial(self._param_grad, self._slot_of_layer[layer]))))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for p, hook in self._param_hooks:
            unhook(p, hook)
        self._handles.clear()
        self._param_hooks.clear()

    def reset(self) -> None:
        self.sums.zero_()
        self.amax.zero_()
        self.flags.fill_(_NONE)
        self.flags[6] = math.nan
        self._gmax.fill_(math.nan)
        self.forward, self.backward = [], []

    # ------------------------------------------------------------ the hooks

    def _forward(self, slot: int, module: nn.Module, args: Any, output: Any) -> None:
        outs = floats(output)
        if not outs:
            return
        bad: torch.Tensor | None = None
        nan: torch.Tensor | None = None
        first_finite: torch.Tensor | None = None
        for k, t in enumerate(outs):
            t = local(t.detach())
            if t.numel() == 0:
                continue
            finite = torch.isfinite(t).sum()
            if k == 0:
                first_finite = finite
            b, n = finite < t.numel(), torch.isnan(t).any()
            bad, nan = (b, n) if bad is None or nan is None else (bad | b, nan | n)
        if bad is None or nan is None:
            return
        ins = [finite_abs_max(local(a)) for a in floats(args)]
        in_max = torch.stack(ins).amax() if ins else torch.full((), math.nan, dtype=torch.float64, device=bad.device)
        with self._lock:
            call = len(self.forward)
            self.forward.append(self._sites[slot])
        self._flag(0, call, bad, nan, in_max)
        layer = self._layer_of[slot]
        if self._stats and layer is not None and first_finite is not None:
            self._moments(layer, local(outs[0].detach()), first_finite)
        if module is self._root:
            self.flags[6] = torch.stack([finite_abs_max(local(o)) for o in outs]).amax().to(self.device)
        if torch.is_grad_enabled():
            # What backward passes back: checked where it leaves each leaf module, and where the loss
            # hands it to the model (its output).
            if self._leaf[slot]:
                for a in floats(args):
                    if a.requires_grad:
                        a.register_hook(partial(self._passed_back, slot))
                for o in outs:
                    if o.requires_grad:
                        o.register_hook(partial(self._arrives, slot))
            if module is self._root:
                for o in outs:
                    if o.requires_grad:
                        o.register_hook(self._loss_grad)

    def _moments(self, layer: int, x: torch.Tensor, finite: torch.Tensor) -> None:
        y = torch.nan_to_num(x.to(torch.float64), 0.0, 0.0, 0.0)
        y2 = y * y
        f = finite.to(torch.float64)
        row = torch.stack([f, y.sum(), y2.sum(), (y2 * y).sum(), (y2 * y2).sum(), x.numel() - f])
        self.sums[layer].add_(row.to(self.device))
        self.amax[layer] = torch.maximum(self.amax[layer], y.abs().amax().to(self.device))

    def _flag(self, at: int, call: int, bad: torch.Tensor, nan: torch.Tensor, in_max: torch.Tensor) -> None:
        flags = self.flags[at : at + 3]
        first = bad.to(self.device) & torch.isinf(flags[0])
        kind = torch.where(nan.to(self.device), 1.0, 2.0).to(torch.float64)
        new = torch.stack([torch.full_like(kind, float(call)), kind, in_max.to(self.device, torch.float64)])
        flags.copy_(torch.where(first, new, flags))

    def _grad_flag(self, site: Site, slot: int | None, grad: torch.Tensor) -> None:
        g = local(grad.detach())
        if g.numel() == 0 or not g.is_floating_point():
            return
        bad = torch.isfinite(g).sum() < g.numel()
        nan = torch.isnan(g).any()
        in_max = (
            self._gmax[slot] if slot is not None else torch.full((), math.nan, dtype=torch.float64, device=self.device)
        )
        with self._lock:
            call = len(self.backward)
            self.backward.append(site)
        self._flag(3, call, bad, nan, in_max)

    def _passed_back(self, slot: int, grad: torch.Tensor) -> None:
        self._grad_flag(self._sites[slot], slot, grad)

    def _param_grad(self, slot: int, grad: torch.Tensor) -> None:
        self._grad_flag(self._sites[slot], slot, grad)

    def _arrives(self, slot: int, grad: torch.Tensor) -> None:
        self._gmax[slot] = finite_abs_max(local(grad)).to(self.device)

    def _loss_grad(self, grad: torch.Tensor) -> None:
        self._grad_flag(Site("", None), None, grad)


def decode_flags(
    flags: np.ndarray, forward: Sequence[Site], backward: Sequence[Site]
) -> list[tuple[str, Site, str, float]]:
    """(direction, site, kind, input max) found by a `Checks.flags` vector (forward first)."""
    out = []
    for at, direction, sites in ((0, "forward", forward), (3, "backward", backward)):
        call = flags[at]
        if math.isfinite(call) and 0 <= int(call) < len(sites):
            out.append((direction, sites[int(call)], "nan" if flags[at + 1] == 1.0 else "inf", float(flags[at + 2])))
    return out


class FirstNonFiniteOp(TorchDispatchMode):
    """Names the first operator whose output holds a NaN or Inf ("aten::exp"), forward or backward.
    Armed for a re-run only: it reads every op's output on the host (a re-run is CPU's), which
    costs a check per op for that one step and nothing at any other."""

    def __init__(self) -> None:
        super().__init__()
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # The op that made a NaN or Inf: finite inputs, a non-finite output (not one that passed a
        # non-finite value on, nor the checks' own "none yet" markers, which are Inf).
        if not self.op and _any_nonfinite(out):
            ins = _floats(args, kwargs)
            if ins and not _any_nonfinite(ins):
                self.op = f"aten::{func.overloadpacket.__name__}"
        return out


def _floats(*trees: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(trees) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _any_nonfinite(tree: Any) -> bool:
    return any(not bool(torch.isfinite(t).all()) for t in _floats(tree))


def origin_of(
    step: int,
    flags: np.ndarray,
    forward: Sequence[Site],
    backward: Sequence[Site],
    loss: float,
    how: str,
    rank: int | None,
) -> NonFiniteOrigin | None:
    """The first non-finite module of a step from its flags: a module's forward output first, then
    the loss itself, then a gradient passed back."""
    found = {
        direction: (site, kind, in_max) for direction, site, kind, in_max in decode_flags(flags, forward, backward)
    }
    if "forward" in found:
        site, kind, in_max = found["forward"]
        return NonFiniteOrigin(step, site.module, site.layer, "forward", kind, in_max, rank=rank, how=how)
    if not math.isfinite(loss):
        kind = "nan" if math.isnan(loss) else "inf"
        return NonFiniteOrigin(step, "", None, "forward", kind, float(flags[6]), rank=rank, how=how)
    if "backward" in found:
        site, kind, in_max = found["backward"]
        return NonFiniteOrigin(step, site.module, site.layer, "backward", kind, in_max, rank=rank, how=how)
    return None


__all__ = ["FLAGS", "Checks", "FirstNonFiniteOp", "Site", "decode_flags", "finite_abs_max", "floats", "origin_of"]
