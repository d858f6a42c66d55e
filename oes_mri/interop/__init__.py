"""Adapters to other toolkits (optional extras): :mod:`oes_mri.interop.deepinv`."""
