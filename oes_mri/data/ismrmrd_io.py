"""Read Cartesian 2-D (multi-slice) ISMRMRD HDF5 datasets into the fastMRI layout.

ISMRMRD (Inati et al., MRM 2017) is the vendor-neutral raw format that fastMRI itself was
converted from. A file holds a group (``/dataset``) with the XML header ``xml`` and one
record per acquisition (one readout line of every coil) in ``data``. This reader uses the
``ismrmrd`` package for the header (``ismrmrd.xsd``) and the acquisition flags, and:

- keeps imaging lines (and parallel-imaging calibration lines, which are measured k-space
  too), skipping noise scans, navigators, phase-correction, dummy-scan and feedback data;
- places each line by ``kspace_encode_step_1`` on the encoded grid, centred like fastMRI
  (column ``step1 - limits.center + W // 2``), and each readout by its ``center_sample``;
- combines averages and repetitions by their mean (``repetition=N`` selects one), and takes
  one contrast (echo), the first by default;
- takes the sampling mask from the lines acquired, so prospectively undersampled data
  carries its own mask;
- takes the matrix, field of view and recon size from the header, the slice spacing from
  the acquisitions' positions where there are several slices.

Unsupported data (non-Cartesian trajectories, 3-D encoding, several encodings in use,
lines outside the grid, slices sampled differently) raises :class:`InputError` naming the
file and the problem.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from oes_mri.data.fastmri_io import Header, check_size
from oes_mri.data.rawscan import RawScan, centre_offset
from oes_mri.errors import InputError

GROUP = "dataset"


def is_ismrmrd(hf: h5py.File) -> bool:
    """An open HDF5 file is an ISMRMRD dataset (a ``/dataset`` group with its ``xml`` header;
    :func:`read_ismrmrd` names what else is missing)."""
    return GROUP in hf and isinstance(hf[GROUP], h5py.Group) and "xml" in hf[GROUP]


def _skipped_flags() -> int:
    import ismrmrd

    names = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA",
             "ACQ_IS_DUMMYSCAN_DATA", "ACQ_IS_RTFEEDBACK_DATA", "ACQ_IS_HPFEEDBACK_DATA",
             "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA", "ACQ_IS_PHASE_STABILIZATION_REFERENCE",
             "ACQ_IS_PHASE_STABILIZATION")
    return sum(1 << (getattr(ismrmrd, n) - 1) for n in names)


def _header(path: Path, xml: bytes | str):
    import ismrmrd.xsd

    try:
        hdr = ismrmrd.xsd.CreateFromDocument(xml)
    except Exception as err:  # xsdata raises its own parser errors
        raise InputError(path, f"unreadable ISMRMRD XML header: {str(err).splitlines()[0][:160]}")
    if not hdr.encoding:
        raise InputError(path, "ISMRMRD header has no encoding")
    return hdr


def _geometry(path: Path, hdr) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], float, object]:
    """Encoded ``(H, W)``, recon ``(rH, rW)``, acquired columns, slice thickness (mm), recon space."""
    enc = hdr.encoding[0]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if traj != "cartesian":
        raise InputError(path, f"trajectory '{traj}' is not supported (Cartesian only)")
    es, rs, lim = enc.encodedSpace, enc.reconSpace, enc.encodingLimits
    step2 = lim.kspace_encoding_step_2
    if es.matrixSize.z > 1 or (step2 is not None and step2.maximum > 0):
        raise InputError(path, f"3-D encoding (matrix z = {es.matrixSize.z}) is not supported (2-D multi-slice only)")
    step1 = lim.kspace_encoding_step_1
    if step1 is None:
        raise InputError(path, "ISMRMRD header lacks encodingLimits/kspace_encoding_step_1")
    H, W = int(es.matrixSize.x), int(es.matrixSize.y)
    recon = (int(rs.matrixSize.x), int(rs.matrixSize.y))
    if min(H, W, *recon) < 1 or recon[0] > H or recon[1] > W:
        raise InputError(path, f"ISMRMRD header: encoded matrix {(H, W)} and recon matrix {recon} do not make an "
                               "image (each at least 1, the recon within the encoded)")
    left = centre_offset(W, step1.center) + step1.minimum
    cols = (left, centre_offset(W, step1.center) + step1.maximum + 1)
    return (H, W), recon, cols, float(rs.fieldOfView_mm.z), rs


def read_ismrmrd(path: str | Path, contrast: int = 0, repetition: int | None = None) -> RawScan:
    """Read an ISMRMRD file into a :class:`RawScan`.

    Args:
        path: ISMRMRD HDF5 file (group ``/dataset``).
        contrast: which contrast (echo) to read.
        repetition: which repetition to read; ``None`` averages all of them.

    Raises:
        InputError: for every unsupported or inconsistent file, naming it.
    """
    path = Path(path)
    with h5py.File(path, "r") as hf:
        hdr = _header(path, hf[GROUP]["xml"][0])
        (H, W), recon, cols, thickness, rs = _geometry(path, hdr)
        if "data" not in hf[GROUP] or not isinstance(hf[GROUP]["data"], h5py.Dataset) or not len(hf[GROUP]["data"]):
            raise InputError(path, "ISMRMRD file holds no acquisitions (/dataset/data is missing or empty)")
        records = hf[GROUP]["data"][()]
    heads = records["head"]
    idx = heads["idx"]
    keep = (heads["flags"] & np.uint64(_skipped_flags())) == 0
    keep &= idx["contrast"] == contrast
    if repetition is not None:
        keep &= idx["repetition"] == repetition
    if not keep.any():
        raise InputError(path, f"no imaging acquisitions (contrast {contrast}, repetition {repetition})")
    if np.any(heads["encoding_space_ref"][keep] != 0):
        raise InputError(path, "acquisitions of several encoding spaces are not supported")
    if np.any(heads["trajectory_dimensions"][keep] != 0):
        raise InputError(path, "acquisitions carry a trajectory: non-Cartesian data is not supported")
    coils = np.unique(heads["active_channels"][keep])
    if coils.size != 1:
        raise InputError(path, f"acquisitions have different coil counts {coils.tolist()}")
    C = int(coils[0])
    slices = idx["slice"][keep].astype(int)
    S = int(slices.max()) + 1
    cols_of = idx["kspace_encode_step_1"][keep].astype(int) - _center(hdr) + W // 2
    if cols_of.min() < 0 or cols_of.max() >= W:
        raise InputError(path, f"phase-encode lines fall outside the encoded matrix width {W}")
    check_size(path, (S, C, H, W), 16)
    kspace = np.zeros((S, C, H, W), np.complex128)
    count = np.zeros((S, W), np.int64)
    for rec, s, c in zip(records[keep], slices, cols_of):
        h = rec["head"]
        n = int(h["number_of_samples"])
        data = np.asarray(rec["data"], np.float32).view(np.complex64).reshape(C, n)
        top = centre_offset(H, int(h["center_sample"])) if n != H else 0
        if top < 0 or top + n > H:
            raise InputError(path, f"readout of {n} samples (centre {int(h['center_sample'])}) does not fit "
                                   f"the encoded matrix height {H}")
        kspace[s, :, top:top + n, c] += data
        count[s, c] += 1
    _check_slices(path, count)
    kspace /= np.maximum(count, 1)[:, None, None, :]
    sampled = count[0] > 0
    header = Header((H, W), recon, max(cols[0], 0), min(cols[1], W))
    voxel = (rs.fieldOfView_mm.x / recon[0], rs.fieldOfView_mm.y / recon[1],
             _slice_spacing(heads[keep], slices) or thickness)
    return RawScan(kspace.astype(np.complex64), sampled, header, voxel, _attrs(hdr))


def _center(hdr) -> int:
    return int(hdr.encoding[0].encodingLimits.kspace_encoding_step_1.center)


def _check_slices(path: Path, count: np.ndarray) -> None:
    """Every slice has data, and the same lines (one sampling mask per volume)."""
    empty = np.flatnonzero(count.sum(1) == 0)
    if empty.size:
        raise InputError(path, f"slice {int(empty[0])} of {count.shape[0]} has no acquisitions")
    differ = np.flatnonzero(((count > 0) != (count[:1] > 0)).any(1))
    if differ.size:
        raise InputError(path, f"slice {int(differ[0])} acquired other phase-encode lines than slice 0 "
                               "(one sampling mask per volume is supported)")


def _slice_spacing(heads: np.ndarray, slices: np.ndarray) -> float | None:
    """Distance (mm) between the positions of slices 0 and 1, if both are there and differ."""
    pos = {int(s): heads["position"][np.flatnonzero(slices == s)[0]] for s in (0, 1) if np.any(slices == s)}
    if len(pos) < 2:
        return None
    d = float(np.linalg.norm(pos[1] - pos[0]))
    return d if d > 0 else None


def _attrs(hdr) -> dict:
    out = {"source_format": "ISMRMRD"}
    sys = hdr.acquisitionSystemInformation
    if sys is not None and sys.systemVendor:
        out["vendor"] = sys.systemVendor
    meas = hdr.measurementInformation
    if meas is not None and getattr(meas, "protocolName", None):
        out["acquisition"] = meas.protocolName
    return out


_XML = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <acquisitionSystemInformation><receiverChannels>{C}</receiverChannels></acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{H}</x><y>{W}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>{fz}</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{rH}</x><y>{rW}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{rfx}</x><y>{rfy}</y><z>{fz}</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{lmax}</maximum><center>{lc}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{smax}</maximum><center>0</center></slice>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
"""


