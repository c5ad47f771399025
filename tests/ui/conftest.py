"""Fixtures for the viewer tests (helpers live in ui_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NO_COLOR leaking in from the developer's shell; tests that want it set it."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    yield
