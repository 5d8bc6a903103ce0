#!/bin/bash
# Score matching + rectifier with the rectifier told the generation move (S_train grid, the
# library's trainer now) vs the S_for grid's move (sm_oldstep.py): lr and seed checks,
# then dev-pair scores at S = 6 and 40. sm-strain = the new code at lr 3e-4, seed 0.
set -e
H=.venv/bin/hifiedit; W=runs/stepcond; R=runs/rerelease/edits
COMMON=(--src "light skin tone" --tgt "dark skin tone" --images 64 --t0 400 --s-for 40 --s-train 6
        --iters 200 --w-dir 1.0 --w-l1 0.3 --t-edit 133 --threads 2 --method score-matching --rectifier default)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] || $H train edit "${COMMON[@]}" "$@" --out "$out"; }
t new-lr1e-4 --lr 0.0001
t new-lr1e-3 --lr 0.001
t new-seed1 --lr 0.0003 --config $W/seed1.json
[ -f $W/old-seed1/summary.json ] || .venv/bin/python $W/sm_oldstep.py $W/old-seed1 0.0003 1
echo TRAINED
E=(--edit $W/sm-strain/edit --edit $R/l2d-te133-sm/edit)
for n in new-lr1e-4 new-lr1e-3 new-seed1 old-seed1; do E+=(--edit $W/$n/edit); done
for s in 6 40; do
  [ -f $W/dev2_s$s.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --steps $s --json $W/dev2_s$s.json
done
echo EVALUATED
# dark→light and man→woman, retrained by scripts/rerelease.sh with the library: new vs old on their dev pairs
R=runs/rerelease/edits
[ -f $W/d2l_dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --src dark --tgt light \
    --edit $R/d2l-noise/edit --edit $W/old-d2l-noise/edit --steps 6 --json $W/d2l_dev_s6.json
[ -f $W/m2w_dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --src man --tgt woman \
    --edit $R/man-to-woman/edit --edit $W/old-man-to-woman/edit --steps 6 --json $W/m2w_dev_s6.json
[ -f $W/dev_rectify_off.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py --edit $R/l2d-te133-sm/edit --rectify off --steps 6 --json $W/dev_rectify_off.json
