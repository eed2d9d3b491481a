"""Every kind of model medseg runs, behind one contract.

A *model* is trained weights with everything needed to run them (docs/architecture.md). Each
kind has one adapter here that reads its files without running code from them and offers the
`Predictor` contract (medseg.models.contract): labels, a model id, the working spacing and
dimensions, the engine options it runs with, its own clean-up rules, and
`predict(scan) -> (mask, probabilities)` on exactly the scan's grid. `open_model`
(medseg.models.open) is the one place that decides which kind a reference names.

| kind | reference | adapter |
|---|---|---|
| medseg run, checkpoint, ensemble | a run folder, a `.pt` file, several of them | `medseg_run` |
| cross-validation folder | what `medseg crossval` wrote | `crossval_folder` (+ `medseg_run`) |
| nnU-Net v2 model folder | `Dataset.../Trainer__Plans__config` | `nnunet/` |
| MONAI bundle | a folder with `configs/inference.json` | `bundle` |
| TotalSegmentator task | `totalsegmentator:TASK` | `totalseg` |

Everything that belongs to every kind (ROI subset, component clean-up, fit checks, the model
id masks record) happens once, around the adapter, in medseg.inference.pipeline.

This file imports nothing: the command line reads medseg.models.options for --help.
"""
