"""Bring trained x-transformers models over: :func:`from_x_transformers`.

Takes an ``x_transformers.TransformerWrapper`` (2.31.10) -- or the keyword
arguments it was built with plus its state dict -- whose flags lie in the set
both libraries share, and returns an xforget
:class:`~xforget.models.wrapper.TransformerWrapper` computing the same logits.

What the conversion has to know about x-transformers (all of it lives here and
in :mod:`xforget.models.aliases`, which maps the flag *names*):

* Defaults: ``attn_dim_head`` = 64 (ours: dim // heads); rotary over
  ``dim_head // 2`` channels (ours: all); ``use_abs_pos_emb=True`` unless
  rotary or T5 is on (so ALiBi, FoX and dynamic biases keep a learned absolute
  table); ``learned_value_residual_mix=True``; norms store ``gamma - 1``
  (``norm_add_unit_offset=True``).
* Weights: its LayerNorm has no bias (ours is set to 0); its ScaleNorm is
  ``g * sqrt(dim) * x / ||x||`` (ours stores ``g * sqrt(dim)``); T5 biases are
  multiplied by ``sqrt(dim_head)`` (folded into our table); the tied output
  layer multiplies by ``dim ** -0.5`` (kept as a scale on our tied logits);
  per-head RMSNorm gammas are (heads, 1, dim_head) offsets from 1 (ours: (heads, dim_head)).
* Layer layout: ``attn_layers.layers.<i>`` = (norms: pre, post-branch,
  post-main; the module; the residual), one entry per "a" / "f" sublayer, in
  the order of our :meth:`~xforget.models.layers.AttentionLayers.sublayers`.

Every x-transformers parameter must be consumed by the mapping and every one
of ours assigned; when a model instance is given the logits of both are also
compared on random tokens. Anything outside the shared set raises a
``ValueError`` that lists the offending flags or parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xforget.models.aliases import X_TRANSFORMERS_ALIASES, translate_x_transformers_kwargs
from xforget.models.layers import Decoder, Encoder
from xforget.nn.norms import HeadL2Norm
from xforget.models.wrapper import TransformerWrapper

XT_DEFAULT_DIM_HEAD = 64

# wrapper-level flags we understand (other wrapper flags must keep their defaults)
_WRAPPER_FLAGS = {"num_tokens", "max_seq_len", "attn_layers", "tie_embedding", "use_abs_pos_emb", "scaled_sinu_pos_emb",
                  "emb_dropout", "l2norm_embed", "logits_dim", "num_memory_tokens"}
# layer-level flags we understand besides the aliases
_LAYER_FLAGS = {"dim", "depth", "heads", "causal", "custom_layers", "norm_add_unit_offset", "attn_dropout",
                "ff_dropout", "ff_mult", "alibi_num_heads", "rotary_xpos", "rotary_xpos_scale_base", "rotary_base_rescale_factor",
                "verbose", "attn_logit_softclamp_value", "attn_qk_norm_scale"}


class ScaledTiedLogits(nn.Module):
    """Logits from the (tied) token embedding times a constant: ``scale * h @ E^T``
    (x-transformers' tied output layer, ``scale = dim ** -0.5``)."""

    def __init__(self, embedding: nn.Embedding, scale: float) -> None:
        super().__init__()
        self.embedding, self.scale = embedding, float(scale)

    @property
    def weight(self) -> Tensor:
        return self.embedding.weight

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.embedding.weight) * self.scale


