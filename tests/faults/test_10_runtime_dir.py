"""Issue 12, item 10: what a same-user file or frame can do to `gradtui ls`, `attach`, `watch(serve=True)`
and `report` (nothing outside the runtime directory, no hang, no traceback, bounded memory), and item 4's
"paused by" column.

Torch-free: runs, sidecars and frames are made by hand.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradtui.model.events import LayerInfo, RunStart, StepStats
from gradtui.wire import codec as wire
from gradtui.wire import runs

# ---------------------------------------------------------------- helpers


@pytest.fixture
def rt(tmp_path: Path) -> Path:
    """A private runtime directory, named by GRADTUI_RUNTIME_DIR (the conftest's own is replaced)."""
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    return d


def _sidecar(directory: Path, run_id: str, **fields: object) -> Path:
    path = directory / f"{run_id}.json"
    path.write_text(json.dumps({"id": run_id, "pid": os.getpid(), "socket": None, "listen": "127.0.0.1:1", **fields}))
    return path


def _ls_in_child(directory: Path, timeout: float = 20.0) -> tuple[subprocess.CompletedProcess[str], float]:
    """`gradtui ls` in a child limited to 1 GiB of address space; a hang is a TimeoutExpired."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "from gradtui import cli; sys.exit(cli.main(['ls']))"
    )
    env = dict(os.environ, GRADTUI_RUNTIME_DIR=str(directory))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - t0


def _skipped_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------- sidecars


def test_a_sidecar_naming_another_run_never_removes_files_outside(rt: Path, tmp_path: Path) -> None:
    victims = [tmp_path / "victim.json", tmp_path / "victim.sock"]
    for v in victims:
        v.write_text("keep")
    # pid 0 is never alive, so the entry looks stale: the old code removed "<dir>/../victim.*".
    evil = rt / "4242.json"
    evil.write_text(json.dumps({"id": "../victim", "pid": 0}))
    assert runs.list_runs(rt) == []
    assert all(v.read_text() == "keep" for v in victims)
    assert evil.exists(), "a sidecar that is not gradtui's is left alone, not removed"
    with pytest.raises(ValueError, match="not a run id"):
        runs.remove_entry(rt, "../victim")
    assert all(v.exists() for v in victims)


def test_a_symlinked_sidecar_is_not_read(rt: Path, tmp_path: Path) -> None:
    outside = _sidecar(tmp_path, "4242", script="outside.py")
    (rt / "4242.json").symlink_to(outside)
    assert runs.list_runs(rt) == []
    assert outside.exists() and (rt / "4242.json").is_symlink()


def test_a_fifo_sidecar_does_not_hang_ls(rt: Path) -> None:
    os.mkfifo(rt / "4242.json")
    _sidecar(rt, "4243", script="good.py")
    done, took = _ls_in_child(rt)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "good.py" in done.stdout and took < 15
    err = _skipped_lines(done.stderr)
    assert len(err) == 1 and "4242.json" in err[0] and "not a regular file" in err[0], err


def test_an_endless_or_huge_sidecar_is_skipped_fast(rt: Path) -> None:
    (rt / "4242.json").symlink_to("/dev/zero")  # the old code read 2.6 GB, then MemoryError
    # A valid sidecar of 10 MiB is not one gradtui wrote: refused by its size, not parsed.
    _sidecar(rt, "4243", script="big.py", pad="x" * (10 << 20))
    done, took = _ls_in_child(rt)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert took < 10, f"ls took {took:.1f} s"
    assert "big.py" not in done.stdout and "no live gradtui runs" in done.stdout
    err = _skipped_lines(done.stderr)
    assert len(err) == 2 and "symbolic link" in err[0] and "more than" in err[1], err


def test_a_deeply_nested_sidecar_is_skipped_not_a_traceback(rt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (rt / "4242.json").write_text("[" * 100_000 + "]" * 100_000)  # over the size cap
    (rt / "4243.json").write_text("[" * 30_000 + "]" * 30_000)  # under it: json's RecursionError
    _sidecar(rt, "4244", script="good.py")
    assert [r.script for r in runs.list_runs(rt)] == ["good.py"]
    done, _ = _ls_in_child(rt)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    err = _skipped_lines(done.stderr)
    assert len(err) == 2 and "more than" in err[0] and "nested too deep" in err[1], err


def test_write_meta_does_not_follow_a_symlink_at_its_temp_name(rt: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path = rt / "4242.json"
    trap = rt / f".{path.name}.{os.getpid()}.tmp"  # the old code's fixed temporary name
    trap.symlink_to(victim)
    runs.write_meta(path, {"id": "4242", "pid": os.getpid()})
    assert victim.read_text() == "keep"
    assert not path.is_symlink() and json.loads(path.read_text())["id"] == "4242"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert trap.is_symlink(), "what was at the temporary name is left alone"
    assert sorted(p.name for p in rt.iterdir()) == sorted([path.name, trap.name])
    # A command line too long for a sidecar is shortened, never written as one `ls` refuses.
    runs.write_meta(path, {"id": "4242", "pid": os.getpid(), "argv": ["train.py"] + ["--flag=" + "x" * 1000] * 500})
    argv = runs.read_sidecar(path)["argv"]
    assert argv[0] == "train.py" and argv[-1] == "..." and path.stat().st_size <= runs.SIDECAR_MAX


# ---------------------------------------------------------------- the runtime directory


@pytest.fixture
def usual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No override and no XDG_RUNTIME_DIR: runs go to <tmp>/gradtui-<uid>, else under a short $HOME."""
    for name in ("GRADTUI_RUNTIME_DIR", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = Path(tempfile.mkdtemp(prefix="gth", dir="/tmp"))  # short: a socket path has 107 bytes at most
    monkeypatch.setenv("HOME", str(home))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    try:
        yield tmp / f"gradtui-{os.getuid()}"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _fallback() -> Path:
    return Path(os.environ["HOME"]) / ".cache" / "gradtui"


def test_a_squatted_runtime_dir_falls_back_with_one_line(usual: Path, caplog: pytest.LogCaptureFixture) -> None:
    usual.mkdir()
    usual.chmod(0o777)  # e.g. made by another user for everyone
    with caplog.at_level("WARNING", logger="gradtui"):
        got = runs.runtime_dir()
    assert got.parent == _fallback() and got.name.startswith("run-")
    assert stat.S_IMODE(got.stat().st_mode) == 0o700
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(usual) in lines[0] and str(got) in lines[0] and "0777" in lines[0], lines
    # watch(serve=True) serves there, and `gradtui ls` / `attach` find it there.
    from gradtui.probe.server import ProbeServer

    server = ProbeServer(queue.Queue(), run="squat", script="squat.py")
    try:
        assert server.socket_path is not None and server.socket_path.parent == got
        assert [r.script for r in runs.list_runs()] == ["squat.py"]
    finally:
        server.close()
    assert list(got.iterdir()) == []


def test_a_runtime_dir_of_another_user_or_a_symlink_falls_back(
    usual: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usual.mkdir(mode=0o700)
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        st = real_lstat(path, *args, **kw)
        if os.fspath(path) == str(usual):
            fields = list(st[:10])
            fields[4] = os.getuid() + 1  # st_uid: we cannot chown here, so the check is told
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(os, "lstat", lstat)
    assert runs.runtime_dir().parent == _fallback()
    monkeypatch.setattr(os, "lstat", real_lstat)
    usual.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    usual.symlink_to(elsewhere)
    assert runs.runtime_dir().parent == _fallback()


def test_no_usable_runtime_dir_names_the_fix(usual: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usual.mkdir()
    usual.chmod(0o770)
    home_file = Path(os.environ["HOME"]) / "file"
    home_file.write_text("")
    monkeypatch.setenv("HOME", str(home_file))  # no cache directory can be made under a file
    with pytest.raises(runs.RuntimeDirError, match="set GRADTUI_RUNTIME_DIR to a private directory"):
        runs.runtime_dir()


def test_an_explicit_runtime_dir_that_is_not_private_is_refused_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(shared))
    with pytest.raises(runs.RuntimeDirError, match="GRADTUI_RUNTIME_DIR must name a private directory"):
        runs.runtime_dir()
    from gradtui import cli

    assert cli.main(["ls"]) == 2


# ---------------------------------------------------------------- token files


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        runs.load_or_create_token(token)
    token.chmod(0o600)
    assert runs.load_or_create_token(token) == ("s3cret", False)
    link = tmp_path / "link"
    link.symlink_to(token)
    with pytest.raises(ValueError, match="symbolic link"):
        runs.load_or_create_token(link)
    fresh = tmp_path / "fresh"
    made, created = runs.load_or_create_token(fresh)
    assert created and stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert runs.load_or_create_token(fresh) == (made, False)


def test_a_token_file_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        fields = list(real_fstat(fd)[:10])
        fields[4] = os.getuid() + 1  # st_uid: we cannot chown here, so the check is told
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(ValueError, match="not to you"):
        runs.load_or_create_token(token)


# ---------------------------------------------------------------- msgpack limits


def test_a_msgpack_depth_bomb_is_a_wire_error() -> None:
    for bomb in (b"\x91" * 100_000 + b"\x90", b"\x81\xa1k" * 100_000 + b"\x80"):
        with pytest.raises(wire.WireError):
            wire.unpack_payload(bomb)


def _tiny_containers(inner: bytes, per: int = 250_000) -> bytes:
    """A 16 MiB step frame body whose "x" holds lists of `per` tiny values."""
    head = b"\x82\xa1t\xa4step\xa1x"

    def arr(n: int) -> bytes:
        return b"\xdd" + n.to_bytes(4, "big")

    chunk = arr(per) + inner * per
    k = (wire.MAX_FRAME - len(head) - 5) // len(chunk)
    return head + arr(k) + chunk * k


@pytest.mark.parametrize("inner", [b"\x90", b"\x80", b"\xa2ab"], ids=["empty-lists", "empty-maps", "short-strings"])
def test_a_frame_of_tiny_containers_is_refused_in_bounded_memory(inner: bytes) -> None:
    body = _tiny_containers(inner)
    assert len(body) > 15 << 20
    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError, match="more than"):
            wire.unpack_payload(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The old decoder built it all: about 1.2 GB for empty lists or maps.
    assert peak < 8 * len(body), f"{peak / 2**20:.0f} MiB for a {len(body) / 2**20:.0f} MiB frame"
    flat = b"\x82\xa1t\xa4step\xa1x\xdd" + (wire.MAX_FRAME - 20).to_bytes(4, "big") + b"\x90" * (wire.MAX_FRAME - 20)
    with pytest.raises(wire.WireError, match="max_array_len"):
        wire.unpack_payload(flat)


def test_the_largest_legitimate_frames_still_decode() -> None:
    n = 100_000
    start = RunStart(
        run="big", pid=1, started=0.0, layers=tuple(LayerInfo(f"blocks.{i}.mlp.fc", "Linear", 4096) for i in range(n)),
        lrs=(0.1,) * 64, clip_mode="off", clip_threshold=1.0, every=1, detail_every=1, device="cpu",
        lr_groups=tuple(str(i) for i in range(64)),
    )
    ones = np.ones(2 * n)
    step = StepStats(
        step=1, time=0.0, loss=1.0, lrs=(0.1,) * 64, grad_norm=ones, has_grad=np.ones(2 * n, bool),
        nonfinite=np.zeros(2 * n, np.int64), global_norm=1.0, clipped_norm=1.0, clip_factor=1.0, clip_mode="off",
        clip_threshold=1.0, steps_per_sec=1.0, mean_abs=ones, max_abs=ones, zero_frac=ones, weight_norm=ones,
    )
    got = [wire.decode_event(p) for p in wire.iter_frames(wire.hello_frame() + wire.encode(start) + wire.encode(step))]
    assert isinstance(got[0], RunStart) and len(got[0].layers) == n
    assert isinstance(got[1], StepStats) and got[1].grad_norm.shape == (2 * n,)


# ---------------------------------------------------------------- item 4: who paused a run


def test_ls_shows_who_paused_a_run(rt: Path) -> None:
    _sidecar(rt, "4242", script="paused.py", paused_by="alice@pane2 (viewer 3)")
    _sidecar(rt, "4243", script="odd.py", paused_by=["not", "a", "string"])
    _sidecar(rt, "4244", script="plain.py", paused_by=None)
    found = {r.script: r for r in runs.list_runs(rt)}
    assert found["paused.py"].paused_by == "alice@pane2 (viewer 3)"
    assert found["odd.py"].paused_by is None and found["plain.py"].paused_by is None
    table = runs.format_table([found["paused.py"], found["plain.py"]]).splitlines()
    assert table[0].split()[7] == "STATUS"
    assert "paused by alice@pane2 (viewer 3)" in table[1] and "running" in table[2]
