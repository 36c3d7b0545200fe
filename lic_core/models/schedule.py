"""The hierarchical coding schedule of HPCM (ICCV 2025) as data, and the index maps that place
each scale's grid on the y grid.

Channels are split in groups. On the y grid (s3) group ``g`` of 8 sees its s2 grid at 2x2 phase
``S2_PHASE[g]``; on that s2 grid group ``j`` of 4 sees its s1 grid at phase ``S1_PHASE[j]``. Step ``k``
codes, on the grid of its scale, the positions given by ``Step.part``. All maps are built once per
latent size (``geometry``, cached) so the coding loop only gathers and scatters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import Tensor

S2_PHASE = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0))  # per group of M/8
S1_PHASE = ((0, 0), (0, 1), (1, 0), (1, 1))  # per group of M/4, on the s2 grid
# s2 parts: per group of M/4 the index of its 2x2 phase in S1_PHASE order (m0..m3).
FOUR_PARTS = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))
# s3: eight one-channel patterns with two positions on a 4x4 tile, and per part the pattern of each
# group of M/8.
PATTERNS = (
    ((0, 0), (2, 2)), ((0, 2), (2, 0)), ((1, 1), (3, 3)), ((1, 3), (3, 1)),
    ((0, 1), (2, 3)), ((0, 3), (2, 1)), ((1, 0), (3, 2)), ((1, 2), (3, 0)),
)
EIGHT_PARTS = (
    (0, 2, 4, 6, 1, 3, 5, 7), (1, 3, 5, 7, 0, 2, 4, 6), (2, 4, 6, 0, 3, 5, 7, 1),
    (3, 5, 7, 1, 2, 4, 6, 0), (4, 6, 0, 2, 5, 7, 1, 3), (5, 7, 1, 3, 4, 6, 0, 2),
    (6, 0, 2, 4, 7, 1, 3, 5), (7, 1, 3, 5, 6, 0, 2, 4),
)
# The 4x4-tile phase the authors' s1->s2 hyper gathering removes per group of M/8 (CONFORMANCE.md
# Sec. 8). It is the true s1 position only for groups 0 and 1.
AUTHORS_S1_TILE = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2))


class Step(NamedTuple):
    """One coding step: its scale (0 = s1, 1 = s2, 2 = s3), its part on that scale's grid, the
    adaptor and learnable-vector indices (None for step 0, which uses the hyper prior alone) and
    the prior module (0: shared s1/s2, 1: s3)."""

    scale: int
    part: int
    adaptor: int | None
    quant: int | None
    prior: int | None


# Adaptor indices are global: 0 = s1.0, 1..3 = s2.0..2, 4..9 = s3.0..5. The authors index each
# scale's list with [i - 1], i counted from 0, so Python's wrap makes s2 start with its adaptor 2
# and s3 with its adaptor 5; kept so their checkpoints load unchanged.
STEPS: tuple[Step, ...] = (
    Step(0, 0, None, None, None),
    Step(0, 1, 0, 0, 0),
    Step(1, 1, 3, 1, 0), Step(1, 2, 1, 2, 0), Step(1, 3, 2, 3, 0),
    Step(2, 2, 9, 4, 1), Step(2, 3, 4, 5, 1), Step(2, 4, 5, 6, 1),
    Step(2, 5, 6, 7, 1), Step(2, 6, 7, 8, 1), Step(2, 7, 8, 9, 1),
)
SCALE_OF_STEP: tuple[int, ...] = tuple(s.scale for s in STEPS)
N_ADAPTORS = 10
N_QUANT = 10


def _group(channels: int, groups: int) -> Tensor:
    return torch.arange(channels) // (channels // groups)


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    return torch.arange(h).view(h, 1), torch.arange(w).view(1, w)


def _s1_in_s2(m: int, h: int, w: int) -> Tensor:
    """Flat s2-grid position (M, h/4 * w/4) of each s1-grid element, row-major on the s1 grid."""
    r, c = _grid(h // 4, w // 4)
    ph = torch.tensor(S1_PHASE)[_group(m, 4)]
    return ((2 * r + ph[:, 0, None, None]) * (w // 2) + (2 * c + ph[:, 1, None, None])).flatten(1)


def scale_positions(m: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Flat y-grid positions (M, h/2 * w/2) of each s2 grid and (M, h/4 * w/4) of each s1 grid,
    row-major on the small grid."""
    r, c = _grid(h // 2, w // 2)
    ph = torch.tensor(S2_PHASE)[_group(m, 8)]  # (M, 2)
    pos2 = ((2 * r + ph[:, 0, None, None]) * w + (2 * c + ph[:, 1, None, None])).flatten(1)
    return pos2, pos2.gather(1, _s1_in_s2(m, h, w))


def grid_masks(m: int, h: int, w: int, step: Step) -> Tensor:
    """BoolTensor (M, hs, ws) of the positions ``step`` codes, on its scale's grid."""
    if step.scale == 0:
        r, c = _grid(h // 4, w // 4)
        odd = (_group(m, 2) == 1).view(-1, 1, 1)
        return ((r + c) % 2 == 0) ^ odd ^ bool(step.part)
    if step.scale == 1:
        r, c = _grid(h // 2, w // 2)
        ph = torch.tensor(S1_PHASE)[torch.tensor(FOUR_PARTS[step.part])[_group(m, 4)]]
        return (r % 2 == ph[:, 0, None, None]) & (c % 2 == ph[:, 1, None, None])
    r, c = _grid(h, w)
    tile = torch.zeros(8, 4, 4, dtype=torch.bool)
    for i, pts in enumerate(PATTERNS):
        for a, b in pts:
            tile[i, a, b] = True
    pat = torch.tensor(EIGHT_PARTS[step.part])[_group(m, 8)]
    return tile[pat][:, r % 4, c % 4]


def s2_hyper_source(m: int, h: int, w: int, aligned: bool) -> Tensor:
    """Flat y-grid index (M, h/2 * w/2) of the hyper parameter that each s2-grid position receives
    at the s1 -> s2 transition (entries at s1-coded positions are unused).

    ``aligned``: each position gets its own. Otherwise the authors' flat scan (CONFORMANCE.md Sec. 8):
    per channel the y-grid positions with tile phase in A_g minus ``AUTHORS_S1_TILE[g]`` go, in
    row-major order, to the s2-grid positions not coded in s1, in row-major order.
    """
    pos2, _ = scale_positions(m, h, w)
    if aligned:
        return pos2
    r, c = _grid(h, w)
    ph = torch.tensor(S2_PHASE)[_group(m, 8)].view(-1, 2, 1, 1)
    skip = torch.tensor(AUTHORS_S1_TILE)[_group(m, 8)].view(-1, 2, 1, 1)
    src = (r % 2 == ph[:, 0]) & (c % 2 == ph[:, 1]) & ~((r % 4 == skip[:, 0]) & (c % 4 == skip[:, 1]))
    dst = torch.ones(m, (h // 2) * (w // 2), dtype=torch.bool)
    dst.scatter_(1, _s1_in_s2(m, h, w), False)
    out = pos2.clone()
    flat = torch.arange(h * w).expand(m, -1)
    out[dst] = flat[src.flatten(1)]
    return out


@dataclass(frozen=True)
class Geometry:
    """Index maps for one latent size: ``pos[s]`` (M, n_s) flat y-grid position of each element of
    scale ``s``'s grid (s1, s2; s3 is the identity), ``up[s]`` (M, n_s) flat position of scale s's
    grid inside scale s+1's grid, ``hyper2`` (M, n_2) the s2 hyper source, ``grid_masks[k]`` the
    positions of step k on its grid, ``masks`` (11, M, h, w) the same on the y grid and
    ``scale_masks`` (3, M, h, w) the union over each scale's steps."""

    h: int
    w: int
    pos: tuple[Tensor, Tensor]
    up: tuple[Tensor, Tensor]
    hyper2: Tensor
    grid_masks: tuple[Tensor, ...]
    masks: Tensor
    scale_masks: Tensor


@lru_cache(maxsize=32)
def geometry(m: int, h: int, w: int, aligned: bool, device: torch.device) -> Geometry:
    """The cached index maps of a (M, h, w) latent; ``h`` and ``w`` must be multiples of 4."""
    # built as ordinary tensors even when first asked for under torch.inference_mode (Solution 1's
    # second forward): an inference tensor in the cache would fail every later training forward
    with torch.inference_mode(False):
        return _geometry(m, h, w, aligned, device)


def _geometry(m: int, h: int, w: int, aligned: bool, device: torch.device) -> Geometry:
    pos2, pos1 = scale_positions(m, h, w)
    up1 = _s1_in_s2(m, h, w)
    gm = tuple(grid_masks(m, h, w, s) for s in STEPS)
    full = torch.zeros(len(STEPS), m, h * w, dtype=torch.bool)
    for k, s in enumerate(STEPS):
        flat = gm[k].flatten(1)
        if s.scale == 2:
            full[k] = flat
        else:
            full[k].scatter_(1, (pos1, pos2)[s.scale], flat)
    full = full.view(len(STEPS), m, h, w)
    of_step = torch.tensor(SCALE_OF_STEP)
    per_scale = torch.stack([full[of_step == s].any(0) for s in range(3)])
    to = dict(device=device)
    return Geometry(
        h, w,
        pos=(pos1.to(**to), pos2.to(**to)),
        up=(up1.to(**to), pos2.to(**to)),
        hyper2=s2_hyper_source(m, h, w, aligned).to(**to),
        grid_masks=tuple(g.to(**to) for g in gm),
        masks=full.to(**to),
        scale_masks=per_scale.to(**to),
    )
