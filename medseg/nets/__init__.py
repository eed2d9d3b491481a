"""Segmentation networks for 2D or 3D (one `spatial_dims` argument) and the pieces they share.

Every network takes (batch, channels, *spatial) and returns logits of the same spatial size when
the size is a multiple of its `stride` attribute; `PadToMultiple` lifts that restriction. In
training mode a network with deep supervision returns a list, full resolution first.
"""
