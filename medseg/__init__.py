"""medseg: multi-organ segmentation of abdominal CT."""

__version__ = "0.1.0"
