"""Write reconstructions as NIfTI-1 (``.nii.gz``) for image viewers (ITK-SNAP, FSLeyes, 3D Slicer, MRIcroGL).

Layout: a reconstruction ``[slices, rH, rW]`` (readout, phase-encode) becomes a volume
``(i, j, k) = (readout, phase-encode, slice)``. Orientation: an identity rotation with the
voxel sizes on the diagonal (``affine = diag(dx, dy, dz, 1)``, ``qform_code = sform_code = 2``,
aligned to the scanner axes) -- the toolkit does not yet carry slice positions and directions,
so the volume is not placed in scanner coordinates. Voxel sizes come from the header's field
of view and slice spacing (1 mm where the file does not say). Values: int16 with NIfTI's
``scl_slope`` so that a viewer reads the reconstruction's own intensities, and a display
window ``cal_min = 0``, ``cal_max`` = the 99.9th percentile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from oes_mri.atomic import atomic_path


def nifti_image(reconstruction: np.ndarray, voxel_size: tuple[float, float, float] | None):
    """A ``nibabel.Nifti1Image`` of a magnitude reconstruction ``[slices, rH, rW]``."""
    import nibabel as nib

    rec = np.asarray(reconstruction, np.float32)
    if rec.ndim != 3:
        raise ValueError(f"reconstruction must be [slices, rH, rW], got shape {rec.shape}")
    data = np.ascontiguousarray(rec.transpose(1, 2, 0))
    zooms = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    affine = np.diag([*zooms, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(np.int16)           # nibabel scales to int16 and sets scl_slope / scl_inter
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=2)
    finite = data[np.isfinite(data)]
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = float(np.percentile(finite, 99.9)) if finite.size else 0.0
    img.header["descrip"] = b"oes-mri reconstruction"
    return img


def write_nifti(path: str | os.PathLike, reconstruction: np.ndarray,
                voxel_size: tuple[float, float, float] | None) -> None:
    """Write ``reconstruction`` ``[slices, rH, rW]`` to ``path`` (``.nii.gz``) atomically."""
    import nibabel as nib

    path = Path(path)
    img = nifti_image(reconstruction, voxel_size)
    with atomic_path(path) as tmp:
        gz = tmp.with_name(tmp.name + ".nii.gz")    # nibabel picks the format from the name
        try:
            nib.save(img, gz)
            os.replace(gz, tmp)
        finally:
            gz.unlink(missing_ok=True)
