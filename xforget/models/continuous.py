"""``ContinuousTransformerWrapper``: vectors in, vectors out (no token embedding or logits).

For continuous sequences (audio frames, latents, time series): an optional
linear projection in, the attention layers, an optional linear projection out;
the same masking, positions and KV cache as :class:`~xforget.models.wrapper.TransformerWrapper`.
"""

from __future__ import annotations

from torch import Tensor, nn

from xforget.models.layers import AttentionLayers
from xforget.models.memory_tokens import (
    extend_mask,
    input_positions,
    memory_parameter,
    memory_to_prepend,
    prepend_memory,
)
from xforget.models.wrapper import TransformerWrapper, _seen, run_layers
from xforget.nn.embeddings import AbsolutePositionalEmbedding
from xforget.nn.kv_cache import Cache


class ContinuousTransformerWrapper(nn.Module):
    """A continuous-input model around a :class:`~xforget.models.layers.Decoder` or ``Encoder``.

    Args:
        attn_layers: the layer stack (its width is the model width).
        max_seq_len: rows of the absolute position table (used only when the
            layers' position includes "absolute").
        dim_in: input width (default: the model width, no projection).
        dim_out: output width (default: the model width, no projection).
        num_memory_tokens: learned memory vectors (x-transformers' ``num_memory_tokens``,
            :mod:`xforget.models.memory_tokens`) prepended to every sequence after the input
            projection and the absolute table (which counts the frames only): every frame can
            attend to them (the masks are extended over them, always True), they take the first
            ``num_memory_tokens`` positions of the layers' relative schemes, and their outputs are
            dropped. With a KV cache they are prepended once, on the first call. Equal to feeding
            ``cat(memory, project_in(x) + table)`` to the same layers and dropping the first outputs.
    Raises:
        ValueError: max_seq_len < 1 or num_memory_tokens < 0.
    """

    def __init__(
        self, *, attn_layers: AttentionLayers, max_seq_len: int = 1024, dim_in: int | None = None,
        dim_out: int | None = None, num_memory_tokens: int = 0,
    ) -> None:
        super().__init__()
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        dim = attn_layers.dim
        self.max_seq_len, self.attn_layers = max_seq_len, attn_layers
        self.project_in = nn.Linear(dim_in, dim) if dim_in is not None else nn.Identity()
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len) if attn_layers.plan.embedding == "absolute" else None
        self.project_out = nn.Linear(dim, dim_out) if dim_out is not None else nn.Identity()
        self.num_memory_tokens = num_memory_tokens
        self.memory_tokens = memory_parameter(num_memory_tokens, dim)

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, cache: Cache | None = None, return_cache: bool = False,
        context: Tensor | None = None, context_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Cache]:
        """x (batch, n, dim_in) float -> (batch, n, dim_out).

        mask: (batch, n) bool, True = real frame; cache / return_cache: KV cache
        as in TransformerWrapper; context / context_mask: for cross-attention layers.
        Memory tokens (``num_memory_tokens``) are prepended when there is no cache yet; the output
        holds the n input frames only.
        Raises:
            ValueError: wrong input width or mask shape.
        """
        b, n = x.shape[:2]
        if mask is not None and tuple(mask.shape) != (b, n):
            raise ValueError(f"mask shape {tuple(mask.shape)} must be (batch, n) = {(b, n)}")
        seen = _seen(cache, b, x.device)
        h = self.project_in(x)
        if h.shape[-1] != self.attn_layers.dim:
            raise ValueError(f"input width {x.shape[-1]} does not match the model width {self.attn_layers.dim}; set dim_in")
        n_mem = memory_to_prepend(self.memory_tokens, cache)
        mask = extend_mask(mask, n_mem)
        positions = TransformerWrapper._positions(b, n + n_mem, mask, None if cache is None or cache.seen is None else seen,
                                                  x.device)
        if self.pos_emb is not None:  # x-transformers' order: the table, then the memory
            h = h + self.pos_emb(input_positions(positions, n_mem, self.num_memory_tokens))
        h = prepend_memory(self.memory_tokens, h, n_mem)
        h, new_cache = run_layers(self.attn_layers, h, positions, mask=mask, cache=cache, seen=seen,
                                  return_cache=return_cache, context=context, context_mask=context_mask)
        out = self.project_out(h[:, n_mem:])
        return (out, new_cache) if return_cache else out
