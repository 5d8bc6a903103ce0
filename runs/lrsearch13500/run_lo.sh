#!/bin/bash
# every variant was best at the grid's lowest lr (3e-4) on the dev pairs: extend the grid to 1e-4.
set -e
while pgrep -f lrsearch13500/eval.sh >/dev/null; do sleep 10; done
H=.venv/bin/hifiedit
W=runs/lrsearch13500
L2D=(--src "light skin tone" --tgt "dark skin tone")
COMMON=(--images 64 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --threads 2)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] && return; $H train edit "${L2D[@]}" "$@" "${COMMON[@]}" --out "$out"; }
t sm-lr1e-4 --method score-matching --rectifier default --lr 0.0001
t smn-lr1e-4 --method score-matching --rectifier none --lr 0.0001
t mk-lr1e-4 --method markovian --markovian-variant full --rectifier none --lr 0.0001
t mkr-lr1e-4 --method markovian --markovian-variant full --rectifier default --lr 0.0001
E=(); for n in sm-lr1e-4 smn-lr1e-4 mk-lr1e-4 mkr-lr1e-4; do E+=(--edit $W/$n/edit); done
for s in 6 40; do
  [ -f $W/dev_lo_s$s.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --steps $s --json $W/dev_lo_s$s.json
done
echo DONE
