"""What `medseg infer` writes beside each mask when asked: DICOM-SEG and RTSTRUCT (dicom),
organ statistics (statistics) and preview pictures (preview)."""
