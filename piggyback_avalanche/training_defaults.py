"""The training settings every strategy starts from when none are given.

A module of constants alone, so that the command line can show them in its
help without importing torch or Avalanche.
"""

__all__ = ["DEFAULT_LR", "DEFAULT_TRAIN_EPOCHS", "DEFAULT_TRAIN_MB_SIZE", "DEFAULT_EVAL_MB_SIZE"]

DEFAULT_LR = 1e-3
"""Default learning rate of the per-task heads and normalization layers, and
of whole networks."""

DEFAULT_TRAIN_EPOCHS = 5
"""Default training epochs per experience, for every strategy (the paper's
30 are in each method's paper settings)."""

DEFAULT_TRAIN_MB_SIZE = 32
"""Default training mini-batch size, for every strategy."""

DEFAULT_EVAL_MB_SIZE = 256
"""Default evaluation mini-batch size, for every strategy."""
