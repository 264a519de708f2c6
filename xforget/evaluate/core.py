"""Evaluate one trained run: validation bpb, per-position loss, length extrapolation, task accuracy.

:func:`evaluate_run` is what ``xforget-eval`` prints and what ``xforget-compare``
collects for every run; it returns a plain JSON-able dict (see :func:`evaluate_model`).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xforget.data import DataError, load_corpus, synthetic, val_windows
from xforget.data.documents import packing_eot_id
from xforget.data.prepare import read_meta
from xforget.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, same_tokenizer
from xforget.data.tokens import load_tokens
from xforget.errors import ConfigError
from xforget.evaluate.config import EvalConfig, validate_eval
from xforget.evaluate.metrics import evaluate_windows, length_limit, nats_to_bpb, token_losses
from xforget.evaluate.needle import needle_accuracy
from xforget.evaluate.pruning import format_pruning, pruning_fractions
from xforget.models.packing import packed
from xforget.train.run_dir import weights_step
from xforget.train.config import BYTE_VOCAB, DataConfig, TrainConfig, TrainerConfig
from xforget.train.loading import load_trained

ROUND = 6
OK, CANNOT_EXTRAPOLATE, TOO_SHORT = "ok", "cannot extrapolate", "validation split too short"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validation_bytes(data_cfg: DataConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """The validation split (uint8) of the corpus ``data_cfg`` names: the last ``val_fraction`` of its bytes.

    Same rule as training's :func:`xforget.data.split_corpus` (which also checks the
    sizes against one ``seq_len``; here each evaluation length is checked on its own).
    """
    corpus = load_corpus(data_cfg)
    t = torch.frombuffer(bytearray(corpus.data), dtype=torch.uint8)
    n_val = int(t.numel() * data_cfg.val_fraction)
    info = {"name": data_cfg.name, "path": data_cfg.path, "bytes": t.numel(), "val_bytes": n_val,
            "sha256": corpus.meta.get("sha256")}
    return t[t.numel() - n_val:], info


def validation_tokens(data_cfg: DataConfig) -> tuple[Any, dict[str, Any], float]:
    """(validation token ids, info, tokens per byte) of any data config: byte corpora via
    :func:`validation_bytes` (factor 1), ``data=tokens`` memory-mapped (factor from meta.json)."""
    if data_cfg.name != "tokens":
        val, info = validation_bytes(data_cfg)
        return val, info, 1.0
    if not data_cfg.path:
        raise DataError("data=tokens needs a prepared dataset directory: data.path=DIR")

    data = load_tokens(data_cfg.path)
    m = data.meta
    info = {"name": "tokens", "path": str(data.path), "tokenizer": m["tokenizer"], "vocab_size": m["vocab_size"],
            "val_tokens": m["val"]["tokens"], "val_bytes": m["val"]["bytes"],
            "tokens_per_byte": data.tokens_per_byte("val"), "sha256": m.get("input", {}).get("sha256")}
    return data.val, info, data.tokens_per_byte("val")


def _r(x: float) -> float:
    return round(float(x), ROUND)


def evaluate_model(net: nn.Module, val: torch.Tensor, lengths: list[int], *, tokens: int, batch_tokens: int = 16384,
                   per_position: bool = True, device: torch.device | str = "cpu",
                   multiples: list[int] | None = None, tokens_per_byte: float = 1.0,
                   buckets_per_octave: int = 0) -> list[dict[str, Any]]:
    """Loss, bpb and per-position loss of ``net`` at each length, on ``tokens // length`` validation windows.

    Lengths and ``tokens`` count tokens (bytes for byte-level data); ``val`` is a
    tensor or numpy array of ids; ``tokens_per_byte`` converts the loss into bits
    per byte of the original text (see :mod:`.metrics`).

    Returns one dict per length: ``length``, ``multiple``, ``status`` (``ok``,
    ``cannot extrapolate`` for a model whose absolute position table is shorter,
    ``validation split too short``), and when ok ``windows``, ``tokens``,
    ``loss`` (nats), ``bpb`` and ``per_position`` (mean loss at each target index);
    with ``buckets_per_octave > 0`` also ``buckets`` (log-spaced position
    buckets: mean loss and standard error over windows, see
    :func:`.metrics.bucket_stats`) and ``prefix_bpb`` (``{L: bpb of positions
    1..L}`` for every shorter evaluated ``L``: what a causal model scores on
    windows of ``L`` tokens starting where these windows start).
    """
    limit = length_limit(net)
    out = []
    for i, length in enumerate(lengths):
        row: dict[str, Any] = {"length": length, "multiple": multiples[i] if multiples else None}
        if limit is not None and length > limit:
            row.update(status=CANNOT_EXTRAPOLATE, reason=f"absolute position table has {limit} entries")
        elif len(val) < length + 1:
            row.update(status=TOO_SHORT, reason=f"{len(val)} validation tokens < {length + 1}")
        else:
            windows = val_windows(val, length, max(1, tokens // length))
            ev = evaluate_windows(net, windows, batch_tokens=batch_tokens, device=device,
                                  tokens_per_byte=tokens_per_byte, buckets_per_octave=buckets_per_octave)
            row.update(status=OK, windows=ev.windows, tokens=ev.tokens, loss=_r(ev.loss), bpb=_r(ev.bpb),
                       ppl=_r(ev.ppl))
            if per_position:
                row["per_position"] = [_r(v) for v in ev.per_position]
            if ev.buckets:
                for key, stats in (("buckets", ev.buckets), ("octaves", ev.octaves)):
                    row[key] = [{**b, "mean": _r(b["mean"]), "se": None if b["se"] is None else _r(b["se"])}
                                for b in stats]
                row["prefix_bpb"] = {str(n): _r(nats_to_bpb(sum(ev.per_position[:n]) / n, tokens_per_byte))
                                     for n in lengths if n <= length}
        out.append(row)
    return out


def _bins(index: torch.Tensor, correct: torch.Tensor, upper: int, count: int = 8) -> list[dict[str, Any]]:
    edges = torch.linspace(0, upper, count + 1).round().long().tolist()
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (index >= lo) & (index < hi)
        n = int(sel.sum())
        if n:
            rows.append({"lo": lo, "hi": hi, "n": n, "accuracy": _r(correct[sel].float().mean())})
    return rows


def task_accuracy(net: nn.Module, task: str, lengths: list[int], *, examples: int = 64, seed: int = 1234,
                  batch_tokens: int = 16384, device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Answer accuracy (top-1, teacher forced) of ``net`` on a synthetic task at each length.

    At length L, ``examples`` fresh examples of exactly L + 1 bytes (one per
    window) are generated with ``seed``; every answer byte counts once.
    Reported overall, by the answer's position in the window and by its
    distance to the byte it recalls (8 equal bins each).
    """
    limit = length_limit(net)
    out = []
    for length in lengths:
        row: dict[str, Any] = {"length": length}
        if limit is not None and length > limit:
            row.update(status=CANNOT_EXTRAPOLATE)
        elif length + 1 < synthetic.min_length(task):
            row.update(status=f"too short for {task} (needs {synthetic.min_length(task) - 1})")
        else:
            exs = synthetic.generate_examples(task, examples, length + 1, seed)
            windows, targets, dists = synthetic.answer_windows(exs, length)
            _, preds = token_losses(net, windows, batch_tokens=batch_tokens, device=device, with_argmax=True)
            truth = windows[:, 1:].gather(1, targets)
            correct = preds.gather(1, targets) == truth
            row.update(status=OK, examples=examples, answers=int(correct.numel()),
                       accuracy=_r(correct.float().mean()),
                       by_position=_bins(targets.flatten(), correct.flatten(), length),
                       by_distance=_bins(dists.flatten(), correct.flatten(), length))
        out.append(row)
    return out


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the weights evaluated in ``run_dir`` (a checkpoint directory's own step, a run's latest
    complete checkpoint; None for final weights only and hub directories): :func:`weights_step`."""
    return weights_step(run_dir)


def load_for_eval(path: Path, data_cfg: DataConfig | None, device) -> tuple[nn.Module, TrainConfig, Tokenizer]:
    """(model, the training config to evaluate it by, the model's tokenizer) of anything
    :func:`~xforget.train.loading.load_trained` opens: a run or checkpoint directory, a hub-style directory or a
    hub repo id.

    A hub-style directory (``config.json`` + ``model.safetensors``, no ``config.yaml``) holds the model
    and its tokenizer but no training config: the base length is its ``max_seq_len`` (the training
    context), the other defaults are :class:`TrainerConfig`'s, and the data must be given.

    Raises:
        CheckpointError: nothing loadable; ConfigError: a hub-style directory without ``data_cfg``.
    """
    loaded = load_trained(path, device)
    if loaded.train_config is not None:
        return loaded.model, loaded.train_config, loaded.tokenizer
    if data_cfg is None:
        raise ConfigError(f"checkpoint={path} is a hub-style directory (config.json + model.safetensors), which records "
                          "no data: add the data to evaluate on, e.g. data=text data.path=FILE or data=tokens "
                          "data.path=DIR (prepared with its tokenizer)")
    model_cfg = loaded.model_config
    cfg = TrainConfig(model=model_cfg, data=data_cfg, trainer=TrainerConfig(seq_len=model_cfg.max_seq_len))
    return loaded.model, cfg, loaded.tokenizer


def _digest(tok: Tokenizer) -> str:
    """The first 8 hex digits of the sha256 of a tokenizer's JSON (``bytes`` when it has none)."""
    import hashlib

    to_str = getattr(tok, "to_str", None)
    return "bytes" if to_str is None else hashlib.sha256(to_str().encode()).hexdigest()[:8]


def check_data_fits_model(path: str | Path, data_cfg: DataConfig, data_info: dict[str, Any], num_tokens: int,
                          tokenizer: Tokenizer | None) -> None:
    """Refuse data whose token ids mean something else to the model: the data's tokenizer (bytes for the byte
    corpora, the prepared dataset's own for ``data=tokens``) must be the model's, vocabulary included. Run,
    checkpoint and hub directories are checked alike. A model whose tokenizer is not known (``tokenizer`` None,
    or a hub directory saved without ``tokenizer.json``: bytes with another vocabulary) is checked by the
    vocabulary alone.

    Raises:
        DataError: one line naming both tokenizers and what to evaluate on instead.
    """
    prepared = data_cfg.name == "tokens"
    data_vocab = int(data_info["vocab_size"]) if prepared else BYTE_VOCAB
    data_tok = load_tokenizer(data_cfg.path) if prepared else ByteTokenizer()
    known = tokenizer is not None and not (isinstance(tokenizer, ByteTokenizer) and num_tokens != BYTE_VOCAB)
    if data_vocab == num_tokens and (not known or same_tokenizer(tokenizer, data_tok)):
        return
    model_name, data_name = (tokenizer.name if known else None), data_tok.name
    if model_name == data_name:  # same kind and size, other merges: the names alone would read alike
        model_name, data_name = f"{model_name} #{_digest(tokenizer)}", f"{data_name} #{_digest(data_tok)}"
    model_side = f"tokenizer {model_name}, vocabulary {num_tokens}" if known else f"vocabulary {num_tokens}"
    data_side = (f"the prepared dataset {data_cfg.path} has tokenizer {data_name}, vocabulary {data_vocab}"
                 if prepared else f"data={data_cfg.name} is byte level (vocabulary {BYTE_VOCAB})")
    raise DataError(f"the model in {path} was trained with another tokenizer ({model_side}); {data_side}: its ids "
                    "would be read as other tokens; evaluate on data=tokens data.path=DIR prepared with the model's "
                    "tokenizer (xforget-prepare input=... output=DIR tokenizer=<the model's tokenizer.json>)")


def evaluate_run(run_dir: str | Path, ecfg: EvalConfig | None = None, data_cfg: DataConfig | None = None,
                 *, model: nn.Module | None = None, train_cfg: TrainConfig | None = None) -> dict[str, Any]:
    """All evaluations of the trained model in ``run_dir`` as a JSON-able dict.

    Args:
        run_dir: a training run directory (latest complete checkpoint is used), one checkpoint
            directory, or a hub-style directory (``config.json`` + ``model.safetensors``, e.g. from
            ``xforget-export``; it records no data, so ``data_cfg`` is required).
        ecfg: what to measure (default :class:`EvalConfig`).
        data_cfg: the corpus to validate on (default: the run's own data config).
    Raises:
        CheckpointError (nothing loadable), DataError, ConfigError.
    """
    ecfg = ecfg or EvalConfig()
    validate_eval(ecfg)
    run_dir = Path(run_dir)
    if ecfg.threads:
        torch.set_num_threads(ecfg.threads)
    device = pick_device(ecfg.device)
    if model is None or train_cfg is None:
        model, train_cfg, model_tokenizer = load_for_eval(run_dir, data_cfg, device)
    else:
        model_tokenizer = None  # the caller's model: its vocabulary is checked
    model = model.to(device).eval()
    data_cfg = data_cfg or train_cfg.data
    t = train_cfg.trainer
    base = ecfg.seq_len or t.seq_len
    multiples = [int(m) for m in ecfg.multiples]
    lengths = [m * base for m in multiples]
    tokens = ecfg.tokens or t.eval_batches * t.batch_size * t.seq_len
    val, data_info, tokens_per_byte = validation_tokens(data_cfg)
    check_data_fits_model(run_dir, data_cfg, data_info, train_cfg.model.num_tokens, model_tokenizer)
    if data_cfg.name == "tokens" and getattr(data_cfg, "pack_documents", False):  # the training rule, one place
        model = packed(model, packing_eot_id(read_meta(Path(data_cfg.path)), data_cfg.path))
        data_info["pack_documents"] = True
    rows = evaluate_model(model, val, lengths, tokens=tokens, batch_tokens=ecfg.batch_tokens,
                          per_position=ecfg.per_position, device=device, multiples=multiples,
                          tokens_per_byte=tokens_per_byte, buckets_per_octave=ecfg.position_buckets)
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "checkpoint_step": checkpoint_step(run_dir),
        "position": train_cfg.model.position,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seq_len": t.seq_len,
        "base_seq_len": base,
        "data": data_info,
        "eval": asdict(ecfg),
        "lengths": rows,
        "val_loss": next((r["loss"] for r in rows if r["status"] == OK), None),
        "val_bpb": next((r["bpb"] for r in rows if r["status"] == OK), None),
        "val_ppl": next((r["ppl"] for r in rows if r["status"] == OK), None),
    }
    ok_lengths = [r["length"] for r in rows if r["status"] == OK]
    if ok_lengths:  # adaptive computation pruning at the shortest and the longest evaluated length
        by_length = {}
        for n in sorted({min(ok_lengths), max(ok_lengths)}):
            wins = val_windows(val, n - 1, ecfg.pruning_windows)  # (k, n) token ids, evenly spaced
            by_length[str(n)] = pruning_fractions(model, wins.to(device))
        result["pruning"] = by_length[str(max(ok_lengths))]
        result["pruning_by_length"] = by_length
    if ecfg.needle_examples > 0:
        tok = load_tokenizer(run_dir)
        needle_lengths = [int(m) * base for m in (ecfg.needle_multiples or multiples)]
        result["needle"] = {"key": "secret", "per_depth": ecfg.needle_examples, "depths": list(ecfg.needle_depths),
                            "lengths": needle_accuracy(model, tok, val, needle_lengths, list(ecfg.needle_depths),
                                                       per_depth=ecfg.needle_examples, seed=ecfg.task_seed,
                                                       batch_tokens=ecfg.batch_tokens, device=device)}
    task = ecfg.task or (data_cfg.name if data_cfg.name in synthetic.TASKS else None)
    if task:
        result["task"] = {"name": task, "lengths": task_accuracy(model, task, lengths, examples=ecfg.task_examples,
                                                                 seed=ecfg.task_seed, batch_tokens=ecfg.batch_tokens,
                                                                 device=device)}
    return result


