"""gradtui: a live terminal monitor of gradient health for PyTorch training runs.

Importing this package imports neither torch nor textual: `watch` loads the probe
(and torch) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gradtui.training.probe import Monitor, watch

__all__ = ["Monitor", "__version__", "watch"]


def __getattr__(name: str) -> Any:
    if name in ("watch", "Monitor"):
        from gradtui.training import probe

        return getattr(probe, name)
    raise AttributeError(f"module 'gradtui' has no attribute {name!r}")
