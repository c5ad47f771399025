"""What the framework callbacks share: one `watch` per training run of a callback, numbered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradtui.wire.record import is_record_folder


def run_kwargs(watch_kwargs: dict[str, Any], run: int) -> dict[str, Any]:
    """The `watch` keyword arguments for a callback's `run`-th training run (1 for the first).

    The first run gets them as given. From the second on (`trainer.train()` or `trainer.fit()`
    again, with the same callback) the record file and the run name get a number, `run.gtr`
    then `run-2.gtr`, `run-3.gtr`, ...: without `overwrite=True` the first such name that is
    free, so a later run never replaces an earlier run's record. A record folder
    (`gradtui.wire.record.is_record_folder`) is passed on as it is: its files are named there.
    """
    kw = dict(watch_kwargs)
    if run <= 1:
        return kw
    record = kw.get("record")
    if record is not None and not is_record_folder(record):
        kw["record"] = _numbered_path(Path(record), run, bool(kw.get("overwrite", False)))
    name = kw.get("run")
    if isinstance(name, str) and name:
        kw["run"] = f"{name}-{run}"
    return kw


def _numbered_path(path: Path, run: int, overwrite: bool) -> Path:
    n = run
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if overwrite or not candidate.exists():
            return candidate
        n += 1
