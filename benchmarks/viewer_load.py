"""Training step time while viewers attach, stall, flood commands or send garbage (issue 12).

This process trains a small MLP (CPU, one torch thread) watched with
`gradtui.watch(model, opt, serve=True, record=...)`. Viewers are separate processes (this
script again, with `--role`) on the run's Unix socket, never threads in the training
process. Each round goes through every scenario (the order rotates from round to round),
so drift in machine load hits all alike: start the scenario's viewers, wait until they are
attached, train a few warm-up steps, time `--steps` whole training steps (forward, backward,
`mon.step`, `opt.step`), stop the viewers and wait until the probe has let them go.

    .venv/bin/python benchmarks/viewer_load.py             # about 2-3 minutes
    .venv/bin/python benchmarks/viewer_load.py --quick     # about 30 s
    .venv/bin/python benchmarks/viewer_load.py --rounds 12 --steps 200
    .venv/bin/python benchmarks/viewer_load.py --only flood --flood-rate 0   # an unpaced flood
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/viewer_load.py   # another gradtui

Scenarios:
- none: no viewer.
- viewer: one viewer that reads and decodes every frame.
- never-reading: a viewer that says hello and never reads a byte.
- stopped: a reading viewer, SIGSTOPped once attached (SIGCONT before it is stopped).
- 20 viewers: twenty reading viewers (the probe may refuse some; notes say how many attached).
- flood 10k/s: one viewer sends 10,000 commands a second (100 every 10 ms; `--flood-rate`, 0 for
  as fast as the socket takes them) that change nothing
  (SetLR(factor=1.0) and SetClip("off") alternately; the run gets a factor-1 override before
  the first round, so no scenario trains differently after a flood), reads the stream and
  counts the acknowledgements (CommandResult, applied or refused) of its own commands.
- garbage: 50 connections a second, each sends 4 KiB of random bytes, reads until the probe
  closes it (at most 0.2 s) and closes.
- hello+garbage: the same, but each first says a valid viewer hello and waits for the probe's
  answer (at most 0.5 s), so the garbage arrives from an attached viewer.
- silent flood: one process connects in a loop as fast as the socket lets it and says nothing
  (it holds its last 64 connections open, closing the oldest), while an attacher (below) tries.
- hello flood: one process connects, says a valid viewer hello and hangs up, in a loop as fast
  as the socket lets it, while an attacher tries.
- 20 idle: twenty viewers say hello and never read a byte (more than the probe's slots), then an
  attacher tries.
  The attacher is a legitimate viewer (`gradtui attach`'s own `SocketSource`, timeout 2 s): over
  the timed steps it attaches, waits for the run's `RunStart`, leaves, and tries again every
  ATTACH_PERIOD s; notes say how many attaches succeeded within ATTACH_DEADLINE s (issue 29).

Prints per scenario the median step time and its ratio to "none" of the same run; the cpu
ratio (this process's CPU time per timed step, all threads, against "none": steadier than
wall time when other processes share the machine); how fast the record grew during the
timed steps; and notes (viewers attached, commands acknowledged, CPU used by the trainer and
the viewers, the slowest step when it is over 3x the median, gradtui's log records: warnings
and above are counted, not printed, and summarised after the table).
Target (issues 12 and 29): every ratio <= 1.10, and every legitimate attach succeeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradtui
from gradtui.model.commands import SetClip, SetLR
from gradtui.model.events import Dropped
from gradtui.probe.server import MAX_VIEWERS
from gradtui.wire import codec, env

if TYPE_CHECKING:
    from gradtui.probe.monitor import Monitor

SCENARIOS = [
    "none",
    "viewer",
    "never-reading",
    "stopped",
    "20 viewers",
    "flood",
    "garbage",
    "hello+garbage",
    "silent flood",
    "hello flood",
    "20 idle",
]
ATTACKS = {"silent flood": "silent-flood", "hello flood": "hello-flood", "20 idle": None}
"""Scenarios with an attacher: a legitimate viewer trying to attach while another client misbehaves."""
FLOOD_BATCH = 100
FLOOD_BUFFER = 256 << 10
GARBAGE_PERIOD = 0.020
GARBAGE_BYTES = 4096
READY_TIMEOUT = 15.0
HOLD = 64
"""Connections the silent flood keeps open (closing its oldest beyond)."""
ATTACH_PERIOD = 0.25
ATTACH_DEADLINE = 2.0
TARGET = 1.10


# ---------------------------------------------------------------- viewer processes (--role)


class _Stdin:
    """The parent's orders, one per line on stdin: "mark" (reset counters), "stop"."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        os.set_blocking(self.fd, False)
        self._buf = b""

    def read(self) -> list[str]:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return []
        if not data:
            return ["stop"]  # the parent is gone
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        self._buf = rest
        return [line.decode().strip() for line in lines]

    def poll(self) -> list[str]:
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        try:
            return self.read() if sel.select(0) else []
        finally:
            sel.close()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _die_with_parent() -> None:
    # A SIGSTOPped child must not outlive a killed benchmark: ask Linux to SIGKILL it then.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


