"""The ledger of bad batches: the identifiers a loop passes as `mon.step(loss, batch=...)`,
kept for the last steps so that a step found bad (a loss spike, a skip, a rollback) names
the samples it trained on (`BadBatch`).

At the step, the ledger copies a bounded head of them and never keeps a reference: a large
id tensor would stay alive for `LEDGER_STEPS` steps, a loop that reuses one index buffer would
have it name another step's ids by the time a spike is judged (a step or two late, on the
publishing thread), and a 2-D tensor made text whole took a second and megabytes. A tensor's
first ids are copied on its own device (no sync) and read only when noted; an int stays an int
(on the record and in `gradtui.load` too), a str a str (within `MAX_TEXT` characters), and
anything else becomes bounded text at once (`gradtui.model.guard.batch_text`). Nothing
passed can raise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gradtui.model.events import BadBatch, Event
from gradtui.model.guard import MAX_IDS, IdsHead, array_head, batch_text, ids_text, unreadable

LEDGER_STEPS = 64
"""Steps whose batch identifiers are kept for the ledger (a spike is judged a step or two late)."""
_WIRE_INTS = (-(2**63), 2**64 - 1)
"""The integers the record carries as integers (msgpack's); an id outside them goes as text."""


class TensorHead(NamedTuple):
    """A tensor's first identifiers, copied at its step (on its device: no sync), read when noted."""

    head: torch.Tensor
    total: int
    shape: tuple[int, ...]
    dtype: str


def tensor_head(ids: torch.Tensor) -> TensorHead | str:
    """The first `MAX_IDS` values of `ids` copied (only the rows they lie in are read), or, for a
    tensor with no values to read here (meta, sparse, a subclass), its description."""
    t = ids.detach()
    shape, dtype = tuple(t.shape), str(t.dtype).removeprefix("torch.")
    if t.is_meta or t.layout != torch.strided or type(t) not in (torch.Tensor, nn.Parameter):
        kind = "meta" if t.is_meta else type(t).__name__ if t.layout == torch.strided else str(t.layout)[6:]
        return f"[{'x'.join(str(n) for n in shape) or 'scalar'} {dtype}] ({kind} tensor: its ids are not read)"
    if t.dim() <= 1:
        return TensorHead(t.reshape(-1)[:MAX_IDS].clone(), t.numel(), shape, dtype)
    row = max(1, t[0].numel()) if t.shape[0] else 1
    rows = -(-MAX_IDS // row)
    return TensorHead(t[:rows].reshape(-1)[:MAX_IDS].clone(), t.numel(), shape, dtype)


def capture(ids: object) -> TensorHead | int | str:
    """`batch=` in a bounded form, taken at its step: an int (a NumPy integer too) or a str as
    given, a copy of a tensor's first ids, else text. Holds no reference to what the loop passed
    (a reused index buffer, a large tensor)."""
    try:
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            value = int(ids)
            if _WIRE_INTS[0] <= value <= _WIRE_INTS[1]:
                return value
        if isinstance(ids, torch.Tensor):
            return tensor_head(ids)
        if isinstance(ids, np.ndarray):
            return ids_text(array_head(ids))
        return batch_text(ids)
    except Exception as exc:  # a tensor subclass or object that refuses to be read
        return unreadable(ids, exc)


class Ledger:
    """The batch identifiers of the last steps (`mon.step(loss, batch=...)`), for `BadBatch` events."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._ids: deque[tuple[int, TensorHead | int | str]] = deque(maxlen=LEDGER_STEPS)
        self._emit = emit

    def keep(self, step: int, ids: object) -> None:
        if ids is not None:
            self._ids.append((step, capture(ids)))

    def note(self, step: int, why: str) -> None:
        """Put the batch of `step` (if it had identifiers) on the record as a bad one."""
        for at, kept in list(self._ids):
            if at == step:
                self._emit(BadBatch(step, why, _said(kept)))
                return


def _said(kept: TensorHead | int | str) -> int | str:
    if isinstance(kept, (int, str)):
        return kept
    try:
        return ids_text(IdsHead(kept.head.tolist(), kept.total, kept.shape, kept.dtype))
    except Exception as exc:
        return unreadable(kept.head, exc)
