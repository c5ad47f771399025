"""gradtui: a live terminal monitor of gradient health for PyTorch training runs.

The house, by role (imports point one way; `tests/test_import_hygiene.py` checks it):
`model` (events, the command rule, store, detectors, report; NumPy only) <- `wire`
(frames, records, queues, environment names, run entries) <- `probe` (the training
side, torch) and `sources` (the viewer's event sources) <- `ui` (the Textual viewer).
`demo` is the guided tour; `cli` ties them together.

Importing this package imports neither torch nor textual: `watch` loads the probe
(and torch) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradtui.model.commands import Release, Rollback, SetClip, SetLR, SetPaused
from gradtui.model.guard import Guard

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gradtui.probe.monitor import Monitor
    from gradtui.probe.watch import watch
    from gradtui.wire.load import RunData, load

__all__ = [
    "Guard",
    "Monitor",
    "Release",
    "Rollback",
    "RunData",
    "SetClip",
    "SetLR",
    "SetPaused",
    "__version__",
    "load",
    "watch",
]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from gradtui.probe.monitor import Monitor

        return Monitor
    if name == "watch":
        from gradtui.probe.watch import watch

        return watch
    if name in ("load", "RunData"):
        from gradtui.wire import load as loader

        return getattr(loader, name)
    raise AttributeError(f"module 'gradtui' has no attribute {name!r}")
