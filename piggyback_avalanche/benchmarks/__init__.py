"""Task-incremental streams: from tensors or datasets, offline from data
that installed packages ship, and Avalanche's or the paper's datasets."""
