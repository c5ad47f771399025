"""`gradtui ls`: each column says something of its own."""

from __future__ import annotations

import time

from gradtui.wire import runs


def _info(run_id: str, pid: int, run: str) -> runs.RunInfo:
    return runs.RunInfo(
        id=run_id, pid=pid, run=run, script="train.py", argv=("train.py",), started=time.time() - 60, step=12,
        steps_per_sec=3.0, viewers=1, socket=f"/tmp/{run_id}.sock", listen=None, log=None, updated=time.time(),
        meta_path=f"/tmp/{run_id}.json",
    )


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def test_run_and_pid_are_the_runs_name_and_its_process() -> None:
    """Before the fix RUN showed the run id, which is the pid: the same number twice."""
    table = runs.format_table([_info("4242", 4242, "mnist-sweep"), _info("4242-1", 4242, "second-model")])
    head, first, second = _rows(table)
    assert head[:2] == ["RUN", "PID"] and head[7] == "STATUS"
    assert first[:2] == ["mnist-sweep", "4242"] and first.count("4242") == 1
    # A second monitor in the same process: its id, which `attach` takes, is not the pid.
    assert second[:4] == ["second-model", "4242", "(id", "4242-1)"]
