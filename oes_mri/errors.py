"""The one exception type for bad input: its message is one line naming the file and the problem."""

from __future__ import annotations

import os


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type's name."""
    return ((str(err).splitlines() or [""])[0][:limit]) or type(err).__name__


class InputError(ValueError):
    """Bad input (a file, a mask, an option). ``str(err)`` is one line for the user."""

    def __init__(self, source: str | os.PathLike | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the check of every settings object."""
    if not ok:
        raise ValueError(message)
