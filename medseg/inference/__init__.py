"""Inference: the predictor (sliding window, resampling back to the scan's grid), clean-up of
the mask, memory estimates, and the batch runner behind `medseg infer`."""
