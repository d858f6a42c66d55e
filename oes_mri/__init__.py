"""oes-mri: undersampled multi-coil MRI reconstruction with OES-pruned Sparse-DIP priors.

Public API::

    from oes_mri import fft2c, ifft2c, SenseOp, CoilOp, load_volume, sample_path
"""

from oes_mri.data.fastmri_io import Volume, write_reconstruction
from oes_mri.data.volumes import load_volume, read_info
from oes_mri.data.sample import sample_path
from oes_mri.errors import InputError
from oes_mri.physics.fft import center_crop, fft2c, ifft2c, rss
from oes_mri.physics.masks import SamplingMask, fastmri_mask, make_mask, poisson_mask
from oes_mri.physics.sense import CoilOp, SenseOp

__all__ = [
    "CoilOp", "InputError", "SamplingMask", "SenseOp", "Volume", "center_crop", "fastmri_mask",
    "fft2c", "ifft2c", "load_volume", "make_mask", "poisson_mask", "read_info", "rss",
    "sample_path", "write_reconstruction",
]

__version__ = "0.1.0"
