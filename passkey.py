"""passkey.py: the passkey-retrieval prompt (Mohtashami & Jaggi, as the PoSE paper uses it), for evaluation and
for the synthetic share of the tiny model's pretraining.

The lines below are the paper's template word for word, joined by "\n": an instruction, filler repeated to the
requested length, the key line at a chosen depth of the filler, more filler, and the question.
"""
from typing import NamedTuple

from tokenizer import start_id

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


class Prompt(NamedTuple):
    ids: list          # BOS + the prompt
    answer: list       # the key's tokens, which follow it
    key_at: int        # where the key line starts in ids
    key_end: int       # where it ends
    question_at: int   # where the question starts

    @property
    def distance(self):
        """How far back from the answer the key line begins, in tokens: what retrieval has to span."""
        return len(self.ids) - self.key_at


def build(tok, filler_words, depth, key):
    """The Prompt with `filler_words` filler words, the key line at the repetition boundary nearest a fraction
    `depth` of them (or after the last, partial repetition)."""
    rep = FILLER.split(" ")
    words = [rep[i % len(rep)] for i in range(filler_words)]
    cut = min([*range(0, filler_words, len(rep)), filler_words], key=lambda c: abs(c - depth * filler_words))
    after_line = "\n" + " ".join(words[cut:]) + "\n" + QUESTION
    text = "\n".join([INTRO, " ".join(words[:cut]), KEY_LINE.format(key=key)]) + after_line
    ids, full = [start_id(tok)] + tok.encode(text), tok.encode(f"{text} {key}")
    assert full[:len(ids) - 1] == ids[1:], "the key's tokens must extend the prompt's"
    # counted from the end: a new line is a token boundary, so a suffix from one encodes as in the whole text
    key_end = len(ids) - len(tok.encode(after_line))
    return Prompt(ids, full[len(ids) - 1:], key_end - len(tok.encode(KEY_LINE.format(key=key))), key_end,
                  len(ids) - len(tok.encode(QUESTION)))


def passkey_prompt(tok, length, depth, key):
    """The Prompt whose ids and answer together come within a few tokens of `length` (but not over): as many
    filler words as fit."""
    def size(w):
        p = build(tok, w, depth, key)
        return len(p.ids) + len(p.answer)

    if size(0) > length:
        raise ValueError(f"{length} tokens is too short for the passkey template ({size(0)} without filler)")
    lo, hi = 0, length  # every word is at least one token: the largest w that fits is below `length`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= length else (lo, mid - 1)
    return build(tok, lo, depth, key)


def passkey_example(tok, length, rng):
    """A synthetic training row of at most `length` tokens -- BOS, a prompt with a random 5-digit key at a random
    depth and of a random size between the bare template and `length`, the answer and a full stop -- with the
    Prompt it was made from (where its key line and question are)."""
    key = int(rng.integers(10_000, 100_000))
    bare = len(build(tok, 0, 0.0, key).ids) + len(build(tok, 0, 0.0, key).answer)
    end = tok.encode(".")  # the answer is closed, so that the model learns where a key stops
    if bare + len(end) > length:
        raise ValueError(f"a {length}-token window is too short for the passkey template ({bare} tokens)")
    p = passkey_prompt(tok, int(rng.integers(bare, length - len(end) + 1)), float(rng.random()), key)
    return p.ids + p.answer + end, p
