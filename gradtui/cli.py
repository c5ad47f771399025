"""The `gradtui` command line: demo, report, replay.

Nothing here imports torch at module level: the viewer side starts fast and runs on a
machine without torch (replay, report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from gradtui import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        "-D",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a detector threshold (repeatable), e.g. -D vanish_ratio=1e-4; see README",
    )


def _detector_config(pairs: Sequence[str]) -> Any:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--detector takes KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    if not options:
        return None
    from gradtui.core.detectors import DetectorConfig

    try:
        return DetectorConfig.from_options(options)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradtui",
        description="A live terminal monitor of gradient health for PyTorch training runs.",
    )
    parser.add_argument("--version", action="version", version=f"gradtui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="guided tour of vanishing and exploding gradients (trains for real)")
    demo.add_argument("name", nargs="?", help="run one scenario (see --list); default: the guided tour")
    demo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the scenario's own)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="cpu, or cuda when present (default cpu)")
    demo.add_argument(
        "--speed", type=float, default=20.0, help="steps per second at most, 0 for as fast as possible (default 20)"
    )
    demo.add_argument("--record", default=None, metavar="FILE", help="also record the run to FILE")

    report = sub.add_parser("report", help="summarise a record file")
    report.add_argument("file", help="a record file (.gtr)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--recorded", action="store_true", help="use the alerts recorded online instead of re-running the detectors"
    )
    _add_detector_options(report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    from gradtui.core.record import read_record
    from gradtui.core.report import summarize

    config = _detector_config(args.detector)
    if args.recorded and config is not None:
        raise CLIError("--recorded uses the alerts as recorded: it cannot be combined with --detector")
    record = read_record(args.file)
    summary = summarize(record.events, detector_config=config, recompute=not args.recorded)
    summary["truncated_bytes"] = record.truncated_bytes
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from gradtui.ui.report_view import print_report

    print_report(summary, args.file)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gradtui.demo import run_demo

    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gradtui` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {"report": cmd_report, "demo": cmd_demo}
    try:
        return handlers[args.command](args)
    except CLIError as exc:
        print(f"gradtui: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError, FileExistsError) as exc:
        name = exc.filename if getattr(exc, "filename", None) else ""
        reason = exc.strerror or str(exc)
        print(f"gradtui: error: {name + ': ' if name else ''}{reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gradtui report x.gtr --json | head`: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        from gradtui.core.wire import WireError

        if isinstance(exc, WireError):
            print(f"gradtui: error: not a readable gradtui record: {exc}", file=sys.stderr)
            return 2
        raise
