"""Inference around any model: the pipeline every kind of model goes through (fit checks,
--roi-subset, component clean-up, the model id masks record), the options a user chooses for
it, memory estimates, and the batch runner behind `medseg infer`. The models themselves are
in medseg.models."""
