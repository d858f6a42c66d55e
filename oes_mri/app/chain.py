"""The order in which a volume's slices are fitted when they warm-start each other.

The reference slice (the middle selected one, where the volume's OES mask is learned) starts
from the random init; every other selected slice starts from the fitted weights of its
*parent*, the selected slice next to it on the side of the reference. The chain runs outward
in both directions, so a slice waits only for its parent, and the two directions can be
fitted side by side (:func:`waves`).
"""

from __future__ import annotations

from typing import NamedTuple


class Link(NamedTuple):
    """One slice of the chain and the slice it starts from (``None``: the random init)."""
    index: int
    parent: int | None


def parents(indices: list[int], reference: int) -> dict[int, int | None]:
    """``slice -> parent`` over the selected ``indices`` (sorted): the neighbour toward ``reference``.

    >>> parents([0, 1, 2, 3], 2)
    {0: 1, 1: 2, 2: None, 3: 2}
    """
    pos = indices.index(reference)
    return {i: (None if k == pos else indices[k - 1] if k > pos else indices[k + 1]) for k, i in enumerate(indices)}


def children(indices: list[int], reference: int) -> dict[int, list[int]]:
    """``slice -> the slices that start from it``."""
    out: dict[int, list[int]] = {i: [] for i in indices}
    for i, p in parents(indices, reference).items():
        if p is not None:
            out[p].append(i)
    return out


def waves(indices: list[int], reference: int, todo: list[int], width: int) -> list[list[Link]]:
    """The ``todo`` slices in waves of at most ``width`` slices whose parents are fitted (done
    before, or in an earlier wave), nearest to the reference first. A slice whose parent is
    neither done nor to do (not selected) cannot occur: every selected slice's parent is selected.

    >>> [[l.index for l in w] for w in waves([0, 1, 2, 3, 4], 2, [0, 1, 2, 3, 4], 2)]
    [[2], [1, 3], [0, 4]]
    """
    par = parents(indices, reference)
    pending = [i for i in indices if i in set(todo)]
    done = set(indices) - set(pending)
    distance = {i: abs(indices.index(i) - indices.index(reference)) for i in indices}
    out: list[list[Link]] = []
    while pending:
        ready = sorted((i for i in pending if par[i] is None or par[i] in done), key=lambda i: (distance[i], i))
        wave = [Link(i, par[i]) for i in ready[:max(1, width)]]
        out.append(wave)
        done.update(link.index for link in wave)
        pending = [i for i in pending if i not in done]
    return out