def format_table(result: dict[str, Any]) -> str:
    """A small text table of one evaluation (what ``xforget-eval`` prints)."""
    step = result["checkpoint_step"]
    run = Path(result["run_dir"])
    hub = (run / "config.json").is_file() and not (run / "config.yaml").is_file()
    where = f"step {step}" if step is not None else "a hub-style directory" if hub else "final weights"
    lines = [f"run {result['run_dir']} ({where}, position {result['position']}, "
             f"{result['params'] / 1e6:.2f}M params, data {result['data']['name']})",
             f"{'length':>8} {'x':>4} {'windows':>8} {'loss':>8} {'bpb':>8}  first/last-quarter loss"]
    for r in result["lengths"]:
        mult = f"{r['multiple']}x" if r.get("multiple") else ""
        if r["status"] != OK:
            lines.append(f"{r['length']:>8} {mult:>4} {'':>8} {'':>8} {'':>8}  {r['status']}")
            continue
        pp = r.get("per_position") or []
        q = max(1, len(pp) // 4)
        quarters = f"{sum(pp[:q]) / q:.3f} / {sum(pp[-q:]) / q:.3f}" if pp else ""
        lines.append(f"{r['length']:>8} {mult:>4} {r['windows']:>8} {r['loss']:>8.4f} {r['bpb']:>8.4f}  {quarters}")
    if "task" in result:
        accs = ", ".join(f"{r['length']}: {r['accuracy']:.3f}" if r["status"] == OK else f"{r['length']}: {r['status']}"
                         for r in result["task"]["lengths"])
        lines.append(f"{result['task']['name']} answer accuracy by length: {accs}")
    if "pruning" in result:
        lines.extend(format_pruning(result["pruning"]))
    return "\n".join(lines)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None for none)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