def write_ismrmrd(path: str | Path, kspace: np.ndarray, recon_size: tuple[int, int],
                  sampled: np.ndarray | None = None, voxel_size: tuple[float, float, float] = (1.0, 1.0, 3.0),
                  noise_scans: int = 0, seed: int = 0) -> None:
    """Write fastMRI-layout k-space ``[slices, coils, H, W]`` as an ISMRMRD dataset (one
    acquisition per acquired line, the encoded grid's centre line as the limits' centre).

    Args:
        path: new file.
        kspace: complex ``[S, C, H, W]``.
        recon_size: ``(rH, rW)``.
        sampled: bool ``(W,)``, the lines to write (default all: fully sampled).
        voxel_size: mm on the recon grid ``(readout, phase-encode, slice spacing)``.
        noise_scans: noise acquisitions (flagged ``ACQ_IS_NOISE_MEASUREMENT``) written before
            each slice's imaging data, seeded by ``seed``.
    """
    import ismrmrd

    S, C, H, W = kspace.shape
    sampled = np.ones(W, bool) if sampled is None else np.asarray(sampled, bool)
    dx, dy, dz = voxel_size
    xml = _XML.format(C=C, H=H, W=W, rH=recon_size[0], rW=recon_size[1], fx=dx * H, fy=dy * W, fz=dz,
                      rfx=dx * recon_size[0], rfy=dy * recon_size[1], lmax=W - 1, lc=W // 2, smax=S - 1)
    rng = np.random.default_rng(seed)
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as ds:
        ds.write_xml_header(xml)
        for s in range(S):
            for _ in range(noise_scans):
                noise = (rng.standard_normal((C, H)) + 1j * rng.standard_normal((C, H))).astype(np.complex64)
                acq = ismrmrd.Acquisition.from_array(noise)
                acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
                ds.append_acquisition(acq)
            for line in np.flatnonzero(sampled):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(kspace[s, :, :, line], np.complex64),
                                                     center_sample=H // 2)
                acq.idx.kspace_encode_step_1 = int(line)
                acq.idx.slice = s
                acq.position[:] = (0.0, 0.0, s * dz)
                ds.append_acquisition(acq)
