#!/bin/bash
# lr re-search for the four light->dark edits on the step-13,500 base: grid {3e-4, 1e-3, 3e-3}
# for every variant (runs already in runs/rerelease/edits are reused), then dev-pair scores at S = 6.
set -e
H=.venv/bin/hifiedit
W=runs/lrsearch13500
L2D=(--src "light skin tone" --tgt "dark skin tone")
COMMON=(--images 64 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --threads 2)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] && return; $H train edit "${L2D[@]}" "$@" "${COMMON[@]}" --out "$out"; }
t sm-lr3e-4 --method score-matching --rectifier default --lr 0.0003
t sm-lr3e-3 --method score-matching --rectifier default --lr 0.003
t smn-lr3e-4 --method score-matching --rectifier none --lr 0.0003
t smn-lr3e-3 --method score-matching --rectifier none --lr 0.003
t mk-lr1e-3 --method markovian --markovian-variant full --rectifier none --lr 0.001
t mk-lr3e-3 --method markovian --markovian-variant full --rectifier none --lr 0.003
t mkr-lr3e-4 --method markovian --markovian-variant full --rectifier default --lr 0.0003
t mkr-lr3e-3 --method markovian --markovian-variant full --rectifier default --lr 0.003
echo TRAINED
