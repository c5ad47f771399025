#!/usr/bin/env bash
# The README's pictures: the viewer at 160x48 on a healthy, a vanishing and an exploding
# demo, as a user sees it in tmux. Textual saves an SVG screenshot after DELAY seconds;
# rsvg-convert (apt-get install -y librsvg2-bin) turns it into a PNG.
#   bash docs/shots.sh            # writes docs/healthy.png, docs/vanishing.png, docs/exploding.png
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsvg-convert >/dev/null || { echo "rsvg-convert missing: apt-get install -y librsvg2-bin" >&2; exit 2; }
command -v tmux >/dev/null || { echo "tmux missing" >&2; exit 2; }
shot() {  # NAME SCENARIO DELAY
    local name=$1 scenario=$2 delay=$3 dir session
    dir=$(mktemp -d) session="gradtui-shot-$$-$name"
    tmux new-session -d -s "$session" -x 160 -y 48 \
        "TEXTUAL_SCREENSHOT=$delay TEXTUAL_SCREENSHOT_LOCATION=$dir TEXTUAL_SCREENSHOT_FILENAME=shot.svg .venv/bin/gradtui demo $scenario"
    for _ in $(seq 1 $((delay * 2 + 40))); do [ -s "$dir/shot.svg" ] && break; sleep 0.5; done
    sleep 0.5
    tmux kill-session -t "$session" 2>/dev/null || true
    [ -s "$dir/shot.svg" ] || { echo "no screenshot of $scenario" >&2; exit 1; }
    # Rich starts a <text> run at every style change; without this rsvg-convert drops each
    # run's leading spaces ("loss 7.6[6.5 …" instead of "loss 7.6  [6.5 …").
    sed -i 's/<svg /<svg xml:space="preserve" /' "$dir/shot.svg"
    rsvg-convert -w 1600 "$dir/shot.svg" -o "docs/$name.png"
    rm -rf "$dir"
    echo "docs/$name.png ($scenario)"
}
shot healthy residual-mlp 14
shot vanishing sigmoid 14
shot exploding relu-explode 14
