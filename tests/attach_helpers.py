"""Real processes for the attach, run and replay tests: a small training script, a
torch-free viewer that logs what it receives, and helpers to wait on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TRAIN_SCRIPT = r'''
import argparse, json, os, sys, time
import torch
from torch import nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10**9)
p.add_argument("--until", default=None, help="stop when this file exists")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--layers", type=int, default=6)
p.add_argument("--width", type=int, default=64)
p.add_argument("--detail-every", type=int, default=50)
p.add_argument("--times", default=None, help="write each step's monotonic end time here (JSON)")
p.add_argument("--record", default=None)
p.add_argument("--listen", default=None)
p.add_argument("--token-file", default=None)
p.add_argument("--serve", default="yes", choices=["yes", "no", "env"])
p.add_argument("--client-bytes", type=int, default=None)
p.add_argument("--history-steps", type=int, default=None)
p.add_argument("--crash-at", type=int, default=None)
p.add_argument("--no-with", action="store_true", help="no context manager: an exception escapes to the interpreter")
p.add_argument("--print-every", type=int, default=0)
args = p.parse_args()

import gradtui
from gradtui.probe import server
if args.client_bytes:
    server.CLIENT_BYTES = args.client_bytes
if args.history_steps:
    server.HISTORY_STEPS = args.history_steps

torch.set_num_threads(1)
torch.manual_seed(0)
layers = []
for i in range(args.layers):
    layers += [nn.Linear(args.width, args.width), nn.Tanh()]
model = nn.Sequential(*layers, nn.Linear(args.width, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(32, args.width)
y = torch.randint(0, 4, (32,))
serve = {"yes": True, "no": False, "env": None}[args.serve]
mon = gradtui.watch(
    model, opt, serve=serve, listen=args.listen, token_file=args.token_file, record=args.record,
    detail_every=args.detail_every, detectors=False,
)
print("training started", flush=True)
times = []

def loop():
    for i in range(args.steps):
        if args.until and i % 10 == 0 and os.path.exists(args.until):
            break
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
        if args.crash_at is not None and i == args.crash_at:
            raise ValueError(f"boom at step {i}")
        if args.print_every and i % args.print_every == 0:
            print(f"step {i} loss {loss.item():.4f}", flush=True)
        if args.sleep:
            time.sleep(args.sleep)
        times.append(time.monotonic())

try:
    if args.no_with:
        loop()
        mon.close()
    else:
        with mon:
            loop()
finally:
    if args.times:
        with open(args.times, "w") as fh:
            json.dump(times, fh)
print("training done", flush=True)
'''

VIEWER_SCRIPT = r'''
import json, signal, sys, time
from gradtui.sources.attach import SocketSource
from gradtui.model.events import CommandResult, Dropped, LogLine, RunEnd, RunStart, StepStats, UpdateStats

out = open(sys.argv[2], "w", buffering=1)
src = SocketSource(sys.argv[1])
done = False

def stop(signum, frame):
    global done
    done = True

signal.signal(signal.SIGTERM, stop)
while not done:
    events = src.poll()
    lines = []
    for ev in events:
        if isinstance(ev, StepStats):
            lines.append({"t": "step", "step": ev.step})
        elif isinstance(ev, Dropped):
            lines.append({"t": "dropped", "count": ev.count, "total": ev.total})
        elif isinstance(ev, RunStart):
            lines.append({"t": "run_start"})
        elif isinstance(ev, RunEnd):
            lines.append({"t": "run_end", "status": ev.status, "step": ev.step})
            done = True
        elif isinstance(ev, CommandResult):
            lines.append({"t": "command_result", "id": ev.command_id, "ok": ev.ok})
    if lines:
        out.write("".join(json.dumps(line) + "\n" for line in lines))
    time.sleep(0.02)
src.close()
'''


def write_scripts(directory: Path) -> tuple[Path, Path]:
    """The training and viewer scripts, written into `directory`."""
    train = directory / "train.py"
    viewer = directory / "viewer.py"
    train.write_text(TRAIN_SCRIPT)
    viewer.write_text(VIEWER_SCRIPT)
    return train, viewer


def env_for(runtime_dir: Path, **extra: str) -> dict[str, str]:
    """Our environment with the runtime directory under the test's tmp_path."""
    env = dict(os.environ)
    env.pop("GRADTUI_CONNECT", None)
    env.pop("GRADTUI_SERVE", None)
    env["GRADTUI_RUNTIME_DIR"] = str(runtime_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start(argv: Sequence[str], env: dict[str, str], stderr: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start `python ARGV...` with stderr to a file (when given) and no stdin/stdout."""
    if stderr is None:
        return subprocess.Popen(
            [sys.executable, *argv], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, **kw,
        )
    with open(stderr, "wb") as err:
        return subprocess.Popen(
            [sys.executable, *argv], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, **kw
        )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a viewer wrote so far (a last line cut by SIGKILL is ignored)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout)