class _Counts:
    """A child's counters: over the timed steps (reset by "mark") and over its whole life."""

    def __init__(self, *keys: str) -> None:
        self.window: Counter[str] = Counter({k: 0 for k in keys})
        self.life: Counter[str] = Counter()
        self.flags: dict[str, Any] = {}
        self.mark()

    def mark(self) -> None:
        self.window = Counter({k: 0 for k in self.window})
        self._t0, self._cpu0 = time.monotonic(), time.process_time()

    def add(self, key: str, n: int = 1) -> None:
        self.window[key] += n
        self.life[key] += n

    def handle(self, orders: list[str]) -> bool:
        """Act on the parent's orders; True once told to stop (the report is written)."""
        for order in orders:
            if order == "mark":
                self.mark()
            elif order == "stop":
                seconds, cpu = time.monotonic() - self._t0, time.process_time() - self._cpu0
                report = {**self.window, **self.flags, "life": dict(self.life), "seconds": seconds, "cpu": cpu}
                _say(json.dumps({**report, "gradtui": gradtui.__file__}))
                return True
        return False


def role_viewer(path: str, ctl: _Stdin) -> None:
    """Read and decode every frame until told to stop."""
    sock = _connect(path)
    sock.sendall(codec.hello_frame(role="viewer"))
    dec = codec.FrameDecoder(expect_hello=True)
    counts = _Counts("frames", "bytes", "dropped", "bad")
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(ctl.fd, selectors.EVENT_READ)
    announced = False
    while True:
        for key, _ in sel.select():
            if key.fileobj is not sock:
                if counts.handle(ctl.read()):
                    return
                continue
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                counts.flags["closed"] = True
                sel.unregister(sock)
                if not announced:
                    _say("refused")
                    announced = True
                continue
            counts.add("bytes", len(data))
            try:
                payloads = dec.feed(data)
            except codec.WireError:
                counts.add("bad")
                sel.unregister(sock)
                continue
            if dec.hello is not None and not announced:
                _say("ready")
                announced = True
            for payload in payloads:
                counts.add("frames")
                try:
                    event = codec.decode_event(payload)
                except codec.WireError:
                    counts.add("bad")
                    continue
                if isinstance(event, Dropped):
                    counts.add("dropped", event.count)


def role_silent(path: str, ctl: _Stdin) -> None:
    """Say hello, then never read."""
    sock = _connect(path)
    sock.sendall(codec.hello_frame(role="viewer"))
    _say("ready")
    counts = _Counts()
    sel = selectors.DefaultSelector()
    sel.register(ctl.fd, selectors.EVENT_READ)
    while True:
        sel.select()
        if counts.handle(ctl.read()):
            sock.close()
            return


