"""Synthetic byte-level diagnostic tasks: where forgetting helps and where it hurts.

Two generators, deterministic from a seed, each producing examples of an exact
byte length with the positions of the bytes that are *answers* (predictable
only by recalling an earlier byte, the *source*):

* ``mqar`` -- multi-query associative recall (Arora et al. 2023, "Zoology").
  Layout (``length`` bytes)::

      ....ab=3 xq=K ... mz=0 |xq=K ab=3 ... mz=0 \n

  leading ``.`` padding, then ``p`` key=value pairs (keys: two lowercase
  letters, distinct within the example; values: one byte of ``0-9A-Z``), ``|``,
  then every key queried once in shuffled order. Each queried value is an
  answer; its source is the value byte in the pair section.
* ``needle`` -- needle retrieval: random lowercase filler words, a needle
  `` the secret is 4821. `` planted early (at ``depth`` in [0, max_depth] of the
  filler), and at the very end `` secret? 4821`` + ``\n``. The four digits
  after ``secret?`` are answers; their sources are the needle's digits.

API:

* :func:`make_example` ``(task, rng, length) -> Example``
* :func:`generate_examples` ``(task, count, length, seed) -> list[Example]``
* :func:`synthetic_stream` ``(task, seed, num_bytes, example_len) -> Example``:
  examples concatenated (a training corpus with all answer positions).
* :func:`load_synthetic` ``(name, ...) -> Corpus``: the corpus object the data
  registry returns for ``data=mqar`` / ``data=needle``.
* :func:`oracle_answer` ``(task, prefix) -> bytes``: the rule-based solver
  (used by the tests to show the answer is recoverable from the bytes before it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from xforget.data.corpus import Corpus, sha256

TASKS = ("mqar", "needle")
KEY_CHARS = "abcdefghijklmnopqrstuvwxyz"
VALUE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FILLER_WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they which one you were "
    "her all she there would their we him been has when who will more no if out so said what up its about into than "
    "them can only other new some could time these two may then do first any my now such like our over man me even"
).split()
NEEDLE_PREFIX, QUESTION = " the secret is ", " secret? "
MQAR_PAIR = 5  # "ab=3 "
MQAR_MIN_LENGTH = 2 * MQAR_PAIR + 2
NEEDLE_MIN_LENGTH = len(NEEDLE_PREFIX) + 6 + len(QUESTION) + 5  # needle "4821. " + question "4821\n"
DEFAULT_EXAMPLE_LEN = {"mqar": 128, "needle": 128}
MQAR_KEYS = tuple(a + b for a in KEY_CHARS for b in KEY_CHARS)


@dataclass
class Example:
    """``text`` bytes; ``answers[i]`` is the byte index of an answer, ``sources[i]`` the index it is recalled from."""

    text: bytes
    answers: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.text)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; valid: {list(TASKS)}")


def min_length(task: str) -> int:
    _check_task(task)
    return MQAR_MIN_LENGTH if task == "mqar" else NEEDLE_MIN_LENGTH


def mqar_example(rng: random.Random, length: int, num_pairs: int | None = None) -> Example:
    """One MQAR example of exactly ``length`` bytes (as many pairs as fit, up to 676, unless ``num_pairs``)."""
    fit = (length - 2) // (2 * MQAR_PAIR)
    p = min(fit, len(MQAR_KEYS)) if num_pairs is None else num_pairs
    if p < 1 or p > fit:
        raise ValueError(f"mqar: {p} pairs do not fit in {length} bytes (at most {fit}; length >= {MQAR_MIN_LENGTH})")
    keys = rng.sample(MQAR_KEYS, p)
    values = [rng.choice(VALUE_CHARS) for _ in keys]
    pad = length - (2 * MQAR_PAIR * p + 2)
    text, answers, sources, value_at = ["." * pad], [], [], {}
    pos = pad
    for k, v in zip(keys, values):
        text.append(f"{k}={v} ")
        value_at[k] = pos + 3
        pos += MQAR_PAIR
    text.append("|")
    pos += 1
    order = list(range(p))
    rng.shuffle(order)
    for i in order:
        text.append(f"{keys[i]}={values[i]} ")
        answers.append(pos + 3)
        sources.append(value_at[keys[i]])
        pos += MQAR_PAIR
    text.append("\n")
    out = "".join(text).encode("ascii")
    assert len(out) == length
    return Example(out, answers, sources)


def _filler(rng: random.Random, n: int) -> str:
    words: list[str] = []
    size = 0
    while size <= n:  # the joined text has size - 1 characters
        w = rng.choice(FILLER_WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n]


def needle_example(rng: random.Random, length: int, max_depth: float = 0.25) -> Example:
    """One needle example of exactly ``length`` bytes; the needle starts within the first ``max_depth`` of the filler."""
    if length < NEEDLE_MIN_LENGTH:
        raise ValueError(f"needle: length must be >= {NEEDLE_MIN_LENGTH}, got {length}")
    secret = f"{rng.randrange(10_000):04d}"
    needle, question = f"{NEEDLE_PREFIX}{secret}. ", f"{QUESTION}{secret}\n"
    free = length - len(needle) - len(question)
    before = int(rng.random() * max_depth * free)
    text = _filler(rng, before) + needle + _filler(rng, free - before) + question
    src0 = before + len(NEEDLE_PREFIX)
    ans0 = length - 5
    out = text.encode("ascii")
    assert len(out) == length
    return Example(out, [ans0 + i for i in range(4)], [src0 + i for i in range(4)])


def make_example(task: str, rng: random.Random, length: int, **params) -> Example:
    """One example of ``task`` (``mqar`` | ``needle``) of exactly ``length`` bytes."""
    _check_task(task)
    return mqar_example(rng, length, **params) if task == "mqar" else needle_example(rng, length, **params)


def generate_examples(task: str, count: int, length: int, seed: int = 0, **params) -> list[Example]:
    """``count`` examples of ``length`` bytes; the same (task, count, length, seed, params) give the same bytes."""
    rng = random.Random(f"xforget-synthetic:{task}:{seed}:{length}")
    return [make_example(task, rng, length, **params) for _ in range(count)]


def concat(examples: list[Example]) -> Example:
    """Concatenate examples, shifting answer and source positions."""
    text, answers, sources, offset = [], [], [], 0
    for ex in examples:
        text.append(ex.text)
        answers += [a + offset for a in ex.answers]
        sources += [s + offset for s in ex.sources]
        offset += len(ex.text)
    return Example(b"".join(text), answers, sources)


def synthetic_stream(task: str, seed: int = 0, num_bytes: int = 1 << 21, example_len: int | None = None,
                     **params) -> Example:
    """A training corpus: examples of ``example_len`` bytes concatenated up to ``num_bytes`` (rounded up)."""
    example_len = example_len or DEFAULT_EXAMPLE_LEN[task]
    count = -(-num_bytes // example_len)
    return concat(generate_examples(task, count, example_len, seed, **params))


def load_synthetic(name: str, seed: int = 0, num_bytes: int = 1 << 21, example_len: int | None = None):
    """The :class:`~xforget.data.corpus.Corpus` for ``data=mqar`` / ``data=needle`` (2 MiB by default)."""
    stream = synthetic_stream(name, seed, num_bytes, example_len)
    meta = {"task": name, "seed": seed, "example_len": example_len or DEFAULT_EXAMPLE_LEN[name],
            "bytes": len(stream.text), "sha256": sha256(stream.text), "answers": len(stream.answers)}
    return Corpus(stream.text, name, meta)


def answer_windows(examples: list[Example], length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Windows for scoring: each example right-aligned in ``length + 1`` bytes (left-padded with ``\\n``).

    Returns (windows (count, length + 1) int64, answer_targets (count, k) target
    indices (answer byte index - 1 in window coordinates), distances (count, k)
    answer index - source index). All examples must have the same number k of answers.
    """
    rows, targets, dists = [], [], []
    for ex in examples:
        if len(ex.text) > length + 1:
            raise ValueError(f"example of {len(ex.text)} bytes does not fit a window of {length + 1}")
        pad = length + 1 - len(ex.text)
        rows.append(torch.tensor(list(b"\n" * pad + ex.text), dtype=torch.long))
        targets.append([pad + a - 1 for a in ex.answers])
        dists.append([a - s for a, s in zip(ex.answers, ex.sources)])
    return torch.stack(rows), torch.tensor(targets, dtype=torch.long), torch.tensor(dists, dtype=torch.long)


