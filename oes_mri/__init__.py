"""oes-mri: undersampled multi-coil MRI reconstruction with OES-pruned Sparse-DIP priors.

Public API: :func:`reconstruct` (one slice, any method, in one call), the methods as
objects (:mod:`oes_mri.methods`), the forward model :class:`MultiCoilOp`, the readers::

    from oes_mri import reconstruct, MultiCoilOp, load_volume, sample_path, fastmri_mask
"""

from oes_mri.data.fastmri_io import Volume, write_reconstruction
from oes_mri.data.volumes import load_volume, read_info
from oes_mri.data.sample import sample_path
from oes_mri.errors import InputError
from oes_mri.physics.fft import center_crop, fft2c, ifft2c, rss
from oes_mri.physics.masks import SamplingMask, fastmri_mask, make_sampling_mask, poisson_mask
from oes_mri.physics.operator import MultiCoilOp
from oes_mri.api import reconstruct

__all__ = [
    "InputError", "MultiCoilOp", "SamplingMask", "Volume", "reconstruct", "center_crop", "fastmri_mask",
    "fft2c", "ifft2c", "load_volume", "make_sampling_mask", "poisson_mask", "read_info", "rss",
    "sample_path", "write_reconstruction",
]

__version__ = "0.1.0"
