"""The attention backend interface: one :class:`AttentionCall` in, ``(b, h, n_q, d_v)`` out.

Every kernel of :mod:`xforget.ops` ("reference", "fold", "chunked", "decode", "flex", "fla",
"cuda", the SDPA paths and the materialised "dense" path) is a
:class:`Backend`: a function of one :class:`AttentionCall`.  The dispatcher
(:mod:`xforget.ops.dispatch`) builds the call once (checks, scale default,
causal attention dropping the backward gate), picks the backend (one routing
decision) and calls it; a backend only states what it cannot serve
(:meth:`AttentionCall.require_causal`) and computes.

Conventions (DESIGN.md section 2):

* ``q`` is ``(b, h, n_q, d)``; ``k`` and ``v`` are ``(b, h_kv, n_k, d)``,
  ``h_kv`` dividing ``h`` (query head ``i`` reads kv head ``i // (h // h_kv)``).
* When ``n_q < n_k`` the queries are the last ``n_q`` positions: query ``m``
  sits at position ``m + n_k - n_q``.
* ``mask`` is ``(b, n_k)`` bool, True = real key; pad keys neither forget nor
  receive weight, and rows with no visible real key give exactly 0.
* ``document_ids`` is ``(b, n_k)`` int64, non-decreasing per row, or None: a
  query sees only the keys of its own document (exactly zero weight for the
  others), and decays are cumulated per document (:mod:`xforget.ops.documents`).
* The decay bias is ``D_ij = c_i - c_j`` (``j <= i``, ``c = cumsum(log_fgate)``)
  and ``r_j - r_i`` (``j > i``, bidirectional only, ``r = cumsum(log_bgate)``),
  cumulated in >= fp32 and added to the scaled logits *without* the scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


from xforget.ops.common import (
    Shapes,
    Tensor,
    check_inputs,
    cumulative_gate,
    default_scale,
    key_gates,
    valid_rows,
    zero_invalid_rows,
)
from xforget.ops.documents import (
    check_document_ids,
    document_rows,
    memory_keys,
    same_document,
    segment_starts,
    segmented_cumsum,
)
from xforget.ops.prune import PRUNE_EPS, check_eps


@dataclass(frozen=True)
class AttentionCall:
    """The inputs every attention backend takes, checked once.

    Attributes:
        q: ``(b, h, n_q, d)`` float (fp64/fp32/bf16/fp16).
        k, v: ``(b, h_kv, n_k, d)``, q's dtype (the dense path also takes mixed
            dtypes and ``n_q > n_k``, see :func:`unchecked_call`).
        shapes: the sizes above (:class:`xforget.ops.common.Shapes`).
        causal: keys after each query are hidden.
        scale: logit scale, resolved (``1/sqrt(d)`` unless given); it does not
            multiply the decay bias.
        mask: ``(b, n_k)`` bool key mask (True = real key) or None.
        log_fgate: ``(b, h, n_k)`` per-key log forget values (<= 0, any float
            dtype, broadcastable over b and h) or None: a "decay" bias.
        log_bgate: ``(b, h, n_k)`` log backward gates (bidirectional only;
            always None when ``causal``).
        bias: dense additive logit bias broadcastable to ``(b, h, n_q, n_k)``
            or None: a "matrix" bias.
        prune: adaptive computation pruning where a backend implements it
            (:mod:`xforget.ops.prune`); ``prune_eps`` in (0, 1) is the pruned
            attention mass per row.
        key_norm: ``(b, h_kv, n_k)`` L2 norms of k, if known (the KV cache keeps
            them for the pruning bound), or None.
        memory: ``(mem_k, mem_v)``, each ``(b, h_kv, m, d)``: learned keys
            prepended to every row, never masked or decayed; or None.
        softclamp: ``c > 0`` for logits <- ``c tanh(logits / c)``, or None.
        dropout: probability of zeroing an attention weight (0 = none).
        document_ids: ``(b, n_k)`` int64 document of every key, non-decreasing along each row, or
            None (one document): packed documents never see each other (:mod:`xforget.ops.documents`).
        document_memory: the keys whose document id is :data:`~xforget.ops.documents.MEMORY_DOCUMENT`
            are memory tokens (the row's first keys) that every document sees as if they stood right
            in front of it (:mod:`xforget.ops.documents`); only the materialised paths serve it
            (:func:`xforget.ops.dispatch.route` sends these calls to "dense").
    """

    q: Tensor
    k: Tensor
    v: Tensor
    shapes: Shapes
    causal: bool
    scale: float
    mask: Optional[Tensor] = None
    log_fgate: Optional[Tensor] = None
    log_bgate: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    prune: bool = True
    prune_eps: float = PRUNE_EPS
    key_norm: Optional[Tensor] = None
    memory: Optional[tuple[Tensor, Tensor]] = None
    softclamp: Optional[float] = None
    dropout: float = 0.0
    document_ids: Optional[Tensor] = None
    document_memory: bool = False

    def forward_decay(self, dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
        """``c = cumsum(log_fgate)`` in ``dtype`` (default >= fp32), ``(b, h, n_k)``, pads contributing 0;
        None without a gate.

        With ``document_ids`` the sum restarts at every document (only differences within a
        document are ever used), so ``|c|`` never grows with the number of documents before.
        """
        return self._cumulate(self.log_fgate, dtype)

    def backward_decay(self, dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
        """``r = cumsum(log_bgate)`` like :meth:`forward_decay`; None when causal or without a gate."""
        return None if self.causal else self._cumulate(self.log_bgate, dtype)

    def _cumulate(self, log_gate: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
        if self.document_ids is None or log_gate is None:
            return cumulative_gate(log_gate, self.mask, self.shapes, dtype)
        memory = memory_keys(self.document_ids) if self.document_memory else None
        return segmented_cumsum(key_gates(log_gate, self.mask, self.shapes, dtype), segment_starts(self.document_ids),
                                memory)

    def document_starts(self) -> Optional[Tensor]:
        """``(b, n_k)`` int64 first key of every key's document, or None without ``document_ids``."""
        return None if self.document_ids is None else segment_starts(self.document_ids)

    def document_mask(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        """``(b, 1, m, n)`` bool: query at key position ``q_pos`` (m,) and key ``k_pos`` (n,) share a
        document (or the key is a memory token, with ``document_memory``); None without ``document_ids``
        (every pair does)."""
        if self.document_ids is None:
            return None
        return same_document(self.document_ids, q_pos, k_pos, self.document_memory)

    def rows(self) -> Optional[Tensor]:
        """``(b, n_q)`` bool: the query rows with at least one visible real key (None: all of them)."""
        if self.document_ids is not None and self.mask is not None:
            return document_rows(self.mask, self.document_ids, self.shapes, self.causal, self.document_memory)
        return valid_rows(self.mask, self.shapes, self.causal)

    def finish(self, out: Tensor) -> Tensor:
        """The backend's ``(b, h, n_q, d_v)`` output with rows without a visible key zeroed, in q's dtype."""
        return zero_invalid_rows(out, self.rows()).to(self.q.dtype)

    def require_causal(self, backend: str) -> None:
        """``ValueError`` naming ``backend`` when the call is bidirectional."""
        if not self.causal:
            raise ValueError(
                f"backend {backend!r} serves causal attention only; use 'chunked' or 'reference' for causal=False"
            )


class Backend(Protocol):
    """An attention kernel.

    Called with one :class:`AttentionCall`; returns ``(b, h, n_q, d_v)`` in q's
    dtype, differentiable w.r.t. every float input.  Raises ``ValueError`` for
    a call it cannot serve (e.g. "fold" with ``causal=False``).
    """

    def __call__(self, call: AttentionCall) -> Tensor: ...


def checked_call(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, **inputs) -> AttentionCall:
    """An :class:`AttentionCall` for the O(n) and SDPA kernels, after the common checks.

    ``inputs``: the other fields of :class:`AttentionCall` by name (``mask``,
    ``log_fgate``, ``log_bgate``, ``bias``, ``scale`` (None: ``1/sqrt(d)``),
    ``prune``, ``prune_eps``, ``key_norm``, ``document_ids``); a backward gate is
    dropped when ``causal`` (it has no effect there).

    Raises:
        ValueError: inconsistent shapes or dtypes (:func:`xforget.ops.common.check_inputs`),
            ``bias`` not 4-d, ``prune_eps`` outside (0, 1), ``document_ids`` not (b, n_k) integers
            non-decreasing along each row.
    """
    per_key = {name: inputs.get(name) for name in ("mask", "log_fgate", "log_bgate")}
    shapes = check_inputs(q, k, v, **per_key)
    bias = inputs.get("bias")
    if bias is not None and bias.dim() != 4:
        raise ValueError(f"bias must be 4-d, broadcastable to (b, h, n_q, n_k); got {tuple(bias.shape)}")
    inputs.update(prune=bool(inputs.get("prune", True)), prune_eps=check_eps(inputs.get("prune_eps", PRUNE_EPS)))
    if inputs.get("document_ids") is not None:
        check_document_ids(inputs["document_ids"], shapes.b, shapes.n_k)
    return _call(q, k, v, shapes, causal, inputs)


def unchecked_call(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, **inputs) -> AttentionCall:
    """An :class:`AttentionCall` taken as the layer passes it, for the paths that run before any autocast cast.

    ``inputs`` as in :func:`checked_call`, and ``memory``, ``softclamp``,
    ``dropout``.  The dense path and the memory-key path compute in >= fp32
    themselves and take q, k, v in different dtypes (under autocast the
    projections and the rotary embedding disagree), and the dense path serves
    more queries than keys (cross-attention to a short context); so nothing
    is checked here.
    """
    b, h, n_q, d = q.shape
    return _call(q, k, v, Shapes(b, h, k.shape[1], n_q, k.shape[2], d, v.shape[-1]), causal, inputs)


def _call(q: Tensor, k: Tensor, v: Tensor, shapes: Shapes, causal: bool, inputs: dict) -> AttentionCall:
    """The common opening: the scale resolved, the backward gate dropped when causal."""
    scale = default_scale(shapes.d, inputs.pop("scale", None))
    if causal:
        inputs["log_bgate"] = None  # a backward gate has no effect on causal attention
    return AttentionCall(q, k, v, shapes, causal, scale, **inputs)