_MQAR_PAIR_RE = re.compile(rb"([a-z]{2})=(.)")
_NEEDLE_RE = re.compile(rb"the secret is (\d{4})\.")


def oracle_answer(task: str, prefix: bytes) -> bytes:
    """The byte that follows ``prefix``, computed by the task's rule (an oracle solver).

    ``prefix`` is everything before an answer byte; the oracle only looks at it.
    """
    _check_task(task)
    if task == "mqar":
        head, _, tail = prefix.rpartition(b"|")
        key = tail[-3:-1]
        table = dict(_MQAR_PAIR_RE.findall(head.rsplit(b"\n", 1)[-1]))
        return table[key]
    secret = _NEEDLE_RE.findall(prefix)[-1]
    typed = prefix[prefix.rfind(QUESTION.encode()) + len(QUESTION):]
    return secret[len(typed):len(typed) + 1]


def main(argv: list[str] | None = None) -> None:
    """``python -m xforget.data.synthetic TASK OUT [--bytes N] [--example-len L] [--seed S]``: write a corpus file.

    Until ``data=mqar`` / ``data=needle`` are registered, train on the file with
    ``data=text data.path=OUT`` and measure answer accuracy with ``eval.task=TASK``.
    """
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m xforget.data.synthetic", description=main.__doc__)
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("out")
    parser.add_argument("--bytes", type=int, default=1 << 21)
    parser.add_argument("--example-len", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stream = synthetic_stream(args.task, args.seed, args.bytes, args.example_len)
    Path(args.out).write_bytes(stream.text)
    print(f"wrote {len(stream.text):,} bytes of {args.task} ({len(stream.answers):,} answer bytes) to {args.out}")


if __name__ == "__main__":
    main()
