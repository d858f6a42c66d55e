"""The application the command line runs: volumes -> slices -> methods -> outputs
(:mod:`~oes_mri.app.pipeline`, :mod:`~oes_mri.app.volume`), resumable and atomic, with the
warm chain's order (:mod:`~oes_mri.app.chain`), Ray (:mod:`~oes_mri.app.ray_runner`),
checkpoints (:mod:`~oes_mri.app.storage`), report and figures, progress. Nothing in the
library imports from here.

    from oes_mri.app import RunConfig, run
"""

from oes_mri.app.pipeline import run
from oes_mri.app.volume import RunConfig

__all__ = ["RunConfig", "run"]
