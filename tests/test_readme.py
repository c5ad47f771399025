"""The figures README.md quotes from the code are the code's.

Each pin is a pattern over the README (whitespace folded, so a sentence may break across
lines) whose groups are the quoted figures, and the values the code holds for them: a
change on either side fails here. Timings cannot be pinned (machines are noisy); for them,
the tables show what the benchmarks print and each timing sentence names its command.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

import pytest
import torch

import gradtui
from gradtui.model import commands, detectors, explode, guard, rate
from gradtui.model.detector_config import DetectorConfig
from gradtui.model.guard import Guard, LossWindow
from gradtui.probe import (
    announce,
    budget,
    capture,
    control,
    gate,
    ledger,
    monitor,
    publisher,
    runwide,
    server,
    stats,
    stepped,
)
from gradtui.ui import layout, pacing, tour_switch
from gradtui.ui.app import GradTUIApp
from gradtui.ui.renderables import health
from gradtui.ui.widgets import status

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TEXT = " ".join(README.split())

WORDS = {"half": 0.5, "halfway": 0.5, "three": 3, "five": 5, "seven": 7, "fifteen": 15, "a quarter": 4}
"""Figures the README spells out ("a quarter" of the height: the height divided by 4)."""


def _benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py, imported as a module (benchmarks/ is not a package)."""
    key = f"_readme_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def number(text: str, unit: float = 1.0) -> float:
    """A figure as the README writes it (`1,000`, `1e-12`, `0.25`, `half`), times `unit`."""
    text = text.strip()
    if text in WORDS:
        return WORDS[text] * unit
    return float(text.replace(",", "")) * unit


@dataclass(frozen=True)
class Pin:
    """`pattern`'s groups in the README are `values` (each README figure times `unit`)."""

    name: str
    pattern: str
    values: tuple[float, ...]
    unit: float = 1.0


