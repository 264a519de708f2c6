"""Needle in a haystack on real text, at token level (the FoX paper's "easy mode" retrieval test).

Lin et al., "Forgetting Transformer" (ICLR 2025), section 4.4, after Kamradt's
needle-in-a-haystack test: a fact is hidden in long text and the model is asked
for it at the end. In the *easy mode* the question names what to retrieve and
the answer is a verbatim copy, so a base (not instruction-tuned) language model
can be scored. Here the haystack is validation text of the run's own corpus,
the needle is a line of Python ``secret = 48213`` and the question repeats
its key, so the model must continue ``secret =`` with the number it read::

    <haystack tokens> \\nsecret = 48213\\n <haystack tokens> \\nsecret = 48213
                      ^ needle (depth)                      ^ query   ^ answer

Token level, with the run's tokenizer: the needle is ``encode(prefix) +
encode(answer) + encode(suffix)`` (prefix ``"\\nsecret ="``, answer ``" 48213"``
with its leading space, as the GPT-2 style pre-tokenizer splits numbers,
suffix ``"\\n"``), and the question is the same ``encode(prefix)`` ids followed
by the same answer ids, so the answer is an exact copy of ids the model has
seen. An example has exactly ``length + 1`` ids (the model reads the first
``length`` and is scored on the answer ids at the end).

Depth ``d`` in [0, 1] places the needle's first id at index
``round(d * fill)`` where ``fill = length + 1 - len(needle) - len(question) -
len(answer)`` is the number of haystack ids: 0 = the very start of the
context, 1 = just before the question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NEEDLE_KEY = "secret"
ANSWER_DIGITS = 5


@dataclass
class HaystackExample:
    """One retrieval example: ``ids`` (length + 1,) int64 and where its parts are.

    ``needle_start``: index of the needle's first id; ``answer_start``: index of
    the first answer id at the end (answers occupy ``[answer_start, length + 1)``);
    ``needle_answer_start``: index of the answer ids inside the needle;
    ``depth``: the requested depth; ``answer``: the answer text (e.g. ``" 48213"``).
    """

    ids: Tensor
    needle_start: int
    needle_len: int
    needle_answer_start: int
    answer_start: int
    depth: float
    answer: str

    @property
    def answer_len(self) -> int:
        return int(self.ids.numel()) - self.answer_start

    @property
    def distance(self) -> int:
        """Ids from the needle's answer to the question's answer."""
        return self.answer_start - self.needle_answer_start


class NeedleParts:
    """The encoded pieces of a needle for one tokenizer (prefix / answer / suffix ids)."""

    def __init__(self, tokenizer, key: str = NEEDLE_KEY) -> None:
        self.tokenizer = tokenizer
        self.prefix = list(tokenizer.encode(f"\n{key} ="))
        self.suffix = list(tokenizer.encode("\n"))
        self.key = key

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tokenizer.encode(answer))

    def overhead(self, answer: str) -> int:
        """Ids an example spends on needle, question and answer (the rest is haystack)."""
        a = len(self.answer_ids(answer))
        return len(self.prefix) + a + len(self.suffix) + len(self.prefix) + a


def min_needle_length(tokenizer, key: str = NEEDLE_KEY) -> int:
    """The shortest ``length`` an example can have (the longest possible answer and at least one haystack id)."""
    parts = NeedleParts(tokenizer, key)
    longest = max(parts.overhead(" " + d * ANSWER_DIGITS) for d in "0123456789")
    return longest + 8  # margin: some answers encode to more ids than repeated digits


def random_answer(rng: random.Random) -> str:
    """A 5-digit number with a leading space (``" 10000"`` ... ``" 99999"``)."""
    return f" {rng.randrange(10 ** (ANSWER_DIGITS - 1), 10 ** ANSWER_DIGITS)}"


def make_example(parts: NeedleParts, haystack, length: int, depth: float, rng: random.Random) -> HaystackExample:
    """One example of exactly ``length + 1`` ids with its needle at ``depth``.

    ``haystack`` is a 1-D array or tensor of token ids (the validation split);
    a contiguous piece of it, starting at a random offset, fills the context.

    Raises:
        ValueError: depth outside [0, 1], or ``length`` too short for the needle
            or longer than the haystack.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth {depth!r} must be in [0, 1]")
    answer = random_answer(rng)
    ans = parts.answer_ids(answer)
    fill = length + 1 - parts.overhead(answer)
    if fill < 1:
        raise ValueError(f"length {length} is too short for the needle: needle, question and answer take "
                         f"{parts.overhead(answer)} ids; use at least {min_needle_length(parts.tokenizer, parts.key)}")
    n_hay = len(haystack)
    if n_hay < fill:
        raise ValueError(f"length {length} needs {fill} haystack ids, the haystack has {n_hay}")
    offset = rng.randrange(0, n_hay - fill + 1)
    hay = np.asarray(haystack[offset:offset + fill]).astype(np.int64).tolist()
    at = int(round(depth * fill))
    needle = parts.prefix + ans + parts.suffix
    ids = hay[:at] + needle + hay[at:] + parts.prefix + ans
    assert len(ids) == length + 1
    return HaystackExample(ids=torch.tensor(ids, dtype=torch.long), needle_start=at, needle_len=len(needle),
                           needle_answer_start=at + len(parts.prefix), answer_start=length + 1 - len(ans),
                           depth=depth, answer=answer)


def make_examples(tokenizer, haystack, length: int, depths: list[float], per_depth: int,
                  seed: int = 0, key: str = NEEDLE_KEY) -> list[HaystackExample]:
    """``per_depth`` examples at each depth, deterministic from ``(seed, length)``."""
    parts = NeedleParts(tokenizer, key)
    rng = random.Random(f"{seed}-{length}")
    return [make_example(parts, haystack, length, float(d), rng) for d in depths for _ in range(per_depth)]
