"""Item 3: one oversized command must not block the distributed command broadcast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from fault_helpers import RawViewer, tiny_run, wait_for
from torch import nn

from gradtui.model.commands import SetClip, SetLR
from gradtui.model.events import CommandResult, Event
from gradtui.probe import gate
from gradtui.probe.control import Control
from gradtui.probe.dist import CONTROL_BYTES, DistContext
from gradtui.wire import codec as wire


@pytest.fixture
def group(tmp_path: Path) -> Iterator[DistContext]:
    """A one-rank gloo group: the broadcast runs for real, with rank 0's buffer."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield DistContext(rank=0, world_size=1, control_group=None, sharded=[])
    finally:
        dist.destroy_process_group()


def test_a_command_too_big_for_the_broadcast_is_refused_and_the_rest_go_through(group: DistContext) -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    results: list[Event] = []
    ctl = Control([opt], ("off", 1.0), group, results.append)
    big = SetClip("norm", 2.0, id="x" * (CONTROL_BYTES + 100))
    ctl.commands.put_nowait(big)
    small = [SetLR(factor=1.0) for _ in range(50)]
    for cmd in small:
        ctl.commands.put_nowait(cmd)
    for step in range(10):
        ctl.begin_step()
        ctl.apply_pending(step)
    acks = {r.command_id: r for r in results if isinstance(r, CommandResult)}
    assert all(acks[c.id].ok for c in small), "every command after the big one was applied"
    assert not acks[big.id].ok and "too large" in acks[big.id].message


def test_the_server_refuses_a_command_over_its_size_limit_with_the_reason(tmp_path: Path) -> None:
    assert gate.MAX_COMMAND_BYTES + 64 <= CONTROL_BYTES, "one command always fits the broadcast"
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    viewer = RawViewer(mon.server.socket_path)
    big = SetClip("norm", 2.0, id="y" * 3000)
    ok = SetLR(factor=0.5)
    viewer.send(wire.encode(big) + wire.encode(ok))

    def answered() -> list[CommandResult] | bool:
        # Commands apply at a step boundary, once the server's thread has read them: on a loaded
        # box that can take longer than a fixed few steps, so the run goes on while we wait.
        step()
        results = viewer.results()
        return len(results) >= 2 and results

    results = wait_for(answered, 10, "both answers")
    by_id = {r.command_id: r for r in results}
    assert by_id[ok.id].ok
    refusal = next(r for r in results if not r.ok)
    assert refusal.command_id == big.id[:64] and f"at most {gate.MAX_COMMAND_BYTES}" in refusal.message
    assert not viewer.closed.is_set(), "the viewer stays connected"
    mon.close()
    viewer.close()