PINS = [
    # Two tiers, canaries, sampling (probe/runwide.py, probe/budget.py, model/explode.py)
    Pin("runwide batch", r"a batch of up to (\d+) steps or ([\d.]+) s", (runwide.BATCH_STEPS, runwide.BATCH_SECONDS)),
    Pin("capture length", r"`mon.capture\(steps=(\d+)\)`", (capture.DEFAULT_STEPS,)),
    Pin("capture autos", r"a blow-up each time, up to (\d+) in all", (capture.MAX_AUTO,)),
    Pin("capture keeps", r"held for (\d+) steps after the alarm", (capture.WATCHFUL_STEPS,)),
    Pin("guard settle", r"judgement of the steps before \(at most ([\d.]+) s", (publisher.SETTLE_S,)),
    Pin("hold steps", r"back to every step (?:at once, )?for (\d+) steps", (budget.HOLD_STEPS,)),
    Pin("max stride", r"every 1, 2, 4, \.\.\. up to (\d+) steps", (budget.MAX_STRIDE,)),
    Pin("budget default", r"`watch\(budget=([\d.]+)\)` by default", (budget.OVERHEAD_BUDGET,)),
    Pin("budget percent", r"Why (\d+)%: the sampled step", (budget.OVERHEAD_BUDGET,), 0.01),
    Pin("canary share", r"Where that pass would take more than (half) the budget", (budget.CANARY_SHARE,)),
    Pin("screen share", r"comes (halfway) \(on a log scale\)", (explode.SCREEN_SHARE,)),
    Pin(
        "detail every",
        r"every `detail_every` \((\d+)\) sampled steps",
        (inspect.signature(gradtui.watch).parameters["detail_every"].default,),
    ),
    Pin("small numel", r"tensors under (\d+)k values", (stats.SMALL_NUMEL,), 1024),
    Pin("small numel (benchmark)", r"fused call is cheaper up to (\d+)k values", (stats.SMALL_NUMEL,), 1024),
    # Interventions (model/commands.py, probe/control.py, probe/gate.py)
    Pin("lr range", r"learning rate (\S+) \.\. (\S+) after any factor", commands.LR_RANGE),
    Pin("clip range", r"clip threshold (\S+) \.\. ([^\s)]+)\)", commands.CLIP_RANGE),
    Pin("commands per step", r"at most (\d+) are taken per step", (control.MAX_PER_STEP,)),
    Pin(
        "command rate",
        r"A viewer may send (\d+) commands at once and (\d+) a second",
        (gate.COMMAND_BURST, gate.COMMAND_RATE),
    ),
    Pin("command bytes", r"A command over (\d+) KiB is refused", (gate.MAX_COMMAND_BYTES,), 1024),
    Pin("pause lease", r"connected and for (\d+) s after it leaves", (commands.PAUSE_LEASE,)),
    Pin("pause lease (example)", r"paused the run and left (\d+) s ago", (commands.PAUSE_LEASE,)),
    # Guard (model/guard.py, model/detectors.py, probe/announce.py, probe/ledger.py)
    Pin(
        "skip window",
        r"standard deviations above the last (\d+) steps' \(OLMo-core's skip-step rule, judged once (\d+) are in\)",
        (LossWindow.SIZE, LossWindow.MIN),
    ),
    Pin("exploding patience", r"still up (\d+) steps later \(`patience`\)", (Guard().patience,)),
    Pin(
        "zclip average",
        r"exponential moving average \(([\d.]+), about the last (\d+) steps\)",
        (guard.ZCLIP_ALPHA, round(1 / (1 - guard.ZCLIP_ALPHA))),
    ),
    Pin(
        "zclip z and warm-up", r"z = ([\d.]+), after (\d+) steps of warm-up", (commands.AUTO_CLIP_Z, guard.ZCLIP_WARMUP)
    ),
    Pin("zclip warm-up of zeros", r"warm-up included: (\d+) of them made the threshold 0", (guard.ZCLIP_WARMUP,)),
    Pin("zclip floor", r"a floor of (\d+)% of the mean", (guard.ZCLIP_MIN_CV,), 0.01),
    Pin("zclip z (command)", r'`SetClip\("auto", ([\d.]+)\)` from code', (commands.AUTO_CLIP_Z,)),
    Pin(
        "detector copies",
        r"history and flags every (\d+) steps \((\d+) copies\)",
        (detectors.KEEP_STEPS, detectors.KEPT),
    ),
    Pin(
        "log fold",
        r"naming at most (\d+) units\), and a flag raised again, or a guard action of the same kind, "
        r"within (\d+) steps",
        (announce.NAMED, announce.QUIET_STEPS),
    ),
    Pin("ledger steps", r"keeps the identifiers of the last (\d+) steps", (ledger.LEDGER_STEPS,)),
    Pin("ledger ids", r"a tensor's first (\d+) ids", (guard.MAX_IDS,)),
    Pin("ledger ids (example)", r"\(the first (\d+), then `", (guard.MAX_IDS,)),
    Pin("ledger text", r"A line is at most ([\d,]+) characters", (guard.MAX_TEXT,)),
    # Where mon.step goes, records (probe/stepped.py, probe/monitor.py, probe/publisher.py)
    Pin("same norm steps", r"or the same global norm (three) steps running", (stepped._SAME_NORM_STEPS,)),
    Pin("sigterm flush", r"SIGTERM waits up to (\d+) s", (monitor.TERMINATE_FLUSH_S,)),
    Pin("backlog", r"is bounded at (\d+) steps", (publisher.MAX_BACKLOG,)),
    # The viewer (ui/renderables/health.py, ui/layout.py, ui/pacing.py, model/rate.py)
    Pin("health memory", r"an exponential average over about (\d+) samples", (health.MEMORY,)),
    Pin(
        "health amber",
        r"amber when the norm is (\d+)-(\d+)x above",
        (DetectorConfig().explode_clear_ratio, DetectorConfig().explode_ratio),
    ),
    Pin(
        "panels",
        r"while the panels below keep (\d+) rows; with more layers it scrolls, "
        r"and the panels keep (a quarter) of the height",
        (layout.PANELS_MIN, layout.PANELS_SHARE),
    ),
    Pin("narrow (charts)", r"under (\d+) columns they sit side by side", (tour_switch.WIDE_AT,)),
    Pin(
        "narrow (header)",
        r"under (\d+) columns they sit side by side and the header is one line",
        (status.COMPACT_BELOW,),
    ),
    Pin("wide tour", r"beside the heatmap from (\d+) columns up", (tour_switch.WIDE_AT,)),
    Pin("rate window", r"steps/s counts the last (\d+) s", (rate.RATE_WINDOW,)),
    Pin("attach history", r"the history the probe still holds \(the last (\d+) steps\)", (server.HISTORY_STEPS,)),
    Pin("hello wait", r"at most (\d+) wait at once, (\d+) s each", (gate.MAX_PENDING, gate.HELLO_TIMEOUT)),
    Pin("refusal summary", r"one summary line every (\d+) s", (gate.SUMMARY_EVERY,)),
    Pin("paced budget", r"take more than (\d+) ms to redraw", (pacing.BUDGET_S,), 1e-3),
    Pin(
        "paced rate",
        r"each still redraws (five) times a second",
        (inspect.signature(GradTUIApp).parameters["refresh_hz"].default / len(pacing.VIEWS),),
    ),
    # Detectors (model/detector_config.py, model/detectors.py, model/explode.py)
    Pin("clear steps", r"`clear_steps` steps \(default (\d+)\)", (DetectorConfig().clear_steps,)),
    Pin("amp skips", r"routine and ignored, unless more than (\d+) come in a row", (detectors._AMP_SKIPS_TOLERATED,)),
    Pin("newest rows", r"\(and the (\d+) newest, however far apart\)", (explode.MIN_ROWS,)),
    Pin("weight rule gap", r"(\d+)x below the largest layer", (10**-detectors._WEIGHT_RULE_GAP,)),
    Pin(
        "warning scale",
        r"an exploding norm (\d+)x or more above the run's scale",
        (DetectorConfig().explode_warn_ratio,),
    ),
]