def role_flood(path: str, ctl: _Stdin, rate: float) -> None:
    """Send `rate` commands a second (0: as fast as the socket takes them), read the stream, count acknowledgements."""
    period = FLOOD_BATCH / rate if rate > 0 else 0.0
    prefix = f"f{os.getpid()}-"
    frames = [
        codec.encode(SetLR(factor=1.0, id=f"{prefix}{i}") if i % 2 == 0 else SetClip("off", id=f"{prefix}{i}"))
        for i in range(10 * FLOOD_BATCH)
    ]
    ids = {f"{prefix}{i}" for i in range(len(frames))}
    batches = [b"".join(frames[i : i + FLOOD_BATCH]) for i in range(0, len(frames), FLOOD_BATCH)]
    sock = _connect(path)
    sock.sendall(codec.hello_frame(role="viewer"))
    sock.setblocking(False)
    dec = codec.FrameDecoder(expect_hello=True)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(ctl.fd, selectors.EVENT_READ)
    out = bytearray()
    counts = _Counts("sent", "held_back", "applied", "refused", "dropped", "bad")
    started = closed = False
    next_t = time.monotonic()
    k = 0
    while True:
        now = time.monotonic()
        timeout: float | None = None
        if started and not closed:
            if now >= next_t and len(out) < FLOOD_BUFFER:
                out += batches[k % len(batches)]
                counts.add("sent", FLOOD_BATCH)
            elif now >= next_t and period:
                counts.add("held_back", FLOOD_BATCH)  # the probe is not reading our commands
            if now >= next_t:
                k += 1
                next_t = max(next_t + period, now - 0.1)
            timeout = max(0.0, next_t - time.monotonic()) if period or len(out) < FLOOD_BUFFER else 0.05
        if not closed:
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
        for key, mask in sel.select(timeout):
            if key.fileobj is not sock:
                if counts.handle(ctl.read()):
                    return
                continue
            lost = False
            payloads: list[dict[str, Any]] = []
            if mask & selectors.EVENT_WRITE:
                try:
                    del out[: sock.send(out)]
                except BlockingIOError:
                    pass
                except OSError:
                    lost = True
            if mask & selectors.EVENT_READ and not lost:
                try:
                    data = sock.recv(1 << 16)
                    payloads = dec.feed(data)
                    lost = not data
                except BlockingIOError:
                    pass
                except codec.WireError:
                    counts.add("bad")
                    lost = True
                except OSError:
                    lost = True
            if lost:
                closed = True
                counts.flags["closed"] = True
                sel.unregister(sock)
                if not started:
                    _say("refused")
                    started = True
                continue
            if dec.hello is not None and not started:
                _say("ready")
                started = True
                next_t = time.monotonic()
            for payload in payloads:
                tag = payload.get("t")
                if tag == "command_result" and payload.get("command_id") in ids:
                    counts.add("applied" if payload.get("ok") else "refused")
                    if not payload.get("ok"):
                        counts.flags["refusal"] = str(payload.get("message", ""))[:80]
                elif tag == "dropped":
                    counts.add("dropped", int(payload.get("count", 0)))


def role_garbage(path: str, ctl: _Stdin, after_hello: bool) -> None:
    """Connect GARBAGE_PERIOD apart; send random bytes (after a hello, when asked) and close."""
    counts = _Counts("connections", "refused_connect", "answered", "closed_by_probe", "send_failed")
    announced = False
    next_t = time.monotonic()
    while True:
        if counts.handle(ctl.poll()):
            return
        now = time.monotonic()
        if now < next_t:
            time.sleep(next_t - now)
        next_t = max(next_t + GARBAGE_PERIOD, time.monotonic() - 0.1)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(0.5)
        try:
            sock.connect(path)
        except OSError:
            counts.add("refused_connect")
            sock.close()
            continue
        counts.add("connections")
        if not announced:
            _say("ready")
            announced = True
        try:
            if after_hello:
                sock.sendall(codec.hello_frame(role="viewer"))
                with contextlib.suppress(TimeoutError):
                    if sock.recv(1 << 16):
                        counts.add("answered")
            sock.sendall(os.urandom(GARBAGE_BYTES))
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                while sock.recv(1 << 16):
                    pass
                counts.add("closed_by_probe")
        except OSError:
            counts.add("send_failed")  # reset by the probe mid-send
        finally:
            sock.close()


