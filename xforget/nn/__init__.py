"""Building blocks: one concept per module, each a ``torch.nn.Module`` or a function over tensors.

* :mod:`.attention`      -- the attention layer (projections, KV cache, value residual, FoX Pro options).
* :mod:`.options`        -- :class:`AttentionOptions`, what an attention layer is built with (scheme options included).
* :mod:`.bias`           -- the registry of attention-bias builders (ALiBi, forget gate, T5, dynamic, ...).
* :mod:`.kv_cache`       -- the KV cache of a model and of one layer.
* :mod:`.evict`          -- dropping cached keys the forget gate has forgotten.
* :mod:`.rotary`, :mod:`.embeddings` -- rotary and absolute positions, token embeddings.
* :mod:`.norms`, :mod:`.feedforward` -- norms (LayerNorm, RMSNorm, per-head QK norms), feed-forward variants.
* :mod:`.kv_shift`, :mod:`.memory_kv`, :mod:`.value_residual` -- FoX Pro's KV-shift, memory keys, value residual.

Blocks call kernels in :mod:`xforget.ops`; model assemblies live in :mod:`xforget.models`.
"""
