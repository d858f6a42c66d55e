"""Pruning at initialisation: weight masks, OES mask learning, and baselines."""
