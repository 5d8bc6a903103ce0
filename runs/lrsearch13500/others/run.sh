#!/bin/bash
# man→woman and dark→light (score matching + rectifier, as shipped) at lower lrs on the
# step-13,500 base, scored on their dev pairs beside the shipped runs.
set -e
H=.venv/bin/hifiedit
W=runs/lrsearch13500/others; R=runs/rerelease/edits
COMMON=(--method score-matching --rectifier default --images 64 --t0 400 --s-for 40 --s-train 6 --iters 200 --w-dir 1.0 --w-l1 0.3 --threads 2)
t() { local out="$W/$1"; shift; [ -f "$out/summary.json" ] && return; $H train edit "$@" "${COMMON[@]}" --out "$out"; }
t m2w-te0-lr3e-4 --src man --tgt woman --t-edit 0 --lr 0.0003
t m2w-te0-lr1e-4 --src man --tgt woman --t-edit 0 --lr 0.0001
t m2w-te133-lr1e-3 --src man --tgt woman --t-edit 133 --lr 0.001
t m2w-te133-lr3e-4 --src man --tgt woman --t-edit 133 --lr 0.0003
t m2w-te133-lr1e-4 --src man --tgt woman --t-edit 133 --lr 0.0001
t d2l-noise-lr1e-4 --src "dark skin tone" --tgt "light skin tone" --clip openmoji32-clip-noise --t-edit 133 --lr 0.0001
t d2l-noise-lr1e-3 --src "dark skin tone" --tgt "light skin tone" --clip openmoji32-clip-noise --t-edit 133 --lr 0.001
E=(--edit $R/man-to-woman/edit); for n in m2w-te0-lr3e-4 m2w-te0-lr1e-4 m2w-te133-lr1e-3 m2w-te133-lr3e-4 m2w-te133-lr1e-4; do E+=(--edit $W/$n/edit); done
[ -f $W/m2w_dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --src man --tgt woman --steps 6 --json $W/m2w_dev_s6.json
E=(--edit $R/d2l-noise/edit --edit $W/d2l-noise-lr1e-4/edit --edit $W/d2l-noise-lr1e-3/edit)
[ -f $W/d2l_dev_s6.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --src dark --tgt light --steps 6 --json $W/d2l_dev_s6.json
echo DONE