def from_x_transformers(
    model: nn.Module | None = None,
    *,
    kwargs: dict[str, Any] | None = None,
    state_dict: dict[str, Tensor] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> TransformerWrapper:
    """Convert an x-transformers language model to an xforget TransformerWrapper with the same weights.

    Args:
        model: an ``x_transformers.TransformerWrapper`` around a Decoder or Encoder.
        kwargs: instead of ``model``: the TransformerWrapper keyword arguments,
            with ``attn_layers`` a dict of the layer keyword arguments plus
            ``"causal": True`` (Decoder) or ``False`` (Encoder).
        state_dict: with ``kwargs``: the model's state dict.
        verify: with ``model``: compare both models' logits on random tokens.
        atol: tolerance of that comparison.
    Returns:
        an xforget TransformerWrapper in eval mode (call ``.train()`` to train it).
    Raises:
        ValueError: flags, modules or parameters outside the shared set (all of
            them listed), or a failed verification.
        TypeError: neither ``model`` nor ``kwargs`` + ``state_dict`` given.
    """
    if model is not None:
        kwargs = x_transformers_kwargs(model)
        state_dict = model.state_dict()
    elif kwargs is None or state_dict is None:
        raise TypeError("from_x_transformers needs an x_transformers.TransformerWrapper, or kwargs= and state_dict=")
    ours, info = _build(kwargs)
    load_x_transformers_state(ours, state_dict, info)
    ours.eval()
    if model is not None and verify:
        _verify(model, ours, atol)
    return ours


# ----------------------------------------------------------------------------- kwargs -> our model


def _build(kwargs: dict[str, Any]) -> tuple[TransformerWrapper, dict[str, Any]]:
    wrapper = dict(kwargs)
    layers = dict(wrapper.pop("attn_layers", None) or {})
    unsupported = [f"{k}={v!r}" for k, v in wrapper.items() if k not in _WRAPPER_FLAGS - {"attn_layers"}]
    causal = layers.pop("causal", None)
    if causal is None:
        unsupported.append("attn_layers without 'causal' (True for Decoder, False for Encoder)")
    for key in ("dim", "depth"):
        if key not in layers:
            unsupported.append(f"attn_layers without {key!r}")
    unsupported += [f"{k}={v!r}" for k, v in layers.items() if k not in _LAYER_FLAGS and k not in X_TRANSFORMERS_ALIASES]
    if unsupported:
        raise ValueError(f"x-transformers flags outside the shared set: {sorted(unsupported)}")

    dim, heads = layers.pop("dim"), layers.pop("heads", 8)
    qk_norm_scale = layers.pop("attn_qk_norm_scale", 10.0)  # x-transformers' fixed logit scale (no dim scale)
    if layers.get("attn_qk_norm") and not layers.get("attn_qk_norm_dim_scale"):
        layers["attn_qk_norm_dim_scale"] = True  # ours learns the scale; the weights below reproduce the fixed one
    depth = layers.pop("depth")
    layers.pop("verbose", None)
    unit_offset = bool(layers.pop("norm_add_unit_offset", True))
    dim_head = layers.setdefault("attn_dim_head", XT_DEFAULT_DIM_HEAD)
    rotary = bool(layers.get("rotary_pos_emb") or layers.get("rotary_xpos"))
    if rotary:
        layers["rotary_pos_emb"] = True  # x-transformers: xPos implies rotary
        rot_dim = layers.setdefault("rotary_emb_dim", dim_head // 2)
        factor = layers.pop("rotary_base_rescale_factor", 1.0)
        if factor != 1.0:
            layers["rotary_base"] = 10000.0 * factor ** (rot_dim / (rot_dim - 2))
    else:
        layers.pop("rotary_base_rescale_factor", None)
    if layers.get("add_value_residual"):
        layers.setdefault("learned_value_residual_mix", True)
    else:
        layers.pop("learned_value_residual_mix", None)
    custom = layers.pop("custom_layers", None)
    if custom is not None:
        layers["layer_pattern"], depth = "".join(custom), 1
    # the absolute table: x-transformers keeps it unless rotary or T5 (or max_seq_len 0) turns it off
    use_abs = wrapper.get("use_abs_pos_emb", True) and not (rotary or layers.get("rel_pos_bias"))
    use_abs = use_abs and wrapper["max_seq_len"] > 0
    embedding = None
    if use_abs:
        embedding = "sinusoidal" if wrapper.get("scaled_sinu_pos_emb") else "absolute"

    ours_kwargs = translate_x_transformers_kwargs(layers)
    if embedding is not None:
        position = ours_kwargs.get("position", "none")
        position = [] if position == "none" else ([position] if isinstance(position, str) else list(position))
        ours_kwargs["position"] = [embedding, *position] if position else embedding
    layer_cls = Decoder if causal else Encoder
    attn_layers = layer_cls(dim, depth, heads, **ours_kwargs)
    ours = TransformerWrapper(
        num_tokens=wrapper["num_tokens"], max_seq_len=max(1, wrapper["max_seq_len"]), attn_layers=attn_layers,
        tie_embedding=bool(wrapper.get("tie_embedding")), emb_dropout=float(wrapper.get("emb_dropout", 0.0)),
        l2norm_embed=bool(wrapper.get("l2norm_embed")), logits_dim=wrapper.get("logits_dim"),
        num_memory_tokens=int(wrapper.get("num_memory_tokens") or 0),
    )
    if wrapper.get("tie_embedding"):
        ours.to_logits = ScaledTiedLogits(ours.token_emb.emb, dim**-0.5)
    info = dict(unit_offset=unit_offset, dim=dim, dim_head=dim_head, tied=bool(wrapper.get("tie_embedding")),
                qk_norm_scale=float(qk_norm_scale))
    return ours, info


# ----------------------------------------------------------------------------- weights


def load_x_transformers_state(ours: TransformerWrapper, sd: dict[str, Tensor], info: dict[str, Any]) -> None:
    """Copy an x-transformers state dict into ``ours`` (built by the same flags).

    Raises:
        ValueError: x-transformers parameters the mapping does not consume, or
            ours it does not assign (both listed), or shape mismatches.
    """
    target = ours.state_dict()
    new: dict[str, Tensor] = {}
    used: set[str] = set()
    offset = 1.0 if info["unit_offset"] else 0.0

    def take(name: str) -> Tensor:
        if name not in sd:
            raise ValueError(f"x-transformers state dict has no {name!r}; the flags do not match the weights")
        used.add(name)
        return sd[name].detach()

    def put(name: str, value: Tensor) -> None:
        if name not in target:
            raise ValueError(f"internal mapping error: xforget has no parameter {name!r}")
        if tuple(target[name].shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch for {name}: x-transformers {tuple(value.shape)}, xforget {tuple(target[name].shape)}")
        new[name] = value.to(target[name].dtype)

    def norm(xt_prefix: str, our_prefix: str, module: nn.Module) -> None:
        if isinstance(module, nn.LayerNorm):
            put(f"{our_prefix}.weight", take(f"{xt_prefix}.gamma") + offset)
            put(f"{our_prefix}.bias", torch.zeros_like(target[f"{our_prefix}.bias"]))
        elif hasattr(module, "g"):  # ScaleNorm: ours stores g * sqrt(dim)
            put(f"{our_prefix}.g", ((take(f"{xt_prefix}.g") + offset) * info["dim"] ** 0.5).reshape(()))
        else:  # RMSNorm
            put(f"{our_prefix}.weight", take(f"{xt_prefix}.g") + offset)

    put("token_emb.emb.weight", take("token_emb.emb.weight"))
    if ours.pos_emb is not None:
        put("pos_emb.emb.weight", take("pos_emb.emb.weight"))
    if ours.attn_layers.pos_emb is not None:
        put("attn_layers.pos_emb.scale", take("pos_emb.scale"))
    if ours.memory_tokens is not None:
        put("memory_tokens", take("memory_tokens"))
    if not info["tied"]:
        put("to_logits.weight", take("to_logits.weight"))
    if not isinstance(ours.attn_layers.final_norm, nn.Identity):
        norm("attn_layers.final_norm", "attn_layers.final_norm", ours.attn_layers.final_norm)
    for buffer in ("attn_layers.rotary_pos_emb.inv_freq", "attn_layers.rotary_pos_emb.scale"):
        if buffer in sd:
            used.add(buffer)  # recomputed from the flags

    shared_bias_done = False
    our_names = {id(m): n for n, m in ours.named_modules()}
    for ind, sub in enumerate(ours.attn_layers.sublayers()):
        xt, me = f"attn_layers.layers.{ind}", our_names[id(sub)]
        for slot, module, attr in ((0, sub.norm, "norm"), (1, sub.post_branch_norm, "post_branch_norm"), (2, sub.post_norm, "post_norm")):
            if module is not None:
                norm(f"{xt}.0.{slot}", f"{me}.{attr}", module)
        if sub.kind == "f":
            _map_feedforward(sd, f"{xt}.1", f"{me}.fn", take, put)
            continue
        attn, a, m = sub.fn, f"{xt}.1", f"{me}.fn"
        for proj in ("to_q", "to_k", "to_v"):
            put(f"{m}.{proj}.weight", take(f"{a}.{proj}.weight"))
        if f"{a}.to_out.weight" in sd:
            put(f"{m}.to_out.weight", take(f"{a}.to_out.weight"))
        else:  # heads == 1 and dim == dim_head: x-transformers has no output projection
            put(f"{m}.to_out.weight", torch.eye(target[f"{m}.to_out.weight"].shape[0]))
        if attn.memory is not None:
            put(f"{m}.memory.k", take(f"{a}.mem_k"))
            put(f"{m}.memory.v", take(f"{a}.mem_v"))
        if isinstance(attn.q_norm, HeadL2Norm):
            if f"{a}.qk_norm_q_scale" in sd:  # learned per-channel scales, (heads, 1, dim_head)
                put(f"{m}.q_norm.scale", take(f"{a}.qk_norm_q_scale").squeeze(1))
                put(f"{m}.k_norm.scale", take(f"{a}.qk_norm_k_scale").squeeze(1))
            else:  # a fixed logit scale S: S * qhat.khat = (c qhat).(c khat) / sqrt(d) with c = sqrt(S sqrt(d))
                c = (info["qk_norm_scale"] * attn.dim_head**0.5) ** 0.5
                put(f"{m}.q_norm.scale", torch.full_like(target[f"{m}.q_norm.scale"], c))
                put(f"{m}.k_norm.scale", torch.full_like(target[f"{m}.k_norm.scale"], c))
        elif attn.q_norm is not None:
            put(f"{m}.q_norm.gamma", take(f"{a}.q_rmsnorm.gamma").squeeze(1))
            put(f"{m}.k_norm.gamma", take(f"{a}.k_rmsnorm.gamma").squeeze(1))
        if attn.to_gate is not None:
            put(f"{m}.to_gate.weight", take(f"{a}.to_v_gate.weight"))
            put(f"{m}.to_gate.bias", torch.zeros_like(target[f"{m}.to_gate.bias"]))
        if attn.value_residual is not None and attn.value_residual.to_lambda is not None:
            put(f"{m}.value_residual.to_lambda.weight", take(f"{a}.to_value_residual_mix.0.weight"))
            put(f"{m}.value_residual.to_lambda.bias", take(f"{a}.to_value_residual_mix.0.bias"))
        bias = attn.bias
        if bias is None or bias.name == "alibi":
            continue
        if bias.name == "fox":
            put(f"{m}.bias.to_gate_logits.weight", take(f"{a}.data_dependent_alibi.to_forget_gates.0.weight"))
            put(f"{m}.bias.to_gate_logits.bias", take(f"{a}.data_dependent_alibi.to_forget_gates.0.bias"))
        elif bias.name == "fox_per_row":
            put(f"{m}.bias.to_qk.weight", take(f"{a}.data_dependent_alibi.to_forget_gates.0.weight"))
        elif bias.name in ("t5", "dynamic"):
            for name in [n for n in target if n.startswith(f"{m}.bias.")]:
                # the shared table appears under every layer; map it from the one x-transformers copy
                new[name] = _map_shared_bias(sd, bias.name, name[len(f"{m}.bias."):], info, take if not shared_bias_done else sd.__getitem__)
            shared_bias_done = True

    leftover = sorted(set(sd) - used)
    if leftover:
        raise ValueError(f"x-transformers parameters outside the shared set (not mapped): {leftover}")
    by_storage = {target[name].data_ptr(): name for name in new}
    for name in set(target) - set(new):  # tied parameters (e.g. the tied output layer) share one tensor
        twin = by_storage.get(target[name].data_ptr())
        if twin is not None:
            new[name] = new[twin]
    missing = sorted(set(target) - set(new))
    if missing:
        raise ValueError(f"internal mapping error: xforget parameters left unassigned: {missing}")
    ours.load_state_dict(new)


def _map_feedforward(sd, xt: str, me: str, take, put) -> None:
    glu = f"{xt}.ff.0.proj.weight" in sd
    first = f"{xt}.ff.0.proj" if glu else f"{xt}.ff.0.0"
    put(f"{me}.proj_in.weight", take(f"{first}.weight"))
    put(f"{me}.proj_in.bias", take(f"{first}.bias"))
    outs = sorted(int(k[len(f"{xt}.ff."):].split(".")[0]) for k in sd if k.startswith(f"{xt}.ff.") and k.endswith(".weight"))
    last = f"{xt}.ff.{outs[-1]}"
    put(f"{me}.proj_out.weight", take(f"{last}.weight"))
    put(f"{me}.proj_out.bias", take(f"{last}.bias"))


def _map_shared_bias(sd, scheme: str, our_name: str, info: dict, get) -> Tensor:
    if scheme == "t5":  # ours: table; x-transformers: relative_attention_bias * sqrt(dim_head)
        return get("attn_layers.rel_pos.relative_attention_bias.weight") * info["dim_head"] ** 0.5
    # dynamic: ours mlp.{2i} (Linear, SiLU pairs) then the last Linear; x-transformers mlp.{i}.0 then mlp.{depth}
    index, param = our_name.split(".")[1:]
    n_linear = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("attn_layers.rel_pos.mlp."))
    i = int(index) // 2
    name = f"attn_layers.rel_pos.mlp.{i}.{param}" if i == n_linear - 1 else f"attn_layers.rel_pos.mlp.{i}.0.{param}"
    return get(name)


# ----------------------------------------------------------------------------- model -> kwargs


def x_transformers_kwargs(model: nn.Module) -> dict[str, Any]:
    """Read the flags of an ``x_transformers.TransformerWrapper`` back from its modules.

    Returns the kwargs format of :func:`from_x_transformers` (``attn_layers`` a dict).
    Raises:
        ValueError: every feature outside the shared set, listed.
    """
    import x_transformers.x_transformers as xt

    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need(isinstance(model, xt.TransformerWrapper), f"a TransformerWrapper (got {type(model).__name__})")
    if problems:
        raise ValueError(f"x-transformers model outside the shared set: {problems}")
    al = model.attn_layers
    dim = al.dim
    wrapper: dict[str, Any] = dict(num_tokens=model.num_tokens, max_seq_len=model.max_seq_len)
    if isinstance(model.pos_emb, xt.ScaledSinusoidalEmbedding):
        wrapper["scaled_sinu_pos_emb"] = True
    elif isinstance(model.pos_emb, xt.AbsolutePositionalEmbedding):
        pass  # l2norm_embed (read below) applies to it as to the token embedding, as ours does
    else:
        wrapper["use_abs_pos_emb"] = False
    if not isinstance(model.to_logits, nn.Module) and model.to_logits is not None:
        wrapper["tie_embedding"] = True
        need(abs(model.tie_embedding_scale - dim**-0.5) < 1e-12, "tie_embedding_scale != dim ** -0.5")
    else:
        need(isinstance(model.to_logits, nn.Linear), "a custom to_logits / num_output_heads > 1 / return_only_embed")
    if getattr(model, "l2norm_embed", False):
        wrapper["l2norm_embed"] = True
    if isinstance(model.to_logits, nn.Linear) and model.to_logits.out_features != model.num_tokens:
        wrapper["logits_dim"] = model.to_logits.out_features
    need(_is_identity(model.post_emb_norm), "post_emb_norm")
    if model.emb_dropout.p:
        wrapper["emb_dropout"] = float(model.emb_dropout.p)
    need(_is_identity(model.project_emb), "emb_dim != dim")
    if getattr(model, "num_memory_tokens", 0):
        wrapper["num_memory_tokens"] = int(model.num_memory_tokens)
    need(getattr(model, "memory_tokens_interspersed_every", None) is None, "memory_tokens_interspersed_every")
    for flag in ("max_mem_len", "shift_mem_down"):
        need(not getattr(model, flag, 0), flag)
    for flag in ("cls_token", "attn_pool", "recycled_proj", "exit_gate", "to_mixture", "ff_deep_embed", "embeds"):
        need(getattr(model, flag, None) is None, flag)
    for flag in ("average_pool_embed", "sigsoftmax_logits", "add_continuous_pred_head", "has_multiple_heads", "recycling", "looped"):
        need(not getattr(model, flag, False), flag)
    need(getattr(model, "emb_frac_gradient", 1.0) == 1.0, "emb_frac_gradient")

    layers: dict[str, Any] = dict(causal=al.causal, dim=dim, heads=al.attn_heads, attn_dim_head=al.attn_dim_head)
    types = tuple(al.layer_types)
    need(set(types) <= {"a", "f"}, "cross-attention layers (cross_attend) in a TransformerWrapper")
    need(tuple(al.layers_execute_order) == tuple(range(len(types))), "layers_execute_order / weight_tie_layers")
    if len(types) % 2 == 0 and types == ("a", "f") * (len(types) // 2):
        layers["depth"] = len(types) // 2
    else:
        layers["custom_layers"], layers["depth"] = types, 1
    for flag in ("residual_attn", "cross_residual_attn", "softclamp_output", "unet_skips", "reinject_input",
                 "pre_and_post_norm", "need_condition", "cross_attend"):
        need(not getattr(al, flag, False), flag)
    need(al.num_residual_streams == 1, "num_residual_streams > 1 (hyper connections)")
    need(all(p == 0 for p in al.layer_dropouts), "layer_dropout")
    need(all(m is None for m in al.layer_integrators), "integrate_layers / attn_aggregated_residuals")
    need(all(m is None for m in al.skip_combines), "unet_skips")
    need(al.residual_scale is None, "scale_residual / depth_scale_residual (float)")
    need(getattr(al, "polar_pos_emb", None) is None, "polar_pos_emb")
    need(al.cross_attn_tokens_dropout == 0, "cross_attn_tokens_dropout")

    # norms
    norms = [n for layer in al.layers for n in layer[0] if n is not None]
    if not _is_identity(al.final_norm):
        norms.append(al.final_norm)
    kinds = {type(n) for n in norms}
    need(kinds <= {xt.LayerNorm, xt.RMSNorm, xt.ScaleNorm}, f"norm classes {sorted(k.__name__ for k in kinds)}")
    if xt.RMSNorm in kinds:
        layers["use_rmsnorm"] = True
    if xt.ScaleNorm in kinds:
        layers["use_scalenorm"] = True
    if norms:
        layers["norm_add_unit_offset"] = bool(getattr(norms[0], "unit_offset", False))
    if not al.pre_norm:
        layers["pre_norm"] = False
    if al.sandwich_norm:
        layers["sandwich_norm"] = True
    if al.pre_norm and _is_identity(al.final_norm):
        problems.append("pre_norm_has_final_norm=False")

    # positions
    rot = al.rotary_pos_emb
    if rot is not None:
        layers["rotary_pos_emb"] = True
        rot_dim = rot.inv_freq.numel() * 2
        layers["rotary_emb_dim"] = rot_dim
        need(rot.interpolation_factor == 1.0, "rotary_interpolation_factor")
        if rot_dim >= 4:
            base = float(rot.inv_freq[1].double() ** (-rot_dim / 2))
            if abs(base - 10000.0) > 1e-3 * 10000.0:
                layers["rotary_base_rescale_factor"] = (base / 10000.0) ** ((rot_dim - 2) / rot_dim)
        if rot.scale is not None:
            layers["rotary_xpos"], layers["rotary_xpos_scale_base"] = True, rot.scale_base
    rel = al.rel_pos
    if isinstance(rel, xt.AlibiPositionalBias):
        layers["alibi_pos_bias"] = True
        if rel.heads != rel.total_heads:
            layers["alibi_num_heads"] = rel.heads
        need(torch.allclose(rel.slopes.flatten(), torch.tensor(rel._get_slopes(rel.heads))), "custom ALiBi slopes")
    elif isinstance(rel, xt.RelativePositionBias):
        layers.update(rel_pos_bias=True, rel_pos_num_buckets=rel.num_buckets, rel_pos_max_distance=rel.max_distance)
        need(abs(rel.scale - al.attn_dim_head**0.5) < 1e-6, "a RelativePositionBias scale other than sqrt(dim_head)")
    elif isinstance(rel, xt.DynamicPositionBias):
        layers["dynamic_pos_bias"] = True
        layers["dynamic_pos_bias_mlp_depth"] = len(rel.mlp) - 1
        layers["dynamic_pos_bias_log_distance"] = rel.log_distance
        need(all(isinstance(m, (nn.Linear, nn.SiLU)) for block in rel.mlp for m in (block if isinstance(block, nn.Sequential) else [block])), "dynamic_pos_bias_norm")
        need(rel.mlp[0][0].out_features == dim // 4, "a dynamic position bias width other than dim // 4")
    elif rel is not None:
        problems.append(f"relative position module {type(rel).__name__}")

    # sublayers
    attn_flags: list[dict[str, Any]] = []
    ff_flags: list[dict[str, Any]] = []
    for layer, kind in zip(al.layers, types):
        norms_, module, residual = layer
        need(type(residual) is xt.Residual and residual.residual_scale is None and residual.scale_residual_constant == 1,
             f"residual {type(residual).__name__} / scale_residual")
        if kind == "a":
            if not isinstance(module, xt.Attention):
                problems.append(f"attention layer wrapped in {type(module).__name__} (shift_tokens, layerscale, macaron...)")
                continue
            attn_flags.append(_attention_flags(module, al, problems))
        else:
            if not isinstance(module, xt.FeedForward):
                problems.append(f"feed-forward layer wrapped in {type(module).__name__} (shift_tokens, layerscale, macaron...)")
                continue
            ff_flags.append(_feedforward_flags(module, dim, problems))
    for flags, what in ((attn_flags, "attention"), (ff_flags, "feed-forward")):
        if flags and any(f != flags[0] for f in flags[1:]):
            problems.append(f"{what} flags that differ between layers")
        if flags:
            layers.update(flags[0])
    if al.add_value_residual:
        layers["add_value_residual"] = True
        mixes = [type(layer[1].to_value_residual_mix).__name__ for layer, k in zip(al.layers, types) if k == "a"][1:]
        layers["learned_value_residual_mix"] = bool(mixes) and mixes[0] == "Sequential"
    if problems:
        raise ValueError(f"x-transformers features outside the shared set: {sorted(set(problems))}")
    wrapper["attn_layers"] = layers
    return wrapper


def _attention_flags(attn: nn.Module, al: nn.Module, problems: list[str]) -> dict[str, Any]:
    import x_transformers.x_transformers as xt

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    flags: dict[str, Any] = {}
    dim_head = attn.to_q.out_features // attn.heads
    if attn.kv_heads != attn.heads:
        flags["attn_kv_heads"] = attn.kv_heads
    if attn.num_mem_kv:
        flags["attn_num_mem_kv"] = attn.num_mem_kv
    if attn.q_rmsnorm is not None:
        flags["attn_qk_rmsnorm"] = True
    need(attn.k_rmsnorm is None or attn.q_rmsnorm is not None, "attn_k_rmsnorm (keys only)")
    if attn.qk_norm:
        need(attn.qk_norm_groups == 1, "attn_qk_norm_groups > 1")
        need(not attn.num_mem_kv, "attn_qk_norm with attn_num_mem_kv")
        flags["attn_qk_norm"] = True
        if attn.qk_norm_dim_scale:
            flags["attn_qk_norm_dim_scale"] = True
        else:
            flags["attn_qk_norm_scale"] = float(attn.qk_norm_scale)
    need(attn.value_rmsnorm is None, "attn_value_rmsnorm")
    gate = attn.to_v_gate
    if gate is not None:
        ok = isinstance(gate, nn.Linear) and not attn.gate_values_headwise and attn.to_v_gate_activation is F.sigmoid
        need(ok, "attn_gate_values with a rank, headwise gate or swiglu_values")
        flags["attn_gate_values"] = True
    need(attn.to_output_gate is None, "attn_output_gate (HyGA gate from the attention output)")
    need(attn.to_v_head_gate is None, "attn_gate_value_heads")
    need(not attn.head_scale, "attn_head_scale")
    need(attn.max_attend_past is None, "attn_max_attend_past")
    need(attn.rel_proj_pos_bias is None, "attn_use_rel_proj_pos_bias")
    need(not attn.laser, "attn_laser")
    need(attn.hybrid_module is None, "attn_hybrid_module")
    need(not attn.use_latent_q and not attn.use_latent_kv, "multi-latent attention")
    need(attn.rotate_num_heads == attn.heads, "rotate_num_heads")
    need(not attn.orthog_projected_values and not attn.orthog_projected_values_per_head, "orthog_projected_values")
    need(not attn.qkv_receive_diff_residuals, "qkv_receive_diff_residuals")
    need(not attn.attn_on_attn, "attn_on_attn")
    need(attn.sublayer_dropout is None, "attn_sublayer_dropout")
    need(isinstance(attn.to_out, nn.Linear) or (_is_identity(attn.to_out) and attn.to_q.out_features == al.dim),
         "attention output projection")
    need(attn.to_v.out_features == attn.kv_heads * dim_head, "attn_value_dim_head != dim_head")
    dda = attn.data_dependent_alibi
    if isinstance(dda, xt.PerRowDataDependentAlibi):
        flags["attn_data_dependent_alibi"] = True
        flags["attn_data_dependent_alibi_per_row"] = True
        heads = attn.heads
        flags["attn_data_dependent_alibi_per_row_dim_head"] = dda.to_forget_gates[0].out_features // (2 * heads)
        if dda.post_log_scale != 1.0:
            flags["attn_data_dependent_alibi_kwargs"] = dict(post_log_scale=dda.post_log_scale)
    elif isinstance(dda, xt.DataDependentAlibi):
        flags["attn_data_dependent_alibi"] = True
        if dda.post_log_scale != 1.0:
            flags["attn_data_dependent_alibi_kwargs"] = dict(post_log_scale=dda.post_log_scale)
    elif dda is not None:
        problems.append(f"data dependent alibi module {type(dda).__name__}")
    att = attn.attend
    fn = att.attn_fn
    need(isinstance(fn, functools.partial) and fn.func is F.softmax, "a non-softmax attention (sigmoid, hard, sparse_topk, gumbel, custom)")
    for flag in ("pre_softmax_talking_heads", "post_softmax_talking_heads", "pre_scale_post_talking_heads", "cope",
                 "head_attn_sink"):
        need(getattr(att, flag, None) is None, f"attn {flag}")
    for flag in ("selective", "cog_signed", "l2_distance", "add_zero_kv", "inverted_attention", "head_learned_sink"):
        need(not getattr(att, flag, False), f"attn_{flag}")
    fixed_qk_scale = attn.qk_norm and not attn.qk_norm_dim_scale  # its scale is folded into our l2 scales
    need(fixed_qk_scale or att.scale is None or abs(att.scale - dim_head**-0.5) < 1e-9,
         "an attention scale other than dim_head ** -0.5")
    if att.softclamp_logits:
        flags["attn_softclamp_logits"] = True
        flags["attn_logit_softclamp_value"] = float(att.logit_softclamp_value)
    if att.dropout:
        flags["attn_dropout"] = float(att.dropout)
    return flags


def _feedforward_flags(ff: nn.Module, dim: int, problems: list[str]) -> dict[str, Any]:
    import x_transformers.x_transformers as xt

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    flags: dict[str, Any] = {}
    seq = list(ff.ff)
    proj_in, proj_out = seq[0], seq[-1]
    need(isinstance(proj_out, nn.Linear) and proj_out.bias is not None and proj_out.out_features == dim,
         "ff_no_bias / ff dim_out / ff_sublayer_dropout")
    need(not any(isinstance(m, xt.LayerNorm) for m in seq), "ff_post_act_ln")
    dropouts = [m for m in seq if isinstance(m, nn.Dropout)]
    if dropouts and dropouts[0].p:
        flags["ff_dropout"] = float(dropouts[0].p)
    if isinstance(proj_in, xt.GLU):
        flags["ff_glu"] = True
        need(not isinstance(proj_in.mult_bias, nn.Parameter), "ff_glu_mult_bias")
        need(proj_in.up_softclamp_value is None, "ff_glu_softclamp")
        need(isinstance(proj_in.act, (nn.GELU, nn.SiLU)), f"GLU activation {type(proj_in.act).__name__}")
        if isinstance(proj_in.act, nn.SiLU):
            flags["ff_swish"] = True
        need(getattr(proj_in.act, "approximate", "none") == "none", "tanh-approximate GELU")
        inner = proj_in.proj.out_features // 2
    else:
        linear, *rest = list(proj_in)
        need(isinstance(linear, nn.Linear) and linear.bias is not None, "ff_no_bias")
        need(len(rest) == 1, "ff_softclamp_value")
        act = rest[-1] if rest else None
        if isinstance(act, xt.ReluSquared):
            flags["ff_relu_squared"] = True
        elif isinstance(act, nn.SiLU):
            flags["ff_swish"] = True
        elif not isinstance(act, nn.GELU) or act.approximate != "none":
            problems.append(f"ff activation {type(act).__name__} (solu / custom_activation)")
        inner = linear.out_features
    if inner != 4 * dim:
        flags["ff_mult"] = inner / dim
    need(int(dim * (inner / dim)) == inner, "an ff inner width that is not int(dim * mult)")
    return flags


def _is_identity(module: Any) -> bool:
    return isinstance(module, nn.Identity) or type(module).__name__ == "Identity"


def _verify(xt_model: nn.Module, ours: TransformerWrapper, atol: float) -> None:
    was_training = xt_model.training
    xt_model.eval()
    try:
        n = max(1, min(16, xt_model.max_seq_len or 16))
        gen = torch.Generator().manual_seed(0)
        device = next(ours.parameters()).device
        tokens = torch.randint(0, ours.num_tokens, (2, n), generator=gen).to(device)
        with torch.no_grad():
            theirs, mine = xt_model(tokens), ours(tokens)
        err = (theirs.float() - mine.float()).abs().max().item()
        if not err <= atol:
            raise ValueError(
                f"converted model's logits differ from x-transformers' by {err:.3g} (> {atol}); the model uses a "
                "feature outside the shared set that the flag checks did not catch"
            )
    finally:
        xt_model.train(was_training)

