"""EleutherAI lm-evaluation-harness model ``xforget`` (the FoX paper's downstream numbers come from it).

    from xforget.integrations.harness import XForgetLM          # registers the model name "xforget"
    lm = XForgetLM(pretrained="outputs/run", batch_size=8, device="cpu")
    import lm_eval
    results = lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])

or ``xforget-eval harness=true checkpoint=DIR tasks=[...] [include_path=DIR]``.

``pretrained`` is anything :func:`xforget.train.loading.load_trained` opens: a training run
directory (its latest checkpoint), one checkpoint directory, a hub-style directory
(``save_pretrained`` / ``xforget-export``) or a hub repo id (fetched). Text goes
through the model's own tokenizer (``xforget.data.tokenizer``: bytes or BPE).

* ``loglikelihood``: log P(continuation | context) in nats (sum over the continuation's
  tokens, from float32 log-softmax summed in float64) and whether greedy decoding would
  produce it. Trailing spaces of the context move to the continuation (the harness's
  convention for word boundaries). An empty context is conditioned on ``prefix_token_id``:
  the tokenizer's end-of-text token, or the encoding of ``"\\n"`` for tokenizers without
  one (bytes). Inputs longer than ``max_length`` keep the last ``max_length`` tokens.
* ``loglikelihood_rolling``: the whole text's log-likelihood, scored in disjoint windows
  of ``max_length`` tokens (the harness's ``get_rolling_token_windows``), first token
  conditioned on ``prefix_token_id``.
* ``generate_until``: greedy (or sampled, from ``gen_kwargs``) decoding with the KV cache,
  prompts of a batch left-padded together (each row equals its own unbatched run), each
  row stopped at the first ``until`` string, the end-of-text token or ``max_gen_toks``.

Requests are sorted by length (longest first) and scored ``batch_size`` at a time;
right padding needs no mask (causal attention never looks ahead).
``max_length`` defaults to the model's training context (``max_seq_len``).

Raises (construction): ImportError naming the ``harness`` extra when lm-eval is missing;
ValueError for bad model_args; CheckpointError (one line) for a path without a loadable model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as exc:  # the optional extra
    raise ImportError(f"xforget.integrations.harness needs lm-evaluation-harness ({exc}); "
                      "install the extra: pip install 'xforget[harness]'") from None

from xforget.models.autoregressive import AutoregressiveWrapper
from xforget.models.sampling import SamplingOptions
from xforget.train.loading import load_trained

DEFAULT_MAX_GEN_TOKS = 256
_IGNORED_ARGS = {"max_batch_size", "trust_remote_code", "dtype"}  # passed by lm-eval to every model; no meaning here


@register_model("xforget")
class XForgetLM(LM):
    """An xforget language model for lm-evaluation-harness (registered as ``xforget``).

    Args:
        pretrained: run directory, hub-style directory or hub repo id.
        batch_size: requests per forward pass (an int; "auto" is not supported).
        device: torch device ("cpu", "cuda", "cuda:0", ...; default cpu).
        max_length: longest input in tokens (default: the model's max_seq_len).
        max_gen_toks: default generation budget of ``generate_until``.
    """

    def __init__(self, pretrained: str, batch_size: int | str = 1, device: str = "cpu",
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, **extra: Any) -> None:
        super().__init__()
        unknown = sorted(set(extra) - _IGNORED_ARGS)
        if unknown:
            raise ValueError(f"XForgetLM: unknown model_args {unknown}; valid: pretrained, batch_size, device, "
                             "max_length, max_gen_toks")
        try:
            self.batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size={batch_size!r}: must be a positive integer") from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
        self._device = torch.device(device or "cpu")
        if self._device.type == "cpu":
            torch.set_flush_denormal(True)  # decayed attention weights are slow as denormals on x86
        loaded = load_trained(pretrained, self._device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        limit = self.model.position_limit
        self.max_length = int(max_length or self.model.max_seq_len)
        if limit is not None:
            self.max_length = min(self.max_length, limit)
        self.max_gen_toks = int(max_gen_toks)
        eot = getattr(self.tokenizer, "eot_id", None)
        self.eot_token_id = eot
        self.prefix_token_id = eot if eot is not None else self.tokenizer.encode("\n")[0]

    # ------------------------------------------------------------------ lm-eval interface

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", "bytes"))

    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        return self._score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), self.prefix_token_id, self.max_length, 1)):
                windows.append((ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._score(windows)):
            totals[i] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted((req.args[1] or {}).items())), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1] or {})
            indices.sort(key=lambda i: -len(self.tok_encode(requests[i].args[0])))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = self._generate([requests[i].args[0] for i in chunk], kwargs)
                for i, text in zip(chunk, texts):
                    out[i] = text
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ scoring

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids); trailing context spaces go to the continuation,
        and the continuation's ids are those of the joined text past the context's."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tok_encode(continuation)
        whole, ctx = self.tok_encode(context + continuation), self.tok_encode(context)
        return whole[:len(ctx)], whole[len(ctx):]

    @torch.no_grad()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of log P(cont | ctx) over the continuation tokens, and greedy-match, per pair."""
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            rows, conts = [], []
            for i in chunk:
                ctx, cont = pairs[i]
                if not cont:
                    results[i] = (0.0, True)
                    continue
                if len(cont) > self.max_length:
                    raise ValueError(f"a continuation of {len(cont)} tokens is longer than max_length="
                                     f"{self.max_length}; raise max_length")
                seq = (ctx + cont)[-(self.max_length + 1):][:-1]
                rows.append((i, seq))
                conts.append(cont)
            if not rows:
                continue
            width = max(len(seq) for _, seq in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            for r, (_, seq) in enumerate(rows):
                tokens[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            logits = self.model(tokens.to(self._device))  # right padding: causal rows never see it
            for r, ((i, seq), cont) in enumerate(zip(rows, conts)):
                n = len(cont)
                logp = F.log_softmax(logits[r, len(seq) - n:len(seq)].float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                total = logp.gather(-1, target[:, None]).squeeze(-1).double().sum().item()
                greedy = bool((logp.argmax(-1) == target).all())
                results[i] = (total, greedy)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ generation

    def _generate(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        kwargs = dict(kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(kwargs.pop("do_sample", False))
        sampling = SamplingOptions(temperature=float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0,
                                   top_k=kwargs.pop("top_k", None), top_p=kwargs.pop("top_p", None),
                                   eos_token=self.eot_token_id)
        prompt_room = self.max_length - max_new if self.model.position_limit is not None else None
        prompts = []
        for text in contexts:
            ids = self.tok_encode(text) or [self.prefix_token_id]
            if prompt_room is not None and prompt_room > 0:
                ids = ids[-prompt_room:]
            prompts.append(torch.tensor(ids, dtype=torch.long, device=self._device))
        lm = AutoregressiveWrapper(self.model)
        new: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        texts = [""] * len(contexts)
        for step in lm.stream(prompts, max_new, sampling=sampling):
            for r, tok in enumerate(step.tolist()):
                if done[r]:
                    continue
                if self.eot_token_id is not None and tok == self.eot_token_id:
                    done[r] = True
                    continue
                new[r].append(tok)
                texts[r] = self.tok_decode(new[r])
                if any(s in texts[r] for s in until):
                    done[r] = True
            if all(done):
                break
        return [_cut(t, until) for t in texts]


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to (not including) the first stop string."""
    cuts = [text.find(s) for s in until if s and s in text]
    return text[:min(cuts)] if cuts else text
