"""Evaluation: per-organ metrics, the folder-level run behind `medseg evaluate`, its reports and
figures."""
