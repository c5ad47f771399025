"""The `gradtui` command line: demo, report, ls, attach, run, replay.

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
from gradtui.errors import CLIError
from gradtui.wire import env


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
    from gradtui.model.detectors import DetectorConfig

    try:
        return DetectorConfig.parse(pairs)
    except ValueError as exc:
        raise CLIError(f"--detector: {exc}") from None


def _export_detector_options(pairs: Sequence[str]) -> None:
    """Check -D options here, then hand them to the training process through its environment."""
    _detector_config(pairs)
    os.environ[env.DETECTORS_ENV] = ",".join(p.strip() for p in pairs)


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
        "--speed",
        type=float,
        default=None,
        help="steps per second at most, 0 for as fast as possible (default: the scenario's own, 20 for most)",
    )
    demo.add_argument("--record", default=None, metavar="FILE", help="also record the run to FILE")
    _add_detector_options(demo)

    report = sub.add_parser("report", help="summarise a record file")
    report.add_argument("file", help="a record file (.gtr)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--recorded", action="store_true", help="use the alerts recorded online instead of re-running the detectors"
    )
    _add_detector_options(report)

    ls = sub.add_parser("ls", help="list the live runs on this machine that viewers can attach to")
    ls.add_argument("--json", action="store_true", help="print a JSON list")

    attach = sub.add_parser(
        "attach",
        help="open the viewer on a live run (leaving it leaves training running)",
        description="Open the viewer on a live run served by watch(..., serve=True) or GRADTUI_SERVE=1. "
        "RUN is a run id, pid, run name or script name from `gradtui ls`, a socket path, or HOST:PORT for a "
        "run listening on TCP (e.g. through ssh -L), which needs the run's token.",
    )
    attach.add_argument("run", nargs="?", help="which run (default: the only live one)")
    token = attach.add_mutually_exclusive_group()
    token.add_argument("--token", help="the run's token for TCP (visible to other users in ps: prefer --token-file)")
    token.add_argument("--token-file", metavar="FILE", help="read the run's TCP token from FILE")

    run = sub.add_parser(
        "run",
        help="start a training script under the viewer",
        description="Start SCRIPT [ARGS...] (a .py file runs with this Python) as a child process that streams to "
        "the viewer; its output shows in the log panel. On quit you choose to stop it or leave it running "
        "(attach again later with gradtui attach).",
    )
    run.add_argument(
        "-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE [ARGS...]", help="run a module, like python -m"
    )
    run.add_argument("--listen", metavar="HOST:PORT", help="also let the script serve viewers over TCP")
    run.add_argument("--no-serve", action="store_true", help="do not let the script serve a socket (no reattach)")
    _add_detector_options(run)
    run.add_argument("script_argv", nargs=argparse.REMAINDER, metavar="SCRIPT [ARGS...]")

    replay = sub.add_parser("replay", help="play a record file in the viewer (pause, speed, seek)")
    replay.add_argument("file", help="a record file (.gtr), finished or still being written")
    replay.add_argument("--speed", type=float, default=1.0, help="times real time (default 1); 0 for max")
    replay.add_argument("--from", dest="start_at", type=int, default=None, metavar="STEP", help="start at STEP")
    replay.add_argument("--paused", action="store_true", help="start paused")
    follow = replay.add_mutually_exclusive_group()
    follow.add_argument(
        "--follow", dest="follow", action="store_true", default=None, help="keep reading as the file grows"
    )
    follow.add_argument("--no-follow", dest="follow", action="store_false", help="stop at the current end")
    return parser


_NOTICE_LINES = 5
"""Damaged regions, and reasons for skipped events, named one by one in `report`'s notice."""


def report_notices(summary: dict[str, Any], path: str) -> list[str]:
    """What `report` left out of a record (damage, events that do not fit the run), one line each."""
    from gradtui.model.consistency import NEW_RUN

    lines = []
    damage = summary.get("damage") or []
    if damage:
        total = sum(d["bytes"] for d in damage)
        lines.append(f"{path} is damaged: {len(damage)} region(s), {total} bytes skipped; the report covers the rest")
        for d in damage[:_NOTICE_LINES]:
            around = f"after step {d['after_step']}" if d["after_step"] is not None else "before any step"
            if d["before_step"] is not None:
                around += f", before step {d['before_step']}"
            lines.append(f"  {d['bytes']} bytes at byte {d['offset']} ({around}): {d['reason']}")
        if len(damage) > _NOTICE_LINES:
            lines.append(f"  ... and {len(damage) - _NOTICE_LINES} more regions (see --json)")
    for entry in (summary.get("skipped") or [])[:_NOTICE_LINES]:
        first, last = entry["first_step"], entry["last_step"]
        steps = "" if first is None else f"step {first}" if first == last else f"steps {first}..{last}"
        if entry["event"] == "run_start" and entry["reason"] == NEW_RUN:
            earlier = f"{entry['count']} earlier run(s)" + (f", {steps}," if steps else "")
            lines.append(f"{path} holds more than one run: the report is of the last; {earlier} left out "
                         f"({entry['example']})")
            continue
        lines.append(f"{path}: left out {entry['count']} {entry['event']} event(s) that {entry['reason']}"
                     + (f" ({steps})" if steps else "") + (f", e.g. {entry['example']}" if entry["example"] else ""))
    return lines


