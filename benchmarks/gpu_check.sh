#!/usr/bin/env bash
# The checks that need a CUDA device, in one go (a few minutes, at most 8): the tests marked
# `gpu`, then the training-step overhead of gradtui and of the anchor methods on CUDA (every
# model of benchmarks/overhead.py, GPT-2 small's shape included: 12 layers, d_model 768,
# seq 1024, bf16 autocast, AdamW), then one table of both.
#
#     benchmarks/gpu_check.sh              # from the repository root
#     PYTHON=/path/to/python benchmarks/gpu_check.sh
#
# Writes only under .gpu_check/ in the repository (temporary files, caches, logs, results);
# exits 2 when torch sees no CUDA device, 1 when a test or the benchmark fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

fail() { echo "gpu_check: $1" >&2; exit "${2:-1}"; }
export PYTHONDONTWRITEBYTECODE=1  # the interpreter and its packages may live outside the repository

# Before anything is written: a machine without CUDA stops here.
if ! probe="$("$PY" -c 'import sys, torch
print("torch-build", torch.__version__, torch.version.cuda or "none")
sys.exit(0 if torch.cuda.is_available() else 3)' 2>&1)"; then
    case "$probe" in
        *torch-build*) ;;
        *) fail "$PY cannot import torch (set PYTHON=..., or run make test first): $(tail -n 1 <<<"$probe")";;
    esac
    read -r _ tv cv <<<"$(grep -m 1 '^torch-build' <<<"$probe")"
    fail "no CUDA device: torch $tv (CUDA build: $cv) sees none; run this on a machine with a GPU" 2
fi

OUT="$ROOT/.gpu_check"
rm -rf "$OUT"
mkdir -p "$OUT/tmp" "$OUT/cache" "$OUT/runtime" || fail "cannot create $OUT"
chmod 700 "$OUT/runtime"
# Everything the run writes stays in $OUT: temporary files, every cache torch and CUDA know of,
# gradtui's run sidecars; and this checkout's gradtui, whatever the interpreter has installed.
export TMPDIR="$OUT/tmp" XDG_CACHE_HOME="$OUT/cache" XDG_CONFIG_HOME="$OUT/cache/config" \
    XDG_DATA_HOME="$OUT/cache/data" CUDA_CACHE_PATH="$OUT/cache/nv" TORCH_HOME="$OUT/cache/torch" \
    TRITON_CACHE_DIR="$OUT/cache/triton" TORCHINDUCTOR_CACHE_DIR="$OUT/cache/inductor" \
    HF_HOME="$OUT/cache/hf" MPLCONFIGDIR="$OUT/cache/mpl" GRADTUI_RUNTIME_DIR="$OUT/runtime" \
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

status=0
start=$SECONDS
echo "== pytest -m gpu (at most 150 s)"
timeout -k 10 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --basetemp="$OUT/tmp/pytest" \
    --junitxml="$OUT/pytest.xml" tests 2>&1 | tee "$OUT/pytest.log"
rc_tests=${PIPESTATUS[0]}
tests_s=$((SECONDS - start))
# 5: every test deselected (no test is marked gpu), which is a failure here too.
[[ $rc_tests -eq 0 ]] || status=1

start=$SECONDS
echo "== benchmarks/overhead.py --device cuda (at most 120 + 150 s)"
timeout -k 10 120 "$PY" benchmarks/overhead.py --device cuda --rounds 20 --steps 2 \
    --models "mlp 12x512 b256" "mlp 50x128 b128" "cnn 3 conv+bn b64" "transformer 4x128 b32x64" \
    --json "$OUT/overhead-fp32.json" 2>&1 | tee "$OUT/overhead-fp32.log"
rc_small=${PIPESTATUS[0]}
timeout -k 10 150 "$PY" benchmarks/overhead.py --device cuda --autocast bf16 --rounds 15 --steps 2 \
    --models "gpt2-small 12x768 s1024 b8" --json "$OUT/overhead-gpt2.json" 2>&1 | tee "$OUT/overhead-gpt2.log"
rc_gpt=${PIPESTATUS[0]}
bench_s=$((SECONDS - start))
[[ $rc_small -eq 0 && $rc_gpt -eq 0 ]] || status=1

echo
"$PY" - "$OUT" "$rc_tests" "$tests_s" "$rc_small" "$rc_gpt" "$bench_s" <<'EOF'
"""One table: the gpu tests' outcome, then each model's step time and each method's ratio to it."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, rc_tests, tests_s, rc_small, rc_gpt, bench_s = Path(sys.argv[1]), *map(int, sys.argv[2:])
rows = [["check", "result", "plain ms", "gradtui", "lightning", "item loop", "wandb hooks", "mon.step ms", "cheapest"]]
try:
    suite = ET.parse(out / "pytest.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
except (OSError, ET.ParseError, IndexError):
    result = "no report"
rows.append(["pytest -m gpu", f"{result} (rc {rc_tests}, {tests_s} s)"] + [""] * 7)
anchors = ("lightning", "item loop", "wandb hooks")
for name, rc in (("overhead-fp32.json", rc_small), ("overhead-gpt2.json", rc_gpt)):
    try:
        results = json.loads((out / name).read_text())
    except (OSError, ValueError):
        rows.append([name.removesuffix(".json"), f"no results (rc {rc})"] + [""] * 7)
        continue
    for r in results:
        ratio = r["ratio"]
        cheapest = "yes" if all(ratio["gradtui"] <= ratio[a] for a in anchors if a in ratio) else "NO"
        rows.append([
            f"{r['model']} {r['opt']} {r['autocast']}", "ok", f"{r['plain_ms']:.2f}",
            *(f"{ratio[m]:.3f}" if m in ratio else "-" for m in ("gradtui", *anchors)),
            f"{r['probe_ms']:.3f}" if r["probe_ms"] is not None else "-", cheapest,
        ])
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for row in rows:
    print("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
print(f"\nmethod columns: median step / plain median step on CUDA (synchronised around each step); "
      f"mon.step ms: host time of the call; benchmark {bench_s} s. Logs and JSON in {out}.")
EOF
exit $status
