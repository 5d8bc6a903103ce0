#!/bin/bash
# Twice and half the iterations (400, 100 instead of 200) for ours and the baseline at their chosen lrs,
# scored on the light->dark dev pairs at S = 6 beside the released 200-iteration runs.
set -e
H=.venv/bin/hifiedit; W=runs/iters; R=runs/rerelease/edits
for N in 400 100; do
COMMON=(--src "light skin tone" --tgt "dark skin tone" --images 64 --t0 400 --s-for 40 --s-train 6
        --iters "$N" --w-dir 1.0 --w-l1 0.3 --t-edit 133 --lr 0.0003 --threads 2)
[ -f $W/sm-$N/summary.json ] || $H train edit "${COMMON[@]}" --method score-matching --rectifier default --out $W/sm-$N
[ -f $W/mk-$N/summary.json ] || $H train edit "${COMMON[@]}" --method markovian --markovian-variant full --rectifier none --out $W/mk-$N
done
[ -f $W/dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --edit $W/sm-400/edit \
    --edit $W/mk-400/edit --edit $R/l2d-te133-sm/edit --edit $R/l2d-te133-mk/edit --steps 6 --json $W/dev_s6.json
[ -f $W/dev100_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --edit $W/sm-100/edit \
    --edit $W/mk-100/edit --steps 6 --json $W/dev100_s6.json
echo DONE
