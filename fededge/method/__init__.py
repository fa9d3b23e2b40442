"""The method: the one training loop, early instance filter, error map pruning, 8-bit training."""
