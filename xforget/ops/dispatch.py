"""Public entry points: :func:`forgetting_attention` and :func:`attend`.

Forgetting attention: FoX, Lin, Nikishin, He, Courville, "Forgetting
Transformer: Softmax Attention with a Forget Gate", ICLR 2025,
arXiv 2503.02130.  The O(n)-memory causal path is the key-channel fold of
DESIGN.md section 3 (``fold.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from xforget.ops.chunked import chunked_attention
from xforget.ops.common import Tensor, check_inputs
from xforget.ops.cuda import cuda_attention
from xforget.ops.decode import MAX_DECODE_QUERIES, decode_attention
from xforget.ops.fold import fold_attention
from xforget.ops.prune import PRUNE_EPS, check_eps
from xforget.ops.reference import reference_attention
from xforget.ops.sdpa import dense_bias_attention, plain_attention

BACKENDS = ("auto", "reference", "fold", "chunked", "decode", "cuda")

_IMPLS = {
    "reference": reference_attention,
    "fold": fold_attention,
    "chunked": chunked_attention,
    "decode": decode_attention,
    "cuda": cuda_attention,
}


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
    if q.is_cuda:
        return "cuda"
    n_q = q.shape[-2]
    if n_k is not None and n_q <= MAX_DECODE_QUERIES and n_q < n_k:
        return "decode"  # KV-cached decoding: O(n_k) logits, no cache copy
    return "fold"


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
            with the bias added directly, O(n_q n_k) memory), "cuda" (CUDA tensors: optional ``fla`` kernel, else fold on
            GPU).  Auto: CUDA tensors -> "cuda"; causal with at most 16 queries
            over more keys (decoding) -> "decode"; other causal -> "fold";
            bidirectional -> "chunked".
        prune: adaptive computation pruning (Lin, Obando-Ceron, He, Courville,
            COLM 2025, arXiv 2504.06949; DESIGN.md 3.1) in the causal "fold"
            (CPU) and "decode" backends: keys whose every weight is provably
            below ``prune_eps / n_k`` of the row's reference key are skipped, so
            the pruned mass of a row is below ``prune_eps`` and each output
            channel moves by at most ``prune_eps * (max v - min v)``
            (``<= 2 * prune_eps * max|v|``); gradients move by O(prune_eps).
            See :mod:`xforget.ops.prune` for the bound.  ``False``: exact op.
        prune_eps: pruned attention mass per row, in (0, 1); default 1e-6
            keeps fp32 outputs within 1e-5 of the unpruned op when max|v| <= 5
            (beyond the fp32 rounding both share, ~6e-8 * max|c| per logit).
        key_norm: ``(b, h_kv, n_k)`` L2 norms of k if already known (the KV
            cache keeps them so that decoding never rereads the keys to prune).

    Autocast: inside ``torch.autocast`` the inputs are cast to the autocast
    dtype of their device and the op runs with autocast off, so the
    precision-critical parts (fp32 gates, split key channels) are built for the
    dtype the kernel actually uses; the result has the autocast dtype.

    Returns:
        ``(b, h, n_q, d)`` in q's dtype (the autocast dtype under autocast).
        Differentiable w.r.t. q, k, v and both gates.

    Raises:
        ValueError: unknown backend (the message lists the valid ones); a
            backend that cannot serve the case ("fold"/"cuda" with
            ``causal=False`` or ``log_bgate``, "cuda" on CPU tensors);
            inconsistent shapes or dtypes; ``prune_eps`` outside (0, 1).
    """
    q, k, v = autocast_inputs(q, k, v)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return forgetting_attention(q, k, v, log_fgate, causal=causal, mask=mask, scale=scale, log_bgate=log_bgate,
                                        backend=backend, prune=prune, prune_eps=prune_eps, key_norm=key_norm)
    shapes = check_inputs(q, k, v, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate)
    name = resolve_backend(backend, q=q, causal=causal, n_k=k.shape[-2])
    prune_eps = check_eps(prune_eps)
    if causal:
        log_bgate = None  # a backward gate has no effect on causal attention
    extra = {}
    if name in ("fold", "decode", "cuda"):
        extra = dict(prune=bool(prune), prune_eps=prune_eps, key_norm=key_norm)
    return _IMPLS[name](
        q, k, v, log_fgate, shapes=shapes, causal=causal, mask=mask, scale=scale, log_bgate=log_bgate, **extra
    )


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
) -> Tensor:
    """The single attention entry point of the model's attention layer.

    Shapes as in :func:`forgetting_attention`; ``bias`` is an optional dense
    additive logit bias broadcastable to ``(b, h, n_q, n_k)`` (matrix-shaped
    schemes such as T5; decay-shaped schemes such as causal ALiBi should come
    in as a constant ``log_fgate`` instead, which keeps memory O(n)).

    Routing with ``backend`` None/"auto":

    * no gates, no bias: ``F.scaled_dot_product_attention`` (``is_causal``, or
      lower-right alignment when ``n_q < n_k``; causal padding goes through the
      fold's pad channel, bidirectional padding through a (b, 1, 1, n_k) mask);
    * bias, no gates: SDPA with a float mask in >= fp32, causal/padding
      combined as booleans;
    * gates, no bias: :func:`forgetting_attention`;
    * gates and bias: the "chunked" backend (an explicit backend must be
      "reference" or "chunked").

    An explicit backend is always honoured (e.g. "reference" for plain
    attention) or raises ``ValueError`` when it cannot serve the case.
    ``prune``, ``prune_eps``, ``key_norm``: as in :func:`forgetting_attention`.
    Under ``torch.autocast`` every path runs in the autocast dtype with
    autocast off (see :func:`forgetting_attention`).

    Returns ``(b, h, n_q, d)`` in q's dtype (the autocast dtype under autocast).
    """
    q, k, v = autocast_inputs(q, k, v)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return attend(q, k, v, causal=causal, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate, bias=bias,
                          scale=scale, backend=backend, prune=prune, prune_eps=prune_eps, key_norm=key_norm)
    shapes = check_inputs(q, k, v, mask=mask, log_fgate=log_fgate, log_bgate=log_bgate)
    if bias is not None and bias.dim() != 4:
        raise ValueError(f"bias must be 4-d, broadcastable to (b, h, n_q, n_k); got {tuple(bias.shape)}")
    gated = log_fgate is not None or (log_bgate is not None and not causal)
    name = "auto" if backend is None else backend
    resolve_backend(name, q=q, causal=causal)  # validates the name
    if causal:
        log_bgate = None

    if bias is None:
        if not gated and name == "auto":
            return plain_attention(q, k, v, shapes=shapes, causal=causal, mask=mask, scale=scale)
        return forgetting_attention(
            q, k, v, log_fgate, causal=causal, mask=mask, scale=scale, log_bgate=log_bgate, backend=name,
            prune=prune, prune_eps=prune_eps, key_norm=key_norm,
        )

    if name == "auto" and not gated:
        return dense_bias_attention(q, k, v, bias, shapes=shapes, causal=causal, mask=mask, scale=scale)
    if name == "auto":
        name = "chunked"
    if name not in ("reference", "chunked"):
        raise ValueError(f"backend {name!r} cannot take a dense bias; use 'auto', 'chunked' or 'reference'")
    return _IMPLS[name](
        q, k, v, log_fgate, shapes=shapes, causal=causal, mask=mask, scale=scale, log_bgate=log_bgate, bias=bias
    )
