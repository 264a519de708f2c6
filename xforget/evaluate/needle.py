"""Needle-in-a-haystack accuracy of a trained model by context length and depth (token level, "easy mode").

Examples come from :mod:`xforget.data.haystack`. Scoring is teacher forced:
one forward pass over the ``length`` input ids gives the argmax prediction at
every answer id. ``token_accuracy`` is the fraction of answer ids predicted
right; ``exact`` the fraction of examples whose answer ids are *all* right,
which is exactly the fraction that greedy decoding would complete correctly
(greedy decoding emits the argmax; while every previous answer id is right,
its inputs equal the teacher-forced ones).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xforget.data import haystack
from xforget.evaluate.metrics import length_limit, token_losses


def needle_accuracy(net: nn.Module, tokenizer, val, lengths: list[int], depths: list[float], *, per_depth: int,
                    seed: int = 0, batch_tokens: int = 16384, device="cpu") -> list[dict[str, Any]]:
    """Accuracy at each length (and each depth) on ``per_depth`` examples per depth.

    Returns one dict per length: ``length``, ``status`` and, when ok,
    ``exact``, ``token_accuracy``, ``examples`` and ``by_depth`` (a list of
    ``{depth, exact, token_accuracy, examples}``).
    """
    limit = length_limit(net)
    out = []
    for length in lengths:
        row: dict[str, Any] = {"length": length}
        if limit is not None and length > limit:
            row["status"] = "cannot extrapolate"
            out.append(row)
            continue
        exs = haystack.make_examples(tokenizer, val, length, depths, per_depth, seed=seed)
        windows = torch.stack([e.ids for e in exs])
        _, preds = token_losses(net, windows, batch_tokens=batch_tokens, device=device, with_argmax=True)
        exact, tok_right, tok_total = [], [], []
        for e, p in zip(exs, preds):
            truth = e.ids[e.answer_start:]
            guess = p[e.answer_start - 1:length]  # logits at index t predict id t + 1
            right = (guess == truth)
            exact.append(bool(right.all()))
            tok_right.append(int(right.sum()))
            tok_total.append(int(right.numel()))
        by_depth = []
        for d in depths:
            idx = [i for i, e in enumerate(exs) if e.depth == float(d)]
            by_depth.append({"depth": float(d), "examples": len(idx),
                             "exact": round(sum(exact[i] for i in idx) / len(idx), 6),
                             "token_accuracy": round(sum(tok_right[i] for i in idx) / sum(tok_total[i] for i in idx), 6)})
        row.update(status="ok", examples=len(exs), exact=round(sum(exact) / len(exs), 6),
                   token_accuracy=round(sum(tok_right) / sum(tok_total), 6), by_depth=by_depth)
        out.append(row)
    return out
