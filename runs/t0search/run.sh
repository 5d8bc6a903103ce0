#!/bin/bash
# t0 (how far the source is inverted before the edited generation; 400 everywhere so far) for ours
# and the baseline at their chosen lr, scored on the light->dark dev pairs at S = 6.
set -e
H=.venv/bin/hifiedit; W=runs/t0search; R=runs/rerelease/edits
for T in 300 500; do
COMMON=(--src "light skin tone" --tgt "dark skin tone" --images 64 --t0 "$T" --s-for 40 --s-train 6
        --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --lr 0.0003 --threads 2)
[ -f $W/sm-t$T/summary.json ] || $H train edit "${COMMON[@]}" --method score-matching --rectifier default --out $W/sm-t$T
[ -f $W/mk-t$T/summary.json ] || $H train edit "${COMMON[@]}" --method markovian --markovian-variant full --rectifier none --out $W/mk-t$T
done
echo TRAINED
[ -f $W/dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --edit $W/sm-t300/edit \
    --edit $W/mk-t300/edit --edit $W/sm-t500/edit --edit $W/mk-t500/edit --steps 6 --json $W/dev_s6.json
echo DONE
