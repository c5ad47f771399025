from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # the viewer's tests run without torch too
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_viewer_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A viewer that started pytest (`gradtui run pytest`) must not make the probes under
    test connect or serve, and tests never touch the user's real runtime directory."""
    for name in ("GRADTUI_CONNECT", "GRADTUI_SERVE", "GRADTUI_LISTEN", "GRADTUI_TOKEN_FILE", "GRADTUI_LOG"):
        monkeypatch.delenv(name, raising=False)
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(runtime))


@pytest.fixture(autouse=True)
def _default_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe samples as a user's would: under the overhead budget (`watch()`'s default),
    whatever the shell that started pytest set. Tests that count sampled steps ask for
    `every_step_sampling` (or give `every=`)."""
    monkeypatch.delenv("GRADTUI_BUDGET", raising=False)


@pytest.fixture
def every_step_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step sampled (`GRADTUI_BUDGET=off`), here and in the processes the test starts: for
    tests that count sampled steps, which under the budget follow the machine's load."""
    monkeypatch.setenv("GRADTUI_BUDGET", "off")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