def _connect_waiting(path: str, wait: float) -> socket.socket:
    """Connect as a plain blocking client does: wait (at most `wait` s) for room in the backlog."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(wait), int(wait % 1 * 1e6)))
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def role_connect_flood(path: str, ctl: _Stdin, hello: bool) -> None:
    """Connect in a loop as fast as the socket lets us; say nothing (holding HOLD connections
    open) or say hello and hang up."""
    counts = _Counts("connections", "connect_failed")
    held: list[socket.socket] = []
    frame = codec.hello_frame(role="viewer", who="flood")
    _say("ready")
    checked = time.monotonic()
    while True:
        now = time.monotonic()
        if now - checked >= 0.05:
            checked = now
            if counts.handle(ctl.poll()):
                for sock in held:
                    sock.close()
                return
        try:
            sock = _connect_waiting(path, 0.05)
        except OSError:
            counts.add("connect_failed")
            continue
        counts.add("connections")
        if hello:
            with contextlib.suppress(OSError):
                sock.sendall(frame)
            sock.close()
            continue
        held.append(sock)
        if len(held) > HOLD:
            held.pop(0).close()


def role_attacher(path: str, ctl: _Stdin) -> None:
    """From "mark" to "stop": attach as `gradtui attach` does, wait for the run's RunStart, leave;
    again every ATTACH_PERIOD s. Counts the attaches that got their RunStart within ATTACH_DEADLINE s."""
    from gradtui.model.events import RunStart
    from gradtui.sources.attach import AttachError, SocketSource

    counts = _Counts("tries", "attached", "late", "failed")
    counts.flags["slowest"] = 0.0
    _say("ready")
    trying = False
    while True:
        orders = ctl.poll()
        trying = trying or "mark" in orders
        if counts.handle(orders):
            return
        if not trying:
            time.sleep(0.02)
            continue
        counts.add("tries")
        t0 = time.monotonic()
        try:
            source = SocketSource(path, timeout=ATTACH_DEADLINE)
        except AttachError as exc:
            counts.add("failed")
            counts.flags["why"] = str(exc)[:100]
            time.sleep(ATTACH_PERIOD)
            continue
        got = False
        while not got and time.monotonic() - t0 < ATTACH_DEADLINE + 1.0:
            got = any(isinstance(e, RunStart) for e in source.poll())
            if not got:
                time.sleep(0.005)
        took = time.monotonic() - t0
        source.close()
        counts.flags["slowest"] = max(counts.flags["slowest"], took)
        if got and took <= ATTACH_DEADLINE:
            counts.add("attached")
        elif got:
            counts.add("late")
        else:
            counts.add("failed")
            counts.flags["why"] = "no RunStart"
        time.sleep(ATTACH_PERIOD)


def child_main(role: str, path: str, rate: float) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent ends us
    ctl = _Stdin()
    try:
        if role == "viewer":
            role_viewer(path, ctl)
        elif role == "silent":
            role_silent(path, ctl)
        elif role == "flood":
            role_flood(path, ctl, rate)
        elif role in ("garbage", "hello-garbage"):
            role_garbage(path, ctl, after_hello=role == "hello-garbage")
        elif role in ("silent-flood", "hello-flood"):
            role_connect_flood(path, ctl, hello=role == "hello-flood")
        elif role == "attacher":
            role_attacher(path, ctl)
        else:
            raise SystemExit(f"unknown role {role!r}")
    except ConnectionError:
        _say("refused")
        _Counts().handle(["stop"])


# ---------------------------------------------------------------- the parent's side of a child


@dataclass(eq=False)
class Child:
    """One viewer process and what it said on stdout."""

    role: str
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    _buf: bytes = b""

    @classmethod
    def start(cls, role: str, socket_path: Path, rate: float) -> Child:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", role, "--socket", str(socket_path), f"--rate={rate}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),  # PYTHONPATH included: the children use the same gradtui
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return cls(role, proc)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            data = self.proc.stdout.read()
        except BlockingIOError:
            return
        if not data:
            return
        *lines, self._buf = (self._buf + data).split(b"\n")
        self.lines += [line.decode(errors="replace") for line in lines]

    @property
    def state(self) -> str:
        for line in self.lines:
            if line in ("ready", "refused"):
                return line
        return "exited" if self.proc.poll() is not None else "starting"

    @property
    def report(self) -> dict[str, Any] | None:
        for line in self.lines:
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        return None

    def order(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
                os.kill(self.proc.pid, signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


def pump_until(children: Sequence[Child], done: Callable[[Child], bool], timeout: float) -> bool:
    """Read the children's output until `done` holds for each (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        for child in children:
            child.pump()
        if all(done(c) for c in children):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sel = selectors.DefaultSelector()
        for child in children:
            if child.proc.stdout is not None and not child.proc.stdout.closed:
                sel.register(child.proc.stdout, selectors.EVENT_READ)
        try:
            sel.select(min(left, 0.05))
        finally:
            sel.close()


# ---------------------------------------------------------------- gradtui's log records


