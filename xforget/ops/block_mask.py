"""The pruning plan as a FlexAttention ``BlockMask``: which (query block, key block) tiles run, and how.

FlexAttention (``torch.nn.attention.flex_attention``) skips every tile that its
``BlockMask`` does not list, runs "full" tiles without evaluating the mask, and
evaluates the ``mask_mod`` only in "partial" tiles.  Everything that decides
which keys a query may see in a causal forgetting-attention call is known per
tile, so the block mask is built from tile arithmetic alone, never by
evaluating an n x n mask:

* causality: key block ``[K0, K1]`` and query positions ``[P0, P1]`` (query
  ``m`` sits at key position ``m + n_k - n_q``): nothing visible when
  ``K0 > P1``; every key visible to every query when ``K1 <= P0``;
* padding (``mask``, True = real key): a prefix count of real keys gives
  "any real key in a range" and "all keys real" in O(1) per tile;
* packed documents (``document_ids``, non-decreasing): a query at ``p`` sees
  key ``k < p`` iff ``k >= seg(p)``, the first position of p's document; so a
  tile sees something iff a real key lies in ``[max(K0, seg(P0)), min(K1, P1)]``
  and sees everything iff ``K0 >= seg(P1)`` (one document spans the tile);
* pruning (:mod:`xforget.ops.prune`, DESIGN.md 3.1): ``starts`` (b, h,
  n_q_blocks), the first kept key of every (batch, head, query block) from
  :func:`xforget.ops.prune.block_starts`, computed with the block mask's own
  tile sizes so that each start is a multiple of the key block: tiles before it
  are dropped (the bound covers every key there), tiles from it on are kept.

A tile is *full* when every (query, key) pair in it is visible and the tile is
whole (a last block shorter than the block size is always partial, as in
``create_block_mask``), *partial* when some pair is visible, and absent
otherwise.  The ``mask_mod`` (:func:`visibility_mod`) states the same
visibility per pair, pruning included, so FlexAttention's eager CPU path
(which evaluates ``mask_mod`` on every pair and ignores the tile lists) and
the compiled CUDA kernel (which visits only the listed tiles) compute the same
thing.  Tile tensors are (B, H, n_q_blocks, n_k_blocks): n^2 / (128 * 128)
entries, the size of the ``BlockMask`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from xforget.ops.common import Shapes, Tensor
from xforget.ops.documents import segment_starts

FLEX_BLOCK = 128  # query rows and keys per tile: FlexAttention's default (its CUDA kernels tile by it)


@dataclass(frozen=True)
class TilePlan:
    """Which tiles of a causal call run.

    Attributes:
        partial: (B, H, n_q_blocks, n_k_blocks) bool, tiles where some pairs are visible (mask evaluated).
        full: same shape, tiles where every pair is visible (mask not evaluated); disjoint from ``partial``.
        q_block, kv_block: tile sizes (query rows, keys).
    B is 1 when no input depends on the batch row, H is 1 when no pruning plan depends on the head.
    """

    partial: Tensor
    full: Tensor
    q_block: int
    kv_block: int


def tile_plan(
    s: Shapes,
    device,
    *,
    mask: Optional[Tensor] = None,
    document_ids: Optional[Tensor] = None,
    starts: Optional[Tensor] = None,
    q_block: int = FLEX_BLOCK,
    kv_block: int = FLEX_BLOCK,
) -> TilePlan:
    """The full and partial tiles of a causal call from tile arithmetic (module docstring).

    Args:
        s: the call's sizes (queries are the last ``n_q`` key positions).
        mask: (b, n_k) bool, True = real key, or None.
        document_ids: (b, n_k) int, non-decreasing per row, or None.
        starts: (b or 1, h or 1, n_q_blocks) int64 first kept key of each query block
            (:func:`xforget.ops.prune.block_starts` with ``block=q_block``), or None (keep every key).
        q_block, kv_block: tile sizes.
    Returns:
        a :class:`TilePlan`; O(B H n_q_blocks n_k_blocks) work and memory, no per-pair evaluation.
    """
    nqb, nkb = -(-s.n_q // q_block), -(-s.n_k // kv_block)
    q0 = torch.arange(nqb, device=device) * q_block
    q1 = torch.clamp(q0 + q_block, max=s.n_q)  # exclusive
    p0, p1 = q0 + s.offset, q1 - 1 + s.offset  # first and last query position of each block
    k0 = torch.arange(nkb, device=device) * kv_block
    k1 = torch.clamp(k0 + kv_block, max=s.n_k) - 1  # inclusive
    whole = ((q1 - q0) == q_block)[:, None] & ((k1 - k0 + 1) == kv_block)[None, :]  # (nqb, nkb)

    # lower end of the visible keys of a tile: the key block, the first query's document, the kept prefix
    lo = k0.view(1, 1, 1, nkb)
    seg_first = seg_last = None
    if document_ids is not None:
        seg = segment_starts(document_ids)  # (b, n_k)
        seg_first, seg_last = seg[:, p0][:, None, :, None], seg[:, p1][:, None, :, None]  # (b, 1, nqb, 1)
        lo = torch.maximum(lo, seg_first)
    if starts is not None:
        lo = torch.maximum(lo, starts[..., None])
    hi = torch.minimum(k1[None, :], p1[:, None]).view(1, 1, nqb, nkb)  # upper end: the key block, causality
    if mask is None:
        visible = hi >= lo
        all_real = None
    else:
        count = torch.nn.functional.pad(mask.long().cumsum(-1), (1, 0))  # (b, n_k + 1) real keys before x
        b = mask.shape[0]
        shape = torch.broadcast_shapes(lo.shape, hi.shape, (b, 1, 1, 1))
        cnt = count.view(b, 1, 1, -1).expand(b, shape[1], shape[2], s.n_k + 1)
        lo_i = lo.expand(shape).clamp(0, s.n_k)
        hi_i = (hi + 1).expand(shape).clamp(0, s.n_k)
        visible = (hi + 1 > lo) & (cnt.gather(-1, hi_i) > cnt.gather(-1, lo_i))
        all_real = (count[:, k1 + 1] - count[:, k0]) == (k1 - k0 + 1)  # (b, nkb)
        all_real = all_real[:, None, None, :]

    full = whole & (k1[None, :] <= p0[:, None])  # (nqb, nkb): every pair causal
    full = full.view(1, 1, nqb, nkb)
    if starts is not None:
        full = full & (k0.view(1, 1, 1, nkb) >= starts[..., None])
    if all_real is not None:
        full = full & all_real
    if seg_last is not None:
        full = full & (k0.view(1, 1, 1, nkb) >= seg_last)
    shape = torch.broadcast_shapes(visible.shape, full.shape)
    visible, full = visible.expand(shape), full.expand(shape)
    return TilePlan(visible & ~full, full.clone(), q_block, kv_block)


def visibility_mod(
    s: Shapes,
    *,
    mask: Optional[Tensor] = None,
    document_ids: Optional[Tensor] = None,
    starts: Optional[Tensor] = None,
    q_block: int = FLEX_BLOCK,
) -> Callable:
    """The FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` of the same visibility as :func:`tile_plan`.

    Causal (lower right), real keys only, same document, and (with ``starts``) no key before the query
    block's first kept key.  ``starts`` must be (b or 1 broadcast to b, h, n_q_blocks): it is expanded
    here so that the batch and head indices are always valid.
    """
    off = s.offset
    st = None if starts is None else starts.expand(s.b, s.h, starts.shape[-1]).contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + off
        ok = kv_idx <= p
        if mask is not None:
            ok = ok & mask[b, kv_idx]
        if document_ids is not None:
            ok = ok & (document_ids[b, kv_idx] == document_ids[b, p])
        if st is not None:
            ok = ok & (kv_idx >= st[b, h, q_idx // q_block])
        return ok

    return mask_mod


def _ordered(tiles: Tensor) -> tuple[Tensor, Tensor]:
    """(count, indices) as ``BlockMask`` wants them: int32 counts and the listed key blocks first, ascending."""
    count = tiles.sum(-1, dtype=torch.int32)
    order = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return count, order


def block_mask(plan: TilePlan, s: Shapes, mask_mod: Callable):
    """The ``torch.nn.attention.flex_attention.BlockMask`` of ``plan`` (``BlockMask.from_kv_blocks``)."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_num, kv_idx = _ordered(plan.partial)
    full_num, full_idx = _ordered(plan.full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx,
        BLOCK_SIZE=(plan.q_block, plan.kv_block), mask_mod=mask_mod, seq_lengths=(s.n_q, s.n_k),
    )
