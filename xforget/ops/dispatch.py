"""Public entry points: :func:`forgetting_attention` and :func:`attend`; :func:`route`, the one routing decision.

Forgetting attention: FoX, Lin, Nikishin, He, Courville, "Forgetting
Transformer: Softmax Attention with a Forget Gate", ICLR 2025,
arXiv 2503.02130.  The O(n)-memory causal path is the key-channel fold of
DESIGN.md section 3 (``fold.py``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from xforget.ops.backend import Backend, checked_call, unchecked_call
from xforget.ops.chunked import chunked_attention
from xforget.ops.common import Tensor
from xforget.ops.cuda import cuda_attention
from xforget.ops.decode import MAX_DECODE_QUERIES, decode_attention
from xforget.ops.dense import materialised_attention
from xforget.ops.fla import fla_attention
from xforget.ops.flex import flex_attention_backend
from xforget.ops.fold import fold_attention
from xforget.ops.memory import memory_attention
from xforget.ops.prune import PRUNE_EPS
from xforget.ops.reference import reference_attention
from xforget.ops.sdpa import dense_bias_attention, plain_attention

BACKENDS = ("auto", "reference", "fold", "chunked", "decode", "flex", "fla", "cuda")

# Every kernel by the name :func:`route` gives it: the user-selectable backends, then the
# internal ones. Calls look the kernel up here at call time (tests spy on this table).
_IMPLS: dict[str, Backend] = {
    "reference": reference_attention,
    "fold": fold_attention,
    "chunked": chunked_attention,
    "decode": decode_attention,
    "flex": flex_attention_backend,
    "fla": fla_attention,
    "cuda": cuda_attention,  # the fold on GPU SDPA (kept by name; float64 on CUDA)
    "sdpa": plain_attention,  # no gates, no bias
    "sdpa_bias": dense_bias_attention,  # a matrix bias, no gates
    "dense": materialised_attention,  # the logits materialised (softclamp, dropout, ...)
}
MATRIX_BIAS_BACKENDS = ("reference", "chunked")  # the user-selectable backends that take a matrix bias


def resolve_backend(backend: Optional[str], *, q: Tensor, causal: bool, n_k: Optional[int] = None) -> str:
    """Name of the backend that will run; ``ValueError`` for an unknown name."""
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if not causal:
        return "chunked"
    n_q = q.shape[-2]
    if n_k is not None and n_q <= MAX_DECODE_QUERIES and n_q < n_k:
        return "decode"  # KV-cached decoding (any device): O(n_k) logits, no cache copy, pruned prefix
    if q.is_cuda:
        # FlexAttention: the decay in fp32 inside the kernel, pruning as its block mask; its Triton
        # kernels take fp32/bf16/fp16, so float64 (reference runs) takes the fold on GPU SDPA
        return "cuda" if q.dtype == torch.float64 else "flex"
    return "fold"


def route(backend: Optional[str], *, q: Tensor, n_k: int, causal: bool, decay: bool, matrix: bool,
          memory: bool = False, logits: bool = False, documents: bool = False,
          document_memory: bool = False) -> str:
    """The one routing decision of the attention layer: the name of the kernel in ``_IMPLS`` (or "memory").

    The bias kind of :mod:`xforget.nn.bias` decides, never a scheme name:
    ``decay`` (per-key log gates: FoX, ALiBi; O(n) memory) and ``matrix`` (a
    dense (.., n_q, n_k) bias: T5, dynamic, per-row FoX).  In order:

    * "dense" (materialised logits) when ``logits`` (softclamp, dropout), for
      bidirectional attention without decay and with more queries than keys
      (cross-attention to a short context), for ``memory`` keys with a
      decay that does not fold (bidirectional, or with a matrix bias as well),
      for ``memory`` keys with packed ``documents`` (memory keys are seen by
      every document, which the block-diagonal paths do not express), and for
      packed ``documents`` with ``document_memory`` (memory tokens in the row, seen
      by every document: O(n_q n_k) memory);
    * "memory": memory keys folded into ordinary inputs, which route again;
    * an explicit ``backend`` ("reference", "fold", ...) is honoured (a matrix
      bias needs "reference" or "chunked");
    * decay and matrix: "chunked"; matrix only: "sdpa_bias"; neither: "sdpa";
      decay only: :func:`resolve_backend` (decode for few queries over more keys,
      flex on CUDA, fold on the CPU, or chunked when bidirectional).

    Args:
        backend: None/"auto" or a name in :data:`BACKENDS`.
        q: the queries ``(b, h, n_q, d)`` (only their device and length are read).
        n_k: number of keys (without memory keys).

    Raises:
        ValueError: an unknown backend (the message lists the valid ones); a
            matrix bias with a backend other than "reference"/"chunked".
    """
    name = "auto" if backend is None else backend
    resolve_backend(name, q=q, causal=causal)  # validates the name
    cross = not causal and not decay and q.shape[-2] > n_k  # more queries than keys: no positions to align
    shared_keys = documents and (memory or document_memory)  # keys every document sees: no block-diagonal path
    if logits or cross or shared_keys or (memory and decay and (matrix or not causal)):
        return "dense"
    if memory:
        return "memory"
    if matrix and name not in ("auto",) + MATRIX_BIAS_BACKENDS:
        raise ValueError(f"backend {name!r} cannot take a dense bias; use 'auto', 'chunked' or 'reference'")
    if name != "auto":
        return name
    if matrix:
        return "chunked" if decay else "sdpa_bias"
    if not decay:
        return "sdpa"
    return resolve_backend(name, q=q, causal=causal, n_k=n_k)


def forgetting_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_fgate: Optional[Tensor],
    *,
    causal: bool = True,
    mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    log_bgate: Optional[Tensor] = None,
    backend: Optional[str] = None,
    prune: bool = True,
    prune_eps: float = PRUNE_EPS,
    key_norm: Optional[Tensor] = None,
    document_ids: Optional[Tensor] = None,
) -> Tensor:
    """Softmax attention with a data-dependent forget gate (FoX).

    ``O = softmax(q k^T * scale + D + masks) v`` with the decay bias (not scaled)

        c = cumsum(log_fgate),  D_ij = c_i - c_j        for key j <= query i
        r = cumsum(log_bgate),  D_ij = r_j - r_i        for j > i (causal=False only)

    Args:
        q: ``(b, h, n_q, d)`` float (fp64/fp32/bf16/fp16).
        k, v: ``(b, h_kv, n_k, d)``, same dtype; ``h_kv`` divides ``h``
            (grouped-query: query head i reads kv head ``i // (h // h_kv)``).
            If ``n_q < n_k`` the queries are the last ``n_q`` positions
            (decoding / chunked prefill): query m sits at ``m + n_k - n_q``.
        log_fgate: ``(b, h, n_k)`` per-token log forget values (<= 0), any float
            dtype, broadcastable over b and h; cumulated in fp32.  ``None``: no
            forward decay.
        causal: ``True`` (default) for causal attention.  ``False`` is
            bidirectional with backward decay from ``log_bgate`` (zero if None).
        mask: ``(b, n_k)`` bool, True = real key.  Pad keys do not forget
            (log gates treated as 0) and get exactly zero weight; rows with no
            visible real key return 0 with finite (zero) gradients.
        scale: logit scale, default ``1/sqrt(d)``; it does not multiply ``D``.
        log_bgate: ``(b, h, n_k)`` log backward gates (bidirectional only).
        backend: ``None``/"auto", "reference" (dense, O(n_q n_k) memory, the
            oracle), "fold" (DESIGN.md section 3, causal only, O(n) memory),
            "chunked" (query blocks + checkpointing, O(block n_k) memory, any
            case), "decode" (causal, few queries over a long KV cache: logits
            with the bias added directly, O(n_q n_k) memory), "flex"
            (FlexAttention: the decay added in fp32 inside the fused kernel,
            causality, padding, documents and pruning as its block mask;
            compiled on CUDA, forward-only and O(n_q n_k) on the CPU,
            :mod:`xforget.ops.flex`), "fla" (FLA's Triton kernel from the
            ``xforget[cuda]`` extra, unpadded causal self-attention on CUDA;
            other calls run on "flex"), "cuda" (the fold on GPU SDPA; imprecise
            d log_fgate in bf16).  Auto: causal with at most 16 queries over
            more keys (decoding) -> "decode"; other causal CUDA tensors ->
            "flex" (float64: "cuda"); other causal -> "fold"; bidirectional
            -> "chunked".
        prune: adaptive computation pruning (Lin, Obando-Ceron, He, Courville,
            COLM 2025, arXiv 2504.06949; DESIGN.md 3.1) in the causal "fold"
            (CPU) and "decode" backends: keys whose every weight is provably
            below ``prune_eps / n_k`` of the row's reference key are skipped, so
            the pruned mass of a row is below ``prune_eps`` and each output
            channel moves by at most ``prune_eps * (max v - min v)``
            (``<= 2 * prune_eps * max|v|``); gradients move by O(prune_eps).
            See :mod:`xforget.ops.prune` for the bound; the same bound drops
            whole tiles of the "flex" block mask (CUDA).  ``False``: exact op.
        prune_eps: pruned attention mass per row, in (0, 1); default 1e-6
            keeps fp32 outputs within 1e-5 of the unpruned op when max|v| <= 5
            (beyond the fp32 rounding both share, ~6e-8 * max|c| per logit).
        key_norm: ``(b, h_kv, n_k)`` L2 norms of k if already known (the KV
            cache keeps them so that decoding never rereads the keys to prune).
        document_ids: ``(b, n_k)`` int64, non-decreasing along each row, or None: packed
            documents (DESIGN.md section 7).  A query attends only to keys of its own
            document; the others get exactly zero weight (masked, or skipped: the fold
            starts each block of queries at its document, and records the skipped pairs
            like pruned ones), and decays restart per document (:mod:`xforget.ops.documents`).

    Autocast: inside ``torch.autocast`` the inputs are cast to the autocast
    dtype of their device and the op runs with autocast off, so the
    precision-critical parts (fp32 gates, split key channels) are built for the
    dtype the kernel actually uses; the result has the autocast dtype.

    Returns:
        ``(b, h, n_q, d)`` in q's dtype (the autocast dtype under autocast).
        Differentiable w.r.t. q, k, v and both gates.

    Raises:
        ValueError: unknown backend (the message lists the valid ones); a
            backend that cannot serve the case ("fold"/"decode"/"flex"/"fla"/"cuda"
            with ``causal=False``, "cuda"/"fla" on CPU tensors, "flex" on CPU
            tensors that need a gradient, "fla" without fla-core installed);
            inconsistent shapes or dtypes; ``prune_eps`` outside (0, 1).
    """
    name = resolve_backend(backend, q=q, causal=causal, n_k=k.shape[-2])
    return _run(name, q, k, v, causal=causal, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate, scale=scale,
                prune=prune, prune_eps=prune_eps, key_norm=key_norm, document_ids=document_ids)


def autocast_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple:
    """Under ``torch.autocast`` for q's device: q, k, v cast to the autocast dtype (else unchanged).

    DESIGN.md section 4, item 11: a fused kernel called inside autocast runs in
    the autocast dtype even for fp32 inputs, which rounds a carefully split fp32
    channel.  Casting first lets each backend build its channels for the dtype
    the kernel will use; the caller then runs the op with autocast disabled.
    """
    dev = q.device.type
    if not torch.is_autocast_enabled(dev):
        return q, k, v
    dt = torch.get_autocast_dtype(dev)
    if not q.is_floating_point() or q.dtype == torch.float64:
        return q, k, v
    return q.to(dt), k.to(dt), v.to(dt)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    mask: Optional[Tensor] = None,
    log_fgate: Optional[Tensor] = None,
    log_bgate: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    backend: Optional[str] = None,
    prune: bool = True,
    prune_eps: float = PRUNE_EPS,
    key_norm: Optional[Tensor] = None,
    memory: Optional[tuple[Tensor, Tensor]] = None,
    softclamp: Optional[float] = None,
    dropout: float = 0.0,
    document_ids: Optional[Tensor] = None,
    document_memory: bool = False,
) -> Tensor:
    """The single attention entry point of the model's attention layer.

    Shapes as in :func:`forgetting_attention`; ``bias`` is an optional dense
    additive logit bias broadcastable to ``(b, h, n_q, n_k)`` (matrix-shaped
    schemes such as T5; decay-shaped schemes such as causal ALiBi should come
    in as a constant ``log_fgate`` instead, which keeps memory O(n)).
    ``memory``: learned ``(mem_k, mem_v)``, each ``(b, h_kv, m, d)``, seen by
    every query with bias 0 (:mod:`xforget.ops.memory`); ``softclamp``: c > 0
    for logits <- c tanh(logits / c); ``dropout``: attention-weight dropout
    probability (applied whenever > 0).  The last two need the materialised
    logits (:mod:`xforget.ops.dense`).  ``document_ids``: packed documents as in
    :func:`forgetting_attention`, served by every path (memory keys stay visible
    to every document: they belong to the model, not to a document, so a packed
    row equals its documents run alone).  ``document_memory``: the keys with document id
    :data:`~xforget.ops.documents.MEMORY_DOCUMENT` are memory tokens every document sees as if
    they stood right in front of it (the model's ``num_memory_tokens`` with packed documents);
    served by the dense path (O(n_q n_k) memory).

    Routing with ``backend`` None/"auto" (:func:`route`, the one decision):

    * softclamp, dropout, bidirectional without gates with more queries than
      keys: the dense path (it also serves memory keys with a decay that does
      not fold);
    * memory keys: folded into ordinary inputs, which route as below;
    * no gates, no bias: ``F.scaled_dot_product_attention`` (``is_causal``, or
      lower-right alignment when ``n_q < n_k``; causal padding goes through the
      fold's pad channel, bidirectional padding through a (b, 1, 1, n_k) mask);
    * bias, no gates: SDPA with a float mask in >= fp32, causal/padding
      combined as booleans;
    * gates, no bias: :func:`forgetting_attention`;
    * gates and bias: the "chunked" backend (an explicit backend must be
      "reference" or "chunked").

    An explicit backend is honoured (e.g. "reference" for plain attention)
    unless the dense path is needed, or raises ``ValueError`` when it cannot
    serve the case.  ``prune``, ``prune_eps``, ``key_norm``: as in
    :func:`forgetting_attention`.  Under ``torch.autocast`` every path but the
    dense and memory ones runs in the autocast dtype with autocast off (see
    :func:`forgetting_attention`); those two compute in >= fp32 as called.

    Returns ``(b, h, n_q, d)`` in q's dtype (the autocast dtype under autocast).
    """
    decay = log_fgate is not None or (log_bgate is not None and not causal)  # causal: a backward gate does nothing
    name = route(backend, q=q, n_k=k.shape[-2], causal=causal, decay=decay, matrix=bias is not None,
                 memory=memory is not None, logits=softclamp is not None or dropout > 0,
                 documents=document_ids is not None, document_memory=document_memory)
    if name in ("dense", "memory"):  # both compute in >= fp32 from the inputs as called, under any autocast
        call = unchecked_call(q, k, v, causal=causal, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate, bias=bias,
                              scale=scale, memory=memory, softclamp=softclamp, dropout=dropout,
                              document_ids=document_ids, document_memory=bool(document_memory) and document_ids is not None)
        if name == "memory":  # memory keys made ordinary inputs, which this function routes again
            return memory_attention(call, attend, backend)
        return _IMPLS[name](call)
    return _run(name, q, k, v, causal=causal, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate, bias=bias,
                scale=scale, prune=prune, prune_eps=prune_eps, key_norm=key_norm, document_ids=document_ids)


def _run(name: str, q: Tensor, k: Tensor, v: Tensor, **inputs) -> Tensor:
    """Kernel ``name`` on the checked call (:func:`xforget.ops.backend.checked_call` keywords),
    in the autocast dtype with autocast off under ``torch.autocast``."""
    q, k, v = autocast_inputs(q, k, v)
    dev = q.device.type
    with torch.autocast(dev, enabled=False) if torch.is_autocast_enabled(dev) else nullcontext():
        return _IMPLS[name](checked_call(q, k, v, **inputs))
