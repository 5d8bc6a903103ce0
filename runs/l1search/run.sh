#!/bin/bash
# λ_L1 search for the four light->dark edits: edits damage the regions the true
# target keeps (test preserve MAE 0.019-0.024 vs 0.012 for a plain reconstruction at S = 6),
# and that is most of their gt MAE. Each variant at its chosen lr, λ_L1 ∈ {1, 3} (0.3 = the
# released runs), then dev-pair scores at S = 6 (and 40) as in runs/lrsearch13500/eval.sh.
set -e
H=.venv/bin/hifiedit
W=runs/l1search; R=runs/rerelease/edits
L2D=(--src "light skin tone" --tgt "dark skin tone")
COMMON=(--images 64 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --t-edit 133 --threads 2)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] && return; $H train edit "${L2D[@]}" "${COMMON[@]}" "$@" --out "$out"; }
for l1 in 1 3; do
  t sm-l1$l1 --method score-matching --rectifier default --lr 0.0003 --w-l1 $l1
  t smn-l1$l1 --method score-matching --rectifier none --lr 0.0001 --w-l1 $l1
  t mk-l1$l1 --method markovian --markovian-variant full --rectifier none --lr 0.0003 --w-l1 $l1
  t mkr-l1$l1 --method markovian --markovian-variant full --rectifier default --lr 0.0001 --w-l1 $l1
done
echo TRAINED
E=()
for n in sm smn mk mkr; do for l1 in 1 3; do E+=(--edit $W/$n-l1$l1/edit); done; done
for n in l2d-te133-sm l2d-te133-sm-norect l2d-te133-mk l2d-te133-mk-rect; do E+=(--edit $R/$n/edit); done
for s in 6 40; do
  [ -f $W/dev_s$s.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --steps $s --json $W/dev_s$s.json
done
echo EVALUATED
