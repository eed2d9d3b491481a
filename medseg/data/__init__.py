"""Reading and checking scans, data set manifests and label maps, the transforms that make what
the network sees, and synthetic phantoms."""
