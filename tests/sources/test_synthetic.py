"""The synthetic run (the viewer's torch-free source) at the far end of its exploding scenario."""

from __future__ import annotations

import warnings

import numpy as np

from gradtui.model.events import StepStats
from gradtui.sources.synthetic import SyntheticRun


def test_a_long_exploding_run_overflows_to_counted_infinities_without_a_warning() -> None:
    """Its norms pass float64's range as the run goes on: they become inf and are counted as
    non-finite values, quietly (a RuntimeWarning from NumPy reached the terminal of
    benchmarks/viewer.py and of a viewer's user)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        events = SyntheticRun("exploding", 8).events(3000)
    stats = [e for e in events if isinstance(e, StepStats)]
    last = stats[-1]
    assert np.isinf(last.grad_norm).any()
    assert (last.nonfinite[np.isinf(last.grad_norm)] > 0).all()
