"""The demo's training worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: look at its state
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_stops_when_the_viewer_that_started_it_dies() -> None:
    launcher = (
        "import subprocess, sys\n"
        "import os\n"
        "env = {**os.environ, 'GRADTUI_VIEWER_PID': str(os.getpid())}\n"
        "p = subprocess.Popen([sys.executable, '-m', 'gradtui.demo.worker', 'sigmoid', '--steps', '100000',"
        " '--speed', '50'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)\n"
        "print(p.pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, 9)
        pytest.fail("the worker kept training after its viewer died")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown scenario 'nope'"),
        (["sigmoid", "--steps", "0"], "--steps must be at least 1"),
        (["sigmoid", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_worker_refuses_bad_options_with_one_line(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gradtui.demo.worker", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
