"""Training every strategy: the registry by name, experience checkpoints
and data-parallel training under ``torchrun``."""
