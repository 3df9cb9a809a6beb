"""ASCII drawing of a CORA along one lattice axis (used by :meth:`deeprg.cora.Cora.draw`).

Every visible site is three characters wide; a site of level ``l`` spans the ``2^l`` visible sites
of its block. Coarse-graining maps ``W`` are drawn over the block they generate, disentanglers
``U`` over the pair of sites they act on (the last one wraps around the periodic boundary: its
right half is drawn at the end of the row, ``[--U->``, its left half at the start, ``<--]``).
"""

from __future__ import annotations

__all__ = ["draw_chain"]

_CELL = 4


def _bracket(row: list[str], start: int, length: int, label: str) -> None:
    """Draw ``[---label---]`` over ``length`` characters from ``start``; a bracket running past the
    end of the row continues at its start, drawn as ``[--label->`` ... ``<--]``."""
    width = len(row)
    for i in range(length):
        row[(start + i) % width] = "-"
    row[start % width] = "["
    row[(start + length - 1) % width] = "]"
    if start + length > width:  # periodic wrap
        row[width - 1], row[0] = ">", "<"
        row[(start + width) // 2] = label
    else:
        row[start + length // 2] = label


def _level_row(width: int, n_sites: int) -> str:
    row = [" "] * width
    span = width // n_sites
    for i in range(n_sites):
        row[i * span + span // 2] = "o"
    return "".join(row)


def draw_chain(L: int, has_disentangler: list[bool], chi: int, visible: int, d: int = 1) -> list[str]:
    """Rows of the drawing of a chain of ``L`` visible sites with ``len(has_disentangler)``
    layers (``has_disentangler[j-1]`` for layer ``j``), from the top state down."""
    n = len(has_disentangler)
    width = _CELL * L

    def label(level: int) -> str:
        sites = (L >> level) ** d
        dim = visible if level == 0 else chi
        return f"({sites} site{'s' if sites > 1 else ''}, dim {dim})"

    rows = [f"level {n}   {_level_row(width, 1)}   top state e {label(n)}"]
    for j in range(n, 0, -1):
        span = _CELL << j  # characters covered by one site of level j
        w_row = [" "] * width
        for c in range(L >> j):
            _bracket(w_row, c * span, span, "W")
        rows.append(f"layer {j} W {''.join(w_row)}   coarse-graining: 1 site -> its block of {2**d}")
        if has_disentangler[j - 1]:
            u_row = [" "] * width
            half = span // 2  # one site of level j-1
            for p in range(L >> j):
                _bracket(u_row, (2 * p + 1) * half, span, "U")
            rows.append(f"layer {j} U {''.join(u_row)}   disentanglers across block boundaries")
        kind = "visible" if j == 1 else "hidden"
        rows.append(f"level {j - 1}   {_level_row(width, L >> (j - 1))}   {kind} {label(j - 1)}")
    return rows
