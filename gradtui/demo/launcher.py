"""`gradtui demo`: the guided tour of vanishing and exploding gradients, or one scenario.

Each chapter trains for real in a child process (`python -m gradtui.demo.worker`)
that streams to the viewer over an inherited socket. This module, like the viewer,
never imports torch: `--list` and the option checks answer at once. Only what torch
alone can tell (is there a CUDA device?) is asked of a short-lived child, and only when
`--device cuda` asks for one, before the viewer starts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gradtui.demo.catalog import CATALOG, TOUR, ScenarioInfo, get_info
from gradtui.errors import CLIError
from gradtui.sources.child import ChildSource
from gradtui.ui.tour import Chapter, Tour, suggested_keys

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")

DEVICE_CHECK_TIMEOUT = 120.0
"""Seconds the CUDA check may take (importing torch, initialising CUDA)."""
_DEVICE_CHECK = (
    "import sys\n"
    "from gradtui.demo.worker import check_device\n"
    "why = check_device(sys.argv[1])\n"
    "print(why or '', end='')\n"
    "sys.exit(3 if why else 0)\n"
)


def chapter_order() -> list[str]:
    """Every scenario once: the tour's order first, then any scenario the tour leaves out."""
    return [*TOUR, *(name for name in CATALOG if name not in TOUR)]


def list_text() -> str:
    """What `gradtui demo --list` prints: scenarios grouped by chapter, then how to run them."""
    names = chapter_order()
    groups: dict[str, list[ScenarioInfo]] = {}
    for name in names:
        info = CATALOG[name]
        groups.setdefault(info.chapter or "other", []).append(info)
    width = max(len(n) for n in names)
    lines: list[str] = []
    for group, infos in groups.items():
        lines.append(f"{group}:")
        lines.extend(f"  {info.name:<{width}}  {info.blurb}" for info in infos)
    lines.append("")
    lines.append("gradtui demo NAME runs one scenario; gradtui demo (no name) starts the guided tour.")
    return "\n".join(lines)


def check_options(args: argparse.Namespace) -> None:
    """Refuse bad options with one clear line each.

    Raises:
        CLIError: an unknown scenario, steps < 1, a negative or NaN speed, an unknown
            device, or a record file that exists already (or has no folder to go in).
    """
    if args.name is not None and args.name not in CATALOG:
        raise CLIError(f"unknown scenario {args.name!r}; valid names: {', '.join(chapter_order())}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.speed is not None and (math.isnan(args.speed) or args.speed < 0):
        raise CLIError(f"--speed must be 0 (as fast as possible) or a positive number of steps/s, got {args.speed}")
    if not _DEVICE.fullmatch(args.device):
        raise CLIError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device != "cpu":
        why = device_problem(args.device)
        if why is not None:
            raise CLIError(f"--device {args.device}: {why} (--device cpu trains on the CPU)")
    if args.record is not None:
        if args.name is not None:
            _check_record_path(record_path(args.record, None))
        else:
            for name in TOUR:
                _check_record_path(record_path(args.record, name))


def device_problem(device: str) -> str | None:
    """Why the demo's worker cannot train on `device` here (no CUDA, no torch), or None.

    Asked of a child with the worker's own check, so that the viewer never imports torch
    and a missing GPU is one line before anything starts, not a crashed chapter.
    """
    try:
        out = subprocess.run(
            [sys.executable, "-c", _DEVICE_CHECK, device],
            capture_output=True,
            text=True,
            timeout=DEVICE_CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not check for CUDA ({exc})"
    if out.returncode == 0:
        return None
    if out.returncode == 3 and out.stdout:
        return out.stdout.strip()
    lines = (out.stderr or "").strip().splitlines()
    return f"could not check for CUDA: {lines[-1] if lines else f'exit code {out.returncode}'}"


def record_path(base: str, chapter: str | None, visit: int = 1) -> Path:
    """Where a run records: `base` itself for one scenario; in the tour, the chapter's name
    inserted before the suffix (`run.gtr` -> `run-sigmoid.gtr`), and `-2`, `-3`... when a
    chapter is visited again."""
    path = Path(base)
    if chapter is None:
        return path
    tag = chapter if visit == 1 else f"{chapter}-{visit}"
    return path.with_name(f"{path.stem}-{tag}{path.suffix}")


def _check_record_path(path: Path) -> None:
    if path.exists():
        raise CLIError(f"--record: {path} exists already; gradtui never overwrites a record (pick another name)")
    parent = path.parent
    if not parent.is_dir():
        raise CLIError(f"--record: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"--record: cannot write in {parent}")


def worker_argv(name: str, args: argparse.Namespace, record: Path | None) -> list[str]:
    """The command line of the training worker for scenario `name`."""
    argv = [sys.executable, "-m", "gradtui.demo.worker", name]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    speed = args.speed if args.speed is not None else get_info(name).speed
    argv += ["--seed", str(args.seed), "--device", args.device, "--speed", repr(float(speed))]
    if record is not None:
        argv += ["--record", str(record)]
    argv += ["--run", f"demo: {name}"]
    return argv


def make_starter(args: argparse.Namespace, *, tour: bool) -> Callable[[Chapter], ChildSource]:
    """A `start(chapter)` for the app's tour that spawns the worker, one record file per visit."""
    visits: dict[str, int] = {}

    def start(chapter: Chapter) -> ChildSource:
        name = chapter.name
        record = None
        if args.record is not None:
            if not tour:
                record = record_path(args.record, None)
            else:
                visits[name] = visits.get(name, 0) + 1
                record = record_path(args.record, name, visits[name])
                while record.exists():  # a file made since the check: take the next free name
                    visits[name] += 1
                    record = record_path(args.record, name, visits[name])
        return ChildSource(worker_argv(name, args, record), name=f"demo: {name}")

    return start


def chapter_of(name: str) -> Chapter:
    """The tour chapter of scenario `name`, with the keys its narrative suggests."""
    info = get_info(name)
    return Chapter(info.name, info.title, info.narrative, info.chapter, suggested_keys(info.narrative))


def build_tour(names: Sequence[str], start: Callable[[Chapter], ChildSource]) -> Tour:
    """The viewer's `Tour` over the scenarios `names`."""
    return Tour([chapter_of(name) for name in names], start)


def run_demo(args: argparse.Namespace) -> int:
    """Run `gradtui demo` with parsed arguments; returns the exit status.

    Raises:
        CLIError: a bad option (see `check_options`).
    """
    if args.list:
        print(list_text())
        return 0
    check_options(args)
    from gradtui.ui.app import make_app

    single = args.name is not None
    names = [args.name] if single else list(TOUR)
    tour = build_tour(names, make_starter(args, tour=not single))
    # The app starts the first chapter once it knows its width (see GradTUIApp.start_chapter).
    app = make_app(None, tour=tour)
    try:
        app.run()
    finally:
        # The app closes what it started when it leaves; this covers a crash on the way.
        app.close_source()
        app.wait_retired()
    return 0
