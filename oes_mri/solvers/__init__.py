"""Reconstruction solvers: classical baselines and the (Sparse-)DIP fit loop."""
