"""Try the viewer without torch: `python -m gradtui.ui --scenario exploding --layers 40`."""

from __future__ import annotations

import argparse

from gradtui.sources.synthetic import SCENARIOS, ScriptedSource, SyntheticRun
from gradtui.ui.app import make_app


def main(argv: list[str] | None = None) -> int:
    """Run the viewer on a synthetic run that answers commands like the probe."""
    parser = argparse.ArgumentParser(prog="python -m gradtui.ui", description=__doc__)
    parser.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--steps-per-poll", type=int, default=5, help="synthetic steps per 0.1 s poll")
    parser.add_argument("--prefill", type=int, default=0, help="steps made before the viewer starts")
    parser.add_argument("--fail-at", type=int, default=None, help="step at which the fake run crashes")
    parser.add_argument("--owns-process", action="store_true", help="ask before quitting, like a demo")
    parser.add_argument("--narrative", default=None, help="text for the side panel")
    args = parser.parse_args(argv)
    run = SyntheticRun(args.scenario, args.layers, fail_at=args.fail_at, run=f"synthetic-{args.scenario}")
    source = ScriptedSource(
        run.events(args.prefill),
        run=run,
        steps_per_poll=args.steps_per_poll,
        name=f"synthetic: {args.scenario}",
        owns_process=args.owns_process,
    )
    make_app(source, narrative=args.narrative).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
