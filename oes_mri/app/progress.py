"""What a run reports as it goes: the :class:`Progress` interface the pipeline calls, and the
CLI's two displays (tqdm bars on a terminal, log lines otherwise)."""

from __future__ import annotations

import logging
import sys
from typing import Callable

log = logging.getLogger("oes_mri")


class Progress:
    """What a run reports as it goes (the CLI shows tqdm bars or log lines); does nothing here."""

    def volume(self, name: str, jobs: int) -> None:
        """A volume starts with ``jobs`` (slice, method) reconstructions to do."""

    def fit(self, desc: str, steps: int) -> Callable[[int, dict], None] | None:
        """A generator fit of ``steps`` starts; returns its ``progress(step, info)`` callback."""
        return None

    def done(self, desc: str, seconds: float, jobs: int = 1) -> None:
        """``jobs`` reconstructions finished."""

    def volume_done(self) -> None:
        """The volume's outputs are written."""


def _shown(info: dict) -> dict:
    """What a progress display shows of a fit's log entry."""
    return {k: v for k, v in info.items() if k in ("loss", "val", "psnr")}


class BarProgress(Progress):
    """tqdm bars on a terminal: one per volume ((slice, method) jobs), one per fit (steps,
    loss, PSNR when a target exists)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.tqdm, self.bar, self.fit_bar = tqdm, None, None

    def volume(self, name: str, jobs: int) -> None:
        self.bar = self.tqdm(total=jobs, desc=name, unit="job", position=0, leave=True, file=sys.stderr)

    def fit(self, desc: str, steps: int):
        bar = self.fit_bar = self.tqdm(total=steps, desc=desc.split(" ", 1)[-1], unit="step", position=1,
                                       leave=False, file=sys.stderr)

        def update(step: int, info: dict) -> None:
            bar.update(step - bar.n)
            bar.set_postfix({k: f"{v:.4g}" for k, v in _shown(info).items()}, refresh=False)
            if step >= steps:
                bar.close()
        return update

    def done(self, desc: str, seconds: float, jobs: int = 1) -> None:
        if self.fit_bar is not None:                  # a fit stopped by its held-out data ends early
            self.fit_bar.close()
            self.fit_bar = None
        if self.bar is not None:
            self.bar.update(jobs)

    def volume_done(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LogProgress(Progress):
    """Plain log lines (not a terminal)."""

    def volume(self, name: str, jobs: int) -> None:
        log.info("%s: %d reconstruction(s) to do", name, jobs)

    def fit(self, desc: str, steps: int):
        def update(step: int, info: dict) -> None:
            extra = "".join(f" {k} {v:.4g}" for k, v in _shown(info).items())
            log.info("%s: step %d/%d%s", desc, step, steps, extra)
        return update

    def done(self, desc: str, seconds: float, jobs: int = 1) -> None:
        log.info("%s: done in %.1fs", desc, seconds)
