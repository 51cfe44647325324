"""One package per method: its layers, model, strategy and what only it
needs (Piggyback's masks, task files and mask-sparsity metric)."""
