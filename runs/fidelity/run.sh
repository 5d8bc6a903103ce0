#!/usr/bin/env bash
# Fidelity: fixed-point inversion and a rectifier trained on its trajectories, against plain DDIM
# inversion and the shipped rectifier. Val split for choices, test split for the record.
set -euo pipefail
export OMP_NUM_THREADS=1
H=".venv/bin/hifiedit"

# The rectifier for fixed-point inversion: the shipped rectifier continued on fixed-point×2
# trajectories (grids 6/10/20, 512 train images); stopped and released after the iterations
# its log shows.
$H train rectifier --base default --config configs/rectifier-openmoji32-fp.json \
    --out runs/rectifier-openmoji32-fp --threads 1

# Val, 64 images, S = 6 / 20, with the conditioning probes (rectifier shown another image / grey).
$H eval recon --split val --limit 64 --steps 6,20 --inversion ddim \
    --methods ddim,rectified,rectified-other,rectified-grey --rectifier default \
    --json runs/fidelity/val_ddim_shipped.json
$H eval recon --split val --limit 64 --steps 6,20 --inversion fixed-point \
    --methods ddim,rectified,rectified-other,rectified-grey \
    --rectifier runs/rectifier-openmoji32-fp/rectifier --json runs/fidelity/val_fp.json

# Test, all 514 images, S = 6: each inversion with its own shipped rectifier.
$H eval recon --split test --steps 6 --inversion ddim,fixed-point --methods ddim,rectified \
    --json runs/fidelity/test_s6.json
