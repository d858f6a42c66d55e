"""Data layer: fastMRI file I/O, the simulator and the built-in sample."""
