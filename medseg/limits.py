"""Ranges that settings must lie in, shared by the command line (checked as it parses) and by
training's own check of a config (recipes and the Python API). Light: imports nothing heavy."""

from __future__ import annotations

# Working spacing: beyond 0.25 mm a 500 mm field of view is 2000^3 voxels; beyond 20 mm the
# organs are a voxel or two.
WORKING_SPACING_MM = (0.25, 20.0)
# Phantom spacing: finer would take tens of GB to draw.
SYNTH_SPACING_MM = (0.25, 10.0)
MAX_PATCH = 1024  # voxels along an axis
MAX_OVERLAP = 0.95  # sliding windows: at 1 they would never advance