@pytest.mark.parametrize("pin", PINS, ids=[p.name for p in PINS])
def test_the_readme_quotes_the_code(pin: Pin) -> None:
    found = re.findall(pin.pattern, TEXT)
    assert found, f"README no longer says /{pin.pattern}/"
    for groups in found:
        groups = (groups,) if isinstance(groups, str) else groups
        assert len(groups) == len(pin.values)
        quoted = tuple(number(g, pin.unit) for g in groups)
        assert quoted == pytest.approx(pin.values, rel=1e-9), f"README quotes {groups} for /{pin.pattern}/"


# ---------------------------------------------------------------- defaults quoted as `name` (value)

DEFAULTS = {f.name: f.default for f in fields(DetectorConfig)} | {f.name: f.default for f in fields(Guard)}
QUOTED_IN_PROSE = {
    "skip_sigma", "patience", "lr_factor", "max_rollbacks", "snapshot_every", "max_snapshot_bytes",
    "vanish_ratio", "vanish_steps", "vanish_clear_ratio", "vanish_weight_ratio", "window", "explode_memory",
    "explode_ratio", "explode_z", "explode_min_history", "explode_loss_z", "explode_clear_ratio",
    "explode_ceiling", "dead_steps", "spike_z", "spike_ratio", "spike_min_history", "spike_clear_z",
    "explode_warn_ratio", "explode_scale_ratio", "explode_compound_ratio", "explode_critical_steps",
}  # fmt: skip
"""The Guard and DetectorConfig options the prose quotes with their default, as `name` (value)."""
UNITS = {"": 1, "x": 1, "GiB": 2**30, "decades per step": 1}


def test_every_option_quoted_with_its_default_in_prose_has_that_default() -> None:
    seen = set()
    for name, figure, unit in re.findall(r"`(\w+)` \((\d[\d.e+-]*) ?(x|GiB|decades per step|)\)", TEXT):
        if name in DEFAULTS:
            seen.add(name)
            assert number(figure, UNITS[unit]) == pytest.approx(DEFAULTS[name], rel=1e-9), name
    assert seen == QUOTED_IN_PROSE


def test_the_detector_table_lists_every_option_with_its_default() -> None:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", README, re.MULTILINE)
    table = {name: number(value) for name, value in rows if name in DEFAULTS or name in DetectorConfig.keys()}
    assert list(table) == list(DetectorConfig.keys())
    for name, value in table.items():
        assert value == pytest.approx(DEFAULTS[name], rel=1e-9), name


