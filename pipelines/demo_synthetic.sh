#!/usr/bin/env bash
# The demo as separate CLI steps: synthetic data -> train -> infer held-out -> evaluate.
# `make demo` runs the same steps from Python (medseg/demo.py); this is the recipe to copy.
set -euo pipefail
OUT=${1:-runs/demo_cli}
medseg synth "$OUT/data/train" --cases 48 --seed 0
medseg synth "$OUT/data/heldout" --cases 6 --seed 1
# --overwrite: a rerun replaces this script's own run and masks, as `make demo` does.
medseg train --recipe pipelines/demo_synthetic.yaml --manifest "$OUT/data/train/dataset.json" \
             --output "$OUT" --overwrite
medseg infer --model "$OUT" --input "$OUT/data/heldout/imagesTr" --output "$OUT/predictions" \
             --overwrite
medseg evaluate --pred "$OUT/predictions" --ref "$OUT/data/heldout/labelsTr" \
                --output "$OUT/evaluation" --labels data_manifests/label_maps/synthetic.json