class LogCounter(logging.Handler):
    """Counts gradtui's warnings (and worse) per scenario, by message shape (digits blanked)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.scenario = "setup"
        self.counts: dict[str, Counter[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            shape = re.sub(r"\d+", "N", re.sub(r"b'.*?'|b\".*?\"", "b'...'", record.getMessage()))[:140]
        except Exception:  # a malformed record must not break the count
            shape = str(record.msg)[:140]
        self.counts.setdefault(self.scenario, Counter())[f"{record.levelname} {shape}"] += 1


# ---------------------------------------------------------------- the training side


def make_trainer(args: argparse.Namespace, record: Path) -> tuple[Callable[[], float], Monitor]:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(args.width, 10))
    x, y = torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    mon = gradtui.watch(model, opt, serve=True, record=record)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mon.step(loss)
        opt.step()
        return time.perf_counter() - t0

    return step, mon


@dataclass
class Tally:
    """What one scenario measured over all rounds."""

    times: list[float] = field(default_factory=list)
    record_bytes: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    """CPU seconds of this (the training) process, every thread, during the timed steps."""
    gate_cpu: float = 0.0
    """CPU seconds of the probe's accept thread during the timed steps."""
    attached: list[int] = field(default_factory=list)
    wanted: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    odd: list[str] = field(default_factory=list)