def cmd_report(args: argparse.Namespace) -> int:
    from gradtui.model.report import summarize
    from gradtui.wire.record import Record, iter_record

    config = _detector_config(args.detector)
    if args.recorded and config is not None:
        raise CLIError("--recorded uses the alerts as recorded: it cannot be combined with --detector")
    record = Record()  # streamed: a long record is never held in memory whole
    summary = summarize(iter_record(args.file, record), detector_config=config, recompute=not args.recorded)
    summary["truncated_bytes"] = record.truncated_bytes
    summary["damage"] = [d.entry() for d in record.damage]
    # On stderr, so that --json on stdout stays one object and the table stays whole.
    for line in report_notices(summary, args.file):
        print(f"gradtui: warning: {line}" if not line.startswith(" ") else line, file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from gradtui.ui.report_view import print_report

    print_report(summary, args.file)
    return 0


def _run_viewer(source: Any, title: str | None = None) -> Any:
    from gradtui.ui.app import make_app

    try:
        return make_app(source, title=title).run()
    finally:
        source.close()


def cmd_ls(args: argparse.Namespace) -> int:
    from gradtui.wire import runs

    try:
        found = runs.list_runs()
    except runs.RuntimeDirError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps([{k: v for k, v in vars(r).items() if k != "meta_path"} for r in found], indent=2))
    elif not found:
        where = ", ".join(str(d) for d in runs.runtime_dirs()) or str(runs.candidate_dir())
        print(f"no live gradtui runs (in {where})")
    else:
        print(runs.format_table(found))
    return 0


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        return str(args.token)
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                text = fh.read().strip()
        except OSError as exc:
            raise CLIError(f"cannot read the token file {args.token_file}: {exc.strerror or exc}") from None
        if not text:
            raise CLIError(f"the token file {args.token_file} is empty")
        return text
    return env.get(env.TOKEN_ENV)


def cmd_attach(args: argparse.Namespace) -> int:
    from gradtui.sources.attach import AttachError, SocketSource
    from gradtui.wire import runs

    token = _read_token(args)
    target: str | tuple[str, int]
    log_path = None
    query = args.run
    if query is not None and (os.sep in query or query.endswith(runs.SOCK_SUFFIX)) and os.path.exists(query):
        target = query
    elif query is not None and ":" in query and query.rsplit(":", 1)[1].isdigit():
        target = runs.parse_address(query)
        if token is None:
            raise CLIError(f"{query} is a TCP address: give the run's token with --token-file FILE or GRADTUI_TOKEN")
    else:
        try:
            info = runs.resolve(runs.list_runs(), query)
        except (runs.RunLookupError, runs.RuntimeDirError) as exc:
            raise CLIError(str(exc)) from None
        if info.socket is not None:
            target = info.socket
        elif info.listen is not None:
            target = runs.parse_address(info.listen)
            if token is None:
                raise CLIError(f"run {info.id} only listens on TCP ({info.listen}): give its token with --token-file")
        else:
            raise CLIError(f"run {info.id} serves no socket")
        log_path = info.log
    try:
        source = SocketSource(target, token=token, log_path=log_path)
    except AttachError as exc:
        raise CLIError(str(exc)) from None
    _run_viewer(source)
    return 0


def _run_command(args: argparse.Namespace) -> list[str]:
    import shutil

    rest = list(args.script_argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.module is not None:
        if not args.module:
            raise CLIError("-m needs a module name: gradtui run -m package.train [ARGS...]")
        return [sys.executable, "-m", *args.module]
    if not rest:
        raise CLIError("run needs a script: gradtui run train.py [ARGS...]")
    script = rest[0]
    if script.endswith(".py") or (os.path.isfile(script) and not os.access(script, os.X_OK)):
        if not os.path.isfile(script):
            raise CLIError(f"no such script: {script}")
        return [sys.executable, *rest]
    if shutil.which(script) is None:
        raise CLIError(f"no such script or command: {script}")
    return rest


def cmd_run(args: argparse.Namespace) -> int:
    from gradtui.sources.child import RunSource, describe_exit
    from gradtui.wire.runs import RuntimeDirError

    argv = _run_command(args)
    try:
        source = RunSource(argv, serve=not args.no_serve, listen=args.listen)
    except RuntimeDirError as exc:
        raise CLIError(str(exc)) from None
    _run_viewer(source)
    if source.detach_message is not None:
        print(f"gradtui: {source.detach_message}", file=sys.stderr)
        return 0
    rc = source.exit_code
    if rc is None:
        return 0
    print(f"gradtui: {source.label} {describe_exit(rc)}; its output is in {source.log_path}", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc


def cmd_replay(args: argparse.Namespace) -> int:
    from gradtui.sources.replay import ReplaySource

    speed = float("inf") if args.speed == 0 else args.speed
    if speed < 0 or speed != speed:
        raise CLIError(f"--speed must be positive (or 0 for max), got {args.speed}")
    source = ReplaySource(args.file, speed=speed, follow=args.follow, paused=args.paused, start_at=args.start_at)
    _run_viewer(source)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gradtui.demo.launcher import run_demo

    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gradtui` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handlers = {
        "report": cmd_report,
        "demo": cmd_demo,
        "ls": cmd_ls,
        "attach": cmd_attach,
        "run": cmd_run,
        "replay": cmd_replay,
    }
    try:
        if args.command in ("run", "demo") and args.detector:
            _export_detector_options(args.detector)
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
        from gradtui.wire.codec import WireError

        if isinstance(exc, WireError):
            print(f"gradtui: error: not a readable gradtui record: {exc}", file=sys.stderr)
            return 2
        raise
