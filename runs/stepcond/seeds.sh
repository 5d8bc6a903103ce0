#!/bin/bash
# Seed spread of the headline comparison: light-to-dark (score matching + rectifier) and its
# Markovian baseline retrained with seeds 1 and 2 (seed 0 = the released runs), then measured
# on the test split like the released ones. For reporting the spread only; nothing is chosen by it.
set -e
H=.venv/bin/hifiedit; W=runs/stepcond/seeds; R=runs/rerelease/edits
mkdir -p $W
COMMON=(--src "light skin tone" --tgt "dark skin tone" --images 64 --t0 400 --s-for 40 --s-train 6
        --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --lr 0.0003)
for s in 1 2; do
  echo "{\"seed\": $s}" > $W/seed$s.json
  [ -f $W/sm-seed$s/summary.json ] || $H train edit "${COMMON[@]}" --method score-matching --rectifier default \
      --config $W/seed$s.json --out $W/sm-seed$s
  [ -f $W/mk-seed$s/summary.json ] || $H train edit "${COMMON[@]}" --method markovian --markovian-variant full \
      --rectifier none --config $W/seed$s.json --out $W/mk-seed$s
done
[ -f $W/eval_test.json ] || $H eval edit --edit $W/sm-seed1/edit --edit $W/sm-seed2/edit --edit $W/mk-seed1/edit \
    --edit $W/mk-seed2/edit --split test --steps 6,40 --no-references --json $W/eval_test.json
echo DONE
