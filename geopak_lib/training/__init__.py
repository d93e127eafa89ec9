"""Training: phase config, feature cache, sampler, batch passes, trainer, checkpoints, distributed."""
