#!/usr/bin/env bash
# Re-release every default model on top of a newly trained base model. Each shipped rectifier
# and edit names its base by content hash, so a new base means: release the base, fine-tune
# the rectifier from the old one, retrain the six default edits with their cards' commands,
# and re-run the test-split evaluations their cards and the README quote.
#
#   scripts/rerelease.sh                 # gate: stops unless SDEdit at S = 20 reaches ≥ 20 dB
#   GATE_DB=0 scripts/rerelease.sh       # release whatever the base scores
#   RECT_RUN=runs/rectifier-wide WORK=runs/rerelease2 scripts/rerelease.sh
#       # ship a rectifier trained elsewhere (its run folder) instead of fine-tuning one; copy
#       # the base's reports and marker (sdedit_gate.json, eval_recon_base_test.json,
#       # base.released) into the new WORK first and those stages are skipped
#
# Everything it trains or measures goes to $WORK (default runs/rerelease); each stage skips
# itself when its output is there, so rerunning after an interruption continues. Releases
# replace the folders in src/hifiedit/assets/models (the old rectifier is kept in $WORK first,
# to start from). Afterwards, update the README's figures from the JSON files it wrote.
# Cost on the 2-core CPU: the base's full reconstruction table takes over 30 min (DDIM up to
# 100 steps on 514 images; the first 4 of its 10 rows took 12 min), the rectifier's
# trajectory caches and training tens of minutes more; `--device auto` puts those on a GPU
# when there is one. Edits and their evaluations run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
H=${HIFIEDIT:-.venv/bin/hifiedit}
PY=${PYTHON:-.venv/bin/python}
BASE_RUN=${BASE_RUN:-runs/base-openmoji32}
W=${WORK:-runs/rerelease}
GATE_DB=${GATE_DB:-20}
RECT_STEPS=${RECT_STEPS:-300}
M=src/hifiedit/assets/models
mkdir -p "$W/edits"
step() { echo; echo "== $*"; }

step "keep the old rectifier to fine-tune from"
[ -d "$W/old-rectifier" ] || cp -r "$M/openmoji32-rectifier" "$W/old-rectifier"

step "base: gate on SDEdit ≥ $GATE_DB dB at S = 20 (test split), evaluate for the card, release"
[ -f "$W/sdedit_gate.json" ] || $H eval recon --model "$BASE_RUN/model" --split test --steps 20 \
    --methods sdedit --device auto --json "$W/sdedit_gate.json"
$PY - "$W/sdedit_gate.json" "$GATE_DB" <<'EOF'
import json, sys
(row,) = json.load(open(sys.argv[1]))["rows"]
print(f"SDEdit S=20: {row['psnr']:.2f} dB (gate {sys.argv[2]})")
sys.exit(0 if row["psnr"] >= float(sys.argv[2]) else 1)
EOF
[ -f "$W/eval_recon_base_test.json" ] || $H eval recon --model "$BASE_RUN/model" --split test \
    --device auto --json "$W/eval_recon_base_test.json"
[ -f "$W/base.released" ] || { $H release base --run "$BASE_RUN" --to "$M/openmoji32-ddpm" \
    --eval-json "$W/eval_recon_base_test.json" --force && touch "$W/base.released"; }

R=${RECT_RUN:-$W/rectifier-openmoji32}
step "rectifier: $R (fine-tuned $RECT_STEPS steps from the old one unless RECT_RUN names a finished run), evaluate, release"
if [ ! -f "$R/summary.json" ]; then
    resume=(); [ -d "$R/checkpoint" ] && resume=(--resume)
    $H train rectifier --base default --config configs/rectifier-openmoji32.json \
        --init-from "$W/old-rectifier" --max-steps "$RECT_STEPS" --device auto --out "$R" "${resume[@]}"
