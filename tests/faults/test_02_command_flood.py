"""Item 2: a command flood from one viewer must not slow training or fill the record."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pytest
from fault_helpers import RawViewer, tiny_run, wait_for

from gradtui.model.commands import SetClip, SetLR
from gradtui.model.events import CommandResult
from gradtui.probe import control, gate
from gradtui.wire import codec as wire
from gradtui.wire.record import read_record


def test_a_flood_reaches_the_probe_at_the_viewers_rate_and_the_rest_is_refused_to_the_sender_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    flooder = RawViewer(mon.server.socket_path)
    bystander = RawViewer(mon.server.socket_path)
    wait_for(lambda: mon.server is not None and mon.server.viewers == 2, 10, "two viewers")
    sent = [SetLR(factor=1.0) if i % 2 else SetClip("norm", 1e6) for i in range(3000)]
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="gradtui"):
        flooder.send(b"".join(wire.encode(c) for c in sent))
        for _ in range(30):
            step()
            time.sleep(0.01)
        wait_for(lambda: len(flooder.results()) >= len(sent) * 0.5, 20, "answers to the flood")
        for _ in range(5):
            step()
        elapsed = time.monotonic() - began
        mon.close()
    flooder.close()
    bystander.close()

    recorded = [e for e in read_record(tmp_path / "run.gtr").events if isinstance(e, CommandResult)]
    allowed = gate.COMMAND_BURST + gate.COMMAND_RATE * elapsed
    assert 0 < len(recorded) <= allowed, f"{len(recorded)} commands reached the probe in {elapsed:.1f} s"
    assert all(r.ok for r in recorded)
    assert max(Counter(r.step for r in recorded).values()) <= control.MAX_PER_STEP
    # The refusals went to the flooder alone, with the reason; the other viewer saw only what the probe applied.
    refused = [r for r in flooder.results() if not r.ok]
    assert refused and all("commands a second from this viewer" in r.message for r in refused)
    assert {r.command_id for r in bystander.results()} == {r.command_id for r in recorded}
    # And the training log did not get a line per refused command.
    assert sum("refused" in r.getMessage() for r in caplog.records) <= 3


def test_commands_of_one_step_are_written_once_and_the_last_learning_rate_wins(tmp_path: Path) -> None:
    mon, step = tiny_run(tmp_path, serve=False)
    assert mon.optimizer is not None
    writes = []
    group = mon.optimizer.param_groups[0]

    class Spy(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: object) -> None:
            if key == "lr":
                writes.append(value)
            super().__setitem__(key, value)

    spy = Spy(group)
    mon.optimizer.param_groups[0] = spy
    mon.control._groups[0] = spy
    for value in (0.5, 0.25, 0.125, 0.01):
        mon.send(SetLR(value=value))
    step()
    assert mon.control.state.lrs[0] == pytest.approx(0.01)
    assert writes[0] == pytest.approx(0.01), "the optimizer saw one write, of the last value"
    assert len(writes) <= 2  # ours, and the loop's own value put back after optimizer.step()
    mon.close()
