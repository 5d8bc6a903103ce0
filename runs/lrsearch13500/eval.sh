#!/bin/bash
# dev-pair scores (48 train-split light->dark pairs not among the training images) of the grid.
W=runs/lrsearch13500; R=runs/rerelease/edits
while pgrep -f lrsearch13500/run.sh >/dev/null; do sleep 20; done
E=()
for n in sm-lr3e-4 sm-lr3e-3 smn-lr3e-4 smn-lr3e-3 mk-lr1e-3 mk-lr3e-3 mkr-lr3e-4 mkr-lr3e-3; do E+=(--edit $W/$n/edit); done
for n in l2d-te133-sm l2d-te133-sm-norect l2d-te133-mk l2d-te133-mk-rect-lr1e-3; do E+=(--edit $R/$n/edit); done
for s in 6 40; do
  [ -f $W/dev_s$s.json ] || OMP_NUM_THREADS=2 .venv/bin/python scripts/edit_dev_pairs.py "${E[@]}" --steps $s --json $W/dev_s$s.json
done
echo EVALUATED