fi
# The DDIM rows are the base's, measured above: --reuse copies them (saves ~30 min on the CPU).
# S = 100 is left out: its rectified row alone is ~35 min on the 2-core CPU (6 s per step of
# the 514 images, a rectified step costing ~2.3 plain ones).
[ -f "$W/eval_recon_rectifier_test.json" ] || $H eval recon --model "$BASE_RUN/model" \
    --methods ddim,rectified --rectifier "$R/rectifier" --limit 514 --steps 6,10,20,40 --device auto \
    --reuse "$W/eval_recon_base_test.json" --json "$W/eval_recon_rectifier_test.json"
[ -f "$W/rectifier.released" ] || { $H release rectifier --run "$R" --to "$M/openmoji32-rectifier" \
    --eval-json "$W/eval_recon_rectifier_test.json" --force && touch "$W/rectifier.released"; }

step "edits: the six default edits, with their cards' training commands"
L2D=(--src "light skin tone" --tgt "dark skin tone")
COMMON=(--images 64 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --w-l1 0.3)
train_edit() {  # run name, then train-edit arguments
    local out="$W/edits/$1" resume=(); shift
    [ -f "$out/summary.json" ] && return
    [ -d "$out/checkpoint" ] && resume=(--resume)
    $H train edit "$@" "${COMMON[@]}" --out "$out" "${resume[@]}"
}
# lrs (and man→woman's t_edit): the best on dev pairs for this base (runs/lrsearch13500)
train_edit l2d-te133-sm "${L2D[@]}" --method score-matching --rectifier default --t-edit 133 --lr 0.0003
train_edit l2d-te133-mk "${L2D[@]}" --method markovian --markovian-variant full --rectifier none --t-edit 133 --lr 0.0003
train_edit l2d-te133-sm-norect "${L2D[@]}" --method score-matching --rectifier none --t-edit 133 --lr 0.0001
train_edit l2d-te133-mk-rect "${L2D[@]}" --method markovian --markovian-variant full --rectifier default --t-edit 133 --lr 0.0001
train_edit d2l-noise --src "dark skin tone" --tgt "light skin tone" --method score-matching --rectifier default \
    --clip openmoji32-clip-noise --t-edit 133 --lr 0.0001
train_edit man-to-woman --src man --tgt woman --method score-matching --rectifier default --t-edit 133 --lr 0.001

step "edits: test-split evaluations and releases"
E="$W/edits"
mkdir -p "$W/docs"
eval_edit() {  # report name, then --edit arguments
    local name=$1; shift
    [ -f "$W/docs/eval_$name.json" ] || $H eval edit "$@" --split test --steps 6,40 \
        --json "$W/docs/eval_$name.json" --grid "$W/docs/$name.png"
}
eval_edit edit_light_to_dark_interval_test --edit "$E/l2d-te133-sm/edit" \
    --edit "$E/l2d-te133-mk/edit" --edit "$E/l2d-te133-sm-norect/edit" --edit "$E/l2d-te133-mk-rect/edit"
eval_edit edit_dark_to_light_noise_test --edit "$E/d2l-noise/edit"
eval_edit edit_man_to_woman_test --edit "$E/man-to-woman/edit"
release_edit() {  # run name, shipped name, report name
    [ -f "$E/$1/released" ] || { $H release edit --run "$E/$1" --to "$M/$2" \
        --eval-json "$W/docs/eval_$3.json" --force && touch "$E/$1/released"; }
}
release_edit l2d-te133-sm light-to-dark edit_light_to_dark_interval_test
release_edit l2d-te133-mk light-to-dark-markovian edit_light_to_dark_interval_test
release_edit l2d-te133-sm-norect light-to-dark-sm-norect edit_light_to_dark_interval_test
release_edit l2d-te133-mk-rect light-to-dark-markovian-rect edit_light_to_dark_interval_test
release_edit d2l-noise dark-to-light edit_dark_to_light_noise_test
release_edit man-to-woman man-to-woman edit_man_to_woman_test
cp "$W"/docs/* docs/
step "applications figure (translation and out-of-domain edits)"
$PY examples/applications.py --edit light-to-dark --edit light-to-dark-markovian --edit man-to-woman \
    --out docs/applications.png
step "done: update the README's figures from $W/*.json and docs/ (git diff docs/)"
