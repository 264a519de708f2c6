"""Model assemblies and their configuration.

* :mod:`.config`     -- :class:`ModelConfig` (typed, pure data) and :func:`build_model`.
* :mod:`.options`    -- :class:`LayerOptions`, the one typed options object of a layer stack (from keywords or a config).
* :mod:`.validate`, :mod:`.positions`, :mod:`.aliases` -- one validation of the options, the position
  schemes, x-transformers' keyword names translated in one place.
* :mod:`.layers`     -- ``AttentionLayers``, ``Decoder``, ``Encoder``, ``CrossAttender``.
* :mod:`.wrapper`    -- ``TransformerWrapper`` (tokens -> logits, KV cache, hub-style directories).
* :mod:`.autoregressive`, :mod:`.sampling` -- generation and the sampling filters.
* :mod:`.xtransformer`, :mod:`.continuous` -- encoder-decoder and continuous-input wrappers.
* :mod:`.pretrained` -- the hub-style directory format (``config.json`` + ``model.safetensors``).
"""
