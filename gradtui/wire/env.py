"""Every environment variable gradtui reads or sets, in one place.

A viewer that starts a training process (`gradtui demo`, `gradtui run`) talks to the
`watch()` inside it only through these; users may set the serving ones by hand.
"""

from __future__ import annotations

import os

CONNECT_ENV = "GRADTUI_CONNECT"
"""Set by a viewer that starts a training process: `fd:N` names an inherited socket."""
VIEWER_PID_ENV = "GRADTUI_VIEWER_PID"
"""Set by a viewer for a child it starts, so that the child can tell when the viewer is gone."""
LOG_ENV = "GRADTUI_LOG"
"""Set by `gradtui run`: the file the script's output goes to, advertised in the run's sidecar."""
SERVE_ENV = "GRADTUI_SERVE"
"""`1` makes `watch()` serve a Unix socket unless told otherwise."""
LISTEN_ENV = "GRADTUI_LISTEN"
"""`HOST:PORT` makes `watch()` also listen on TCP."""
TOKEN_FILE_ENV = "GRADTUI_TOKEN_FILE"
"""Where the TCP token is read from (or written to, when the file does not exist)."""
TOKEN_ENV = "GRADTUI_TOKEN"
"""The TCP token a viewer presents when neither --token nor --token-file is given."""
DETECTORS_ENV = "GRADTUI_DETECTORS"
"""Detector thresholds as "key=value,key=value", set by `gradtui run/demo -D key=value`."""
BUDGET_ENV = "GRADTUI_BUDGET"
"""The probe's overhead budget when `watch()` is given neither `every` nor `budget`: a fraction, "1%" or "off"."""
RUNTIME_DIR_ENV = "GRADTUI_RUNTIME_DIR"
"""Overrides where live runs are kept (tests use it; so can a shared-home setup)."""

ALL: tuple[str, ...] = (
    CONNECT_ENV,
    VIEWER_PID_ENV,
    LOG_ENV,
    SERVE_ENV,
    LISTEN_ENV,
    TOKEN_FILE_ENV,
    TOKEN_ENV,
    DETECTORS_ENV,
    BUDGET_ENV,
    RUNTIME_DIR_ENV,
)


def get(name: str) -> str | None:
    """The variable's value, or None when unset or empty."""
    return os.environ.get(name) or None


def flag(name: str) -> bool:
    """True when the variable is set to a true-looking value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
