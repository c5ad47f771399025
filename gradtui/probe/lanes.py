"""Lanes: extra rows for the gradient that reaches activations (an RNN's hidden state at
time step t), summed on the device by tensor hooks during backward."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtui.probe.dist import local


def lane_names(lanes: Sequence[str] | int) -> tuple[str, ...]:
    """Lane names from `watch(lanes=...)`: a count (lane0, lane1, ...) or unique names."""
    if isinstance(lanes, bool):
        raise TypeError("lanes must be a number of lanes or a sequence of names")
    if isinstance(lanes, int):
        if lanes < 0:
            raise ValueError(f"lanes must not be negative, got {lanes}")
        return tuple(f"lane{i}" for i in range(lanes))
    names = tuple(str(x) for x in lanes)
    if len(set(names)) != len(names):
        raise ValueError("lane names must be unique")
    return names


class Lanes:
    """Squared norms of the gradients reaching each lane in the current backward."""

    def __init__(self, names: tuple[str, ...], device: torch.device, dtype: torch.dtype) -> None:
        self.names = names
        self._sq = torch.zeros(len(names), dtype=dtype, device=device)
        self._seen = torch.zeros(len(names), dtype=dtype, device=device)

    def __bool__(self) -> bool:
        return bool(self.names)

    def watch(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """Add dL/d`tensor` of the coming backward to lane `index`; returns `tensor` unchanged."""
        if not 0 <= index < len(self.names):
            raise IndexError(f"lane {index} does not exist: watch(lanes=...) declared {len(self.names)}")
        if tensor.requires_grad:
            sq, seen = self._sq, self._seen

            def hook(grad: torch.Tensor) -> None:
                g = local(grad).detach()
                sq[index] += g.to(sq.dtype).pow(2).sum().to(sq.device)
                seen[index] = 1.0

            tensor.register_hook(hook)
        return tensor

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (squared norms, seen flags), and start the next step from zero."""
        out = self._sq.clone(), self._seen.clone()
        self._sq.zero_()
        self._seen.zero_()
        return out