def test_the_ledgers_example_is_what_the_ledger_writes() -> None:
    example = re.search(r"\(the first \d+, then `(…\(\+\d+\) \[(\d+)x(\d+) int64\])`\)", TEXT)
    assert example is not None
    rows, cols = int(example[2]), int(example[3])
    said = ledger._said(ledger.capture(torch.zeros(rows, cols, dtype=torch.int64)))
    assert isinstance(said, str) and said.endswith(example[1])


# ---------------------------------------------------------------- what the benchmarks print


def _table(caption: str) -> list[list[str]]:
    """The cells of the first Markdown table after `caption`, its header row first."""
    lines = README[README.index(caption) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|- "):  # the rule under the header
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_overhead_table_has_the_models_and_columns_overhead_py_prints() -> None:
    overhead = _benchmark("overhead")
    caption = "`benchmarks/overhead.py --rounds 30` (step time over the plain step; AdamW):"
    assert caption in TEXT
    header, *rows = _table("`benchmarks/overhead.py --rounds 30` (step time over")
    # The table leaves out "opt" (its caption says AdamW, the default) and the guard's snapshot
    # columns (the Guard's "Cost" quotes them).
    left_out = {"opt", "guard mon.step ms", "snap ms", "snap MB"}
    assert header == [c for c in overhead.columns(overhead.METHODS[1:]) if c not in left_out]
    assert [r[0] for r in rows] == overhead.DEFAULT_MODELS
    assert all(len(r) == len(header) for r in rows)


def test_the_benchmark_models_have_the_gradients_the_readme_counts() -> None:
    sq_norms = _benchmark("sq_norms")
    deep = len(sq_norms.gradients("mlp 50x128 b128"))
    wide = len(sq_norms.gradients("mlp 12x512 b256"))
    assert re.findall(r"50x128 MLP's (\d+) gradients", TEXT) == [str(deep)]
    assert re.findall(r"12x512 MLP's (\d+);", TEXT) == [str(wide)]
    assert re.findall(r"passed over its (\d+) gradients\), [\d.]+ ms on the 12x512 MLP", TEXT) == [str(deep)]


def test_the_detector_benchmark_runs_the_runs_the_readme_counts() -> None:
    bench = _benchmark("detectors")
    found = re.search(r"trains (\w+) healthy runs .* and (\w+) blow-ups \(LR ramps", TEXT)
    assert found is not None
    blowups = len(bench.BLOWUPS) * len(bench.BLOWUP_SEEDS) + len(bench.DEMO_BLOWUPS) * len(bench.DEMO_SEEDS)
    assert (number(found[1]), number(found[2])) == (len(bench.HEALTHY), blowups)
    assert re.search(rf"on \d+ of the {blowups} \(", TEXT)


TIMINGS = [
    (r"in under 8 minutes", "benchmarks/gpu_check.sh"),
    (r"more than the whole budget", "benchmarks/sq_norms.py"),
    (r"Why 1%: the sampled step costs", "benchmarks/overhead.py"),
    (r"averaged over blocks at stride 32: [\d.]+ ms", "benchmarks/overhead.py --rounds 20"),
    (r"takes [\d.-]+ ms a step with the guard", "benchmarks/overhead.py --rounds 20"),
    (r"One snapshot takes [\d.]+ ms", "benchmarks/overhead.py --rounds 20"),
    (r"`mon.step` is [\d.-]+ ms a step on them", "benchmarks/overhead.py --rounds 30"),
    (r"On the 2-core box, `--steps \d+`, ms a step", "benchmarks/sq_norms.py"),
    (r"\(about 10 minutes\) trains", "benchmarks/detectors.py"),
]
"""Timing sentences (a pattern in each) and the command that measures them: named in the
sentence's paragraph, or in the nearest one before it that names a benchmark (a table's caption)."""


@pytest.mark.parametrize(("sentence", "command"), TIMINGS, ids=[c for _, c in TIMINGS])
def test_each_timing_sentence_names_the_command_that_measures_it(sentence: str, command: str) -> None:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", README)]
    holding = [i for i, p in enumerate(paragraphs) if re.search(sentence, p)]
    assert len(holding) == 1, f"/{sentence}/ is in {len(holding)} paragraphs"
    naming = next(p for p in reversed(paragraphs[: holding[0] + 1]) if "benchmarks/" in p)
    assert command in naming
    assert (ROOT / command.split()[0]).is_file()
