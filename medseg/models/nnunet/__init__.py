"""nnU-Net v2 trained-model folders, run as nnU-Net runs them: folder (read and check the
folder without running code from it), preprocessing, windows (the sliding window), export
(back onto the scan), and predictor, the adapter that runs them in order."""