def gate_cpu() -> float:
    """CPU seconds the probe's accept thread has used (Linux: /proc; elsewhere 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    for thread in threading.enumerate():
        if thread.name == "gradtui-serve-accept" and thread.native_id is not None:
            try:
                with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / tick
    return 0.0


def start_children(scenario: str, socket_path: Path, rate: float) -> list[Child]:
    roles = {
        "none": [],
        "viewer": ["viewer"],
        "never-reading": ["silent"],
        "stopped": ["viewer"],
        "20 viewers": ["viewer"] * 20,
        "flood": ["flood"],
        "garbage": ["garbage"],
        "hello+garbage": ["hello-garbage"],
        "silent flood": ["silent-flood"],
        "hello flood": ["hello-flood"],
        "20 idle": ["silent"] * 20,
    }[scenario]
    return [Child.start(role, socket_path, rate) for role in roles]


def run_scenario(
    scenario: str, step: Callable[[], float], mon: Monitor, args: argparse.Namespace, tally: Tally, log: LogCounter
) -> None:
    assert mon.server is not None and mon.server.socket_path is not None and mon.record_path is not None
    log.scenario = scenario
    children = start_children(scenario, mon.server.socket_path, args.flood_rate)
    try:
        if not pump_until(children, lambda c: c.state != "starting", READY_TIMEOUT):
            tally.odd.append(f"{sum(c.state == 'starting' for c in children)} children never said ready")
        ready = min(sum(c.state == "ready" for c in children), MAX_VIEWERS)
        if not scenario.endswith(("garbage", "flood")) and children:
            deadline = time.monotonic() + 5.0
            while mon.server.viewers < ready and time.monotonic() < deadline:
                time.sleep(0.01)
            tally.attached.append(mon.server.viewers)
            tally.wanted = len(children)
        if scenario in ATTACKS:
            children.append(Child.start("attacher", mon.server.socket_path, 0.0))
            if not pump_until(children[-1:], lambda c: c.state != "starting", READY_TIMEOUT):
                tally.odd.append("the attacher never said ready")
        if scenario == "stopped":
            for child in children:
                os.kill(child.proc.pid, signal.SIGSTOP)
        for _ in range(args.warmup):
            step()
        for child in children:
            child.order("mark")
        size0 = os.path.getsize(mon.record_path)
        gate0 = gate_cpu()
        t0, cpu0 = time.perf_counter(), time.process_time()
        tally.times += [step() for _ in range(args.steps)]
        tally.seconds += time.perf_counter() - t0
        tally.cpu += time.process_time() - cpu0
        tally.gate_cpu += gate_cpu() - gate0
        tally.record_bytes += os.path.getsize(mon.record_path) - size0
        for child in children:
            if scenario == "stopped":
                os.kill(child.proc.pid, signal.SIGCONT)
            child.order("stop")
        if not pump_until(children, lambda c: c.report is not None or c.proc.poll() is not None, 5.0):
            tally.odd.append("a child did not report within 5 s of stop")
        tally.reports += [r for c in children if (r := c.report) is not None]
        for child in children:
            if child.proc.poll() is not None and child.proc.returncode != 0:
                tally.odd.append(f"a {child.role} child exited with {child.proc.returncode}")
    finally:
        for child in children:
            child.kill()
    deadline = time.monotonic() + 5.0
    while mon.server.viewers > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if mon.server.viewers:
        tally.odd.append(f"{mon.server.viewers} viewers still attached 5 s after their processes died")
    log.scenario = "between scenarios"


def _sum(reports: list[dict[str, Any]], key: str, life: bool = False) -> int:
    return sum(int((r.get("life", {}) if life else r).get(key, 0)) for r in reports)


def notes(scenario: str, tally: Tally, med: float, log: LogCounter) -> str:
    out: list[str] = []
    if tally.wanted:
        out.append(f"attached {min(tally.attached)}/{tally.wanted}")
    reports = tally.reports
    if scenario.startswith("flood") and reports:
        secs = sum(r.get("seconds", 0.0) for r in reports) or 1.0
        sent, applied, refused = (_sum(reports, k) for k in ("sent", "applied", "refused"))
        out.append(
            f"sent {sent / secs:,.0f}/s; timed steps: {sent:,} sent, {applied + refused:,} acks ({applied:,} applied)"
        )
        sent, applied, refused = (_sum(reports, k, life=True) for k in ("sent", "applied", "refused"))
        out.append(f"whole life: {sent:,} sent, {applied + refused:,} acks ({applied:,} applied)")
        if held := _sum(reports, "held_back", life=True):
            out.append(f"{held:,} held back (socket full)")
        if why := next((r["refusal"] for r in reports if r.get("refusal")), ""):
            out.append(f"refusal: '{why}'")
    if scenario.endswith("garbage") and reports:
        out.append(f"{_sum(reports, 'connections', life=True):,} conns")
        if scenario == "hello+garbage":
            out.append(f"{_sum(reports, 'answered', life=True):,} answered")
        if fails := _sum(reports, "refused_connect", life=True):
            out.append(f"{fails:,} connects refused")
    if scenario in ATTACKS:
        tries, ok = _sum(reports, "tries"), _sum(reports, "attached")
        slowest = max((float(r.get("slowest", 0.0)) for r in reports), default=0.0)
        out.append(f"attaches {ok}/{tries} within {ATTACH_DEADLINE:g} s (slowest {slowest:.2f} s)")
        if why := next((r["why"] for r in reports if r.get("why")), ""):
            out.append(f"failure: '{why}'")
        if conns := _sum(reports, "connections", life=True):
            out.append(f"{conns:,} flood conns")
    if tally.seconds:
        out.append(f"accept thread {tally.gate_cpu / tally.seconds:.2f} cores")
    if dropped := _sum(reports, "dropped", life=True):
        out.append(f"viewers told {dropped:,} dropped")
    if bad := _sum(reports, "bad", life=True):
        out.append(f"{bad} BAD FRAMES")
    cpu = sum(r.get("cpu", 0.0) for r in reports) / tally.seconds if tally.seconds else 0.0
    per_step = tally.cpu / len(tally.times) * 1e3
    out.append(
        f"trainer {per_step:.2f} cpu-ms/step, {tally.cpu / tally.seconds:.2f} cores"
        + (f"; viewers {cpu:.2f} cores" if reports else "")
    )
    slowest = max(tally.times)
    if slowest > 3 * med:
        out.append(f"max {slowest * 1e3:.0f} ms")
    if warned := sum(log.counts.get(scenario, Counter()).values()):
        out.append(f"{warned} log warnings")
    out += sorted(set(tally.odd))
    return "; ".join(out)


def parent_main(args: argparse.Namespace) -> None:
    for name in env.ALL:
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="gt-vl-") as tmpdir:
        runtime = Path(tmpdir) / "rt"
        runtime.mkdir(mode=0o700)
        os.environ[env.RUNTIME_DIR_ENV] = str(runtime)
        log = LogCounter()
        logger = logging.getLogger("gradtui")
        logger.addHandler(log)
        logger.propagate = False
        step, mon = make_trainer(args, Path(tmpdir) / "run.gtr")
        children_seen: list[str] = []
        try:
            mon.send(SetLR(factor=1.0))  # the override a flood keeps re-setting, in place for every scenario
            for _ in range(20):
                step()
            med0 = statistics.median(step() for _ in range(20))
            per_round = len(args.only) * (args.steps + args.warmup) * med0
            print(
                f"gradtui {gradtui.__file__}\n"
                f"mlp {args.layers}x{args.width} b{args.batch}, SGD, 1 torch thread, watch(serve=True, record=...); "
                f"{args.rounds} rounds x {len(args.only)} scenarios x {args.steps} steps "
                f"(+{args.warmup} warm-up); step ~{med0 * 1e3:.2f} ms, about {per_round:.0f} s/round of training "
                "plus starting viewers",
                flush=True,
            )
            names = ["none", *[s for s in SCENARIOS if s in args.only and s != "none"]]
            tallies = {s: Tally() for s in names}
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                t_round = time.monotonic()
                for scenario in order:
                    run_scenario(scenario, step, mon, args, tallies[scenario], log)
                meds = {s: statistics.median(t.times) for s, t in tallies.items() if t.times}
                base = meds.get("none", 1.0)
                worst = max(meds, key=lambda s: meds[s])
                print(
                    f"  round {r + 1}/{args.rounds} ({time.monotonic() - t_round:.1f} s): "
                    f"worst so far {worst} {meds[worst] / base:.2f}x",
                    flush=True,
                )
            children_seen = sorted({str(rep.get("gradtui")) for t in tallies.values() for rep in t.reports})
        finally:
            log.scenario = "close"
            mon.close()
            logger.removeHandler(log)
            logger.propagate = True

    rows = [["scenario", "median ms", "ratio", "cpu ratio", "record KiB/s", "notes"]]
    base = statistics.median(tallies["none"].times)
    ratios: dict[str, float] = {}
    for s, t in tallies.items():
        med = statistics.median(t.times)
        ratios[s] = med / base
        rate = t.record_bytes / 1024 / t.seconds if t.seconds else 0.0
        label = s if s != "flood" else (f"flood {args.flood_rate / 1000:g}k/s" if args.flood_rate else "flood unpaced")
        cpu_ratio = (t.cpu / len(t.times)) / (tallies["none"].cpu / len(tallies["none"].times))
        rows.append(
            [label, f"{med * 1e3:.2f}", f"{med / base:.3f}", f"{cpu_ratio:.3f}", f"{rate:.1f}", notes(s, t, med, log)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    print()
    for row in rows:
        cells = [c.rjust(w) if 0 < i else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))]
        print("  ".join([*cells, row[-1]]))
    if any(p != gradtui.__file__ for p in children_seen):
        print(
            f"\nWARNING: viewer processes imported gradtui from {children_seen}, this process from {gradtui.__file__}"
        )
    if log.counts:
        print("\ngradtui log records (warnings and above), per scenario, most common first:")
        for scenario, counter in log.counts.items():
            for shape, n in counter.most_common(3):
                print(f"  {scenario}: {n} x {shape}")
    print(
        f"\nratio = median step / median step with no viewer, same run; {args.rounds} rounds, order rotating."
        "\ncpu ratio = this process's CPU time per timed step (every thread: the probe's server too) / the same"
        " with no viewer; less sensitive than wall time to other processes on a busy machine."
    )
    cores = tallies["none"].cpu / tallies["none"].seconds
    if cores < 0.85:
        print(
            f"NOTE: with no viewer the training process got only {cores:.2f} of a core: the machine is busy"
            " and wall-clock ratios are unreliable; compare the cpu ratios."
        )
    met = all(v <= TARGET for v in ratios.values())
    print(f"target: every ratio <= {TARGET:.2f}: {'met' if met else 'NOT met'}")
    attacks = [s for s in tallies if s in ATTACKS]
    if attacks:
        missed = {s: _sum(tallies[s].reports, "tries") - _sum(tallies[s].reports, "attached") for s in attacks}
        tried = all(_sum(tallies[s].reports, "tries") for s in attacks)
        ok = tried and not any(missed.values())
        print(
            f"target: every legitimate attach within {ATTACH_DEADLINE:g} s: {'met' if ok else 'NOT met'}"
            + ("" if ok else f" (missed: {missed})")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds through every scenario (default 8; quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per scenario per round (default 150)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps once the viewers are attached")
    parser.add_argument("--quick", action="store_true", help="about 30 s: fewer rounds and steps")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--role",
        choices=["viewer", "silent", "flood", "garbage", "hello-garbage", "silent-flood", "hello-flood", "attacher"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--only", nargs="+", default=SCENARIOS, choices=SCENARIOS, help="scenarios (none always runs)")
    parser.add_argument("--flood-rate", type=float, default=10_000.0, help="commands/s in the flood; 0: unpaced")
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is not None:
        child_main(args.role, args.socket, args.rate)
        return
    args.rounds = args.rounds or (3 if args.quick else 8)
    args.steps = args.steps or (60 if args.quick else 150)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)
    parent_main(args)


if __name__ == "__main__":
    main()
