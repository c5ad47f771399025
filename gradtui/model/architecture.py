"""Which family of network a run trains, read from the module classes `RunStart` names: the
report's cures depend on it (warm-up and init scale for a transformer, He init and BatchNorm
for a deep plain stack, a gated cell for a recurrent net)."""

from __future__ import annotations

from collections.abc import Iterable

from gradtui.model.events import RunStart

NORMS = ("LayerNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "SyncBatchNorm")
"""Normalisation modules (a subclass named so counts: nanoGPT's own LayerNorm)."""
_RECURRENT = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
_CONV = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
_ATTENTION_NAMES = ("attn", "attention")
"""Name segments of attention modules (nanoGPT's `attn`, HF's `self_attn`, `attention`)."""


def module_kinds(start: RunStart) -> tuple[str, ...]:
    """Every module class the run's model holds (`RunStart.modules`; in older records, the
    layers' classes and the activations, which is what they carry)."""
    if start.modules:
        return start.modules
    return tuple(dict.fromkeys([*(layer.kind for layer in start.layers), *start.activations]))


def family(kinds: Iterable[str], layer_names: Iterable[str]) -> str:
    """ "transformer" (attention), "recurrent", "convnet" or "mlp": the family whose cures apply."""
    kinds = list(kinds)
    attention = any("Attention" in k or k.startswith("Transformer") for k in kinds) or any(
        seg.endswith(_ATTENTION_NAMES) for name in layer_names for seg in name.lower().split(".")
    )
    if attention:
        return "transformer"
    if any(k in _RECURRENT for k in kinds):
        return "recurrent"
    if any(k in _CONV for k in kinds):
        return "convnet"
    return "mlp"


def run_family(start: RunStart) -> str:
    """The family of the run's model (see `family`)."""
    return family(module_kinds(start), (layer.name for layer in start.layers))


def norms_in(start: RunStart) -> list[str]:
    """The normalisation modules the model already uses, each once."""
    return [k for k in module_kinds(start) if k in NORMS or k.endswith("Norm")]
