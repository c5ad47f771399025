"""Item 8: a fork of the training process must not close the parent's viewers or write its record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gradtui.model.events import RunEnd, StepStats
from gradtui.wire.record import read_record

SCRIPT = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from fault_helpers import RawViewer, tiny_run, wait_for
from gradtui.model.events import StepStats
from pathlib import Path

mon, step = tiny_run(Path(sys.argv[1]))
viewer = RawViewer(mon.server.socket_path)
wait_for(lambda: mon.server.viewers == 1, 10, "the viewer")
for _ in range(3):
    step()
pid = os.fork()
if pid == 0:
    # A child that goes on (autograd after fork can hang on CPU thread pools, so no backward here)
    # and closes the monitor, as a `with` block in the child would.
    mon.step(1.0)
    mon.close()
    os._exit(0)
os.waitpid(pid, 0)
for _ in range(3):
    step()
wait_for(lambda: sum(isinstance(e, StepStats) for e in viewer.events) >= 6, 10, "the steps after the fork")
connected = not viewer.closed.is_set()
mon.close()
print(json.dumps({"connected_after_fork": connected}))
"""


def test_a_forked_child_leaves_the_parents_viewers_and_record_alone(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"connected_after_fork": True}
    assert "a fork of pid" in out.stderr, "the child is told its monitor does not watch it"
    events = read_record(tmp_path / "run.gtr").events
    steps = [e.step for e in events if isinstance(e, StepStats)]
    assert steps == list(range(6)), "the parent's six steps, none of the child's"
    ends = [e for e in events if isinstance(e, RunEnd)]
    assert len(ends) == 1 and ends[0].step == 6 and isinstance(events[-1], RunEnd)
