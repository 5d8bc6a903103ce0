#!/bin/bash
# the dev-selected lrs with 192 training images instead of 64; all eight compared on dev pairs
# outside the 192.
set -e
while pgrep -f lrsearch13500/run_lo.sh >/dev/null; do sleep 10; done
H=.venv/bin/hifiedit
W=runs/lrsearch13500
L2D=(--src "light skin tone" --tgt "dark skin tone")
COMMON=(--images 192 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --threads 2)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] && return; $H train edit "${L2D[@]}" "$@" "${COMMON[@]}" --out "$out"; }
t sm-lr3e-4-i192 --method score-matching --rectifier default --lr 0.0003
t smn-lr1e-4-i192 --method score-matching --rectifier none --lr 0.0001
t mk-lr3e-4-i192 --method markovian --markovian-variant full --rectifier none --lr 0.0003
t mkr-lr1e-4-i192 --method markovian --markovian-variant full --rectifier default --lr 0.0001
E=(); for n in sm-lr3e-4 smn-lr1e-4 mkr-lr1e-4 sm-lr3e-4-i192 smn-lr1e-4-i192 mk-lr3e-4-i192 mkr-lr1e-4-i192; do E+=(--edit $W/$n/edit); done
E+=(--edit runs/rerelease/edits/l2d-te133-mk/edit)
for s in 6 40; do
  [ -f $W/dev192_s$s.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --steps $s --json $W/dev192_s$s.json
done
echo DONE
