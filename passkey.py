"""passkey.py: the passkey-retrieval prompt (Mohtashami & Jaggi, as the PoSE paper uses it), for evaluation and
for the synthetic share of the tiny model's pretraining.

The lines below are the paper's template word for word, joined by "\n": an instruction, filler repeated to the
requested length, the key line at a chosen depth of the filler, more filler, and the question.
"""
from tokenizer import start_id

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def build(tok, filler_words, depth, key):
    """(ids, answer) for a prompt with `filler_words` filler words, the key line at the repetition boundary nearest
    a fraction `depth` of them (or after the last, partial repetition)."""
    rep = FILLER.split(" ")
    words = [rep[i % len(rep)] for i in range(filler_words)]
    cut = min([*range(0, filler_words, len(rep)), filler_words], key=lambda c: abs(c - depth * filler_words))
    text = "\n".join([INTRO, " ".join(words[:cut]), KEY_LINE.format(key=key), " ".join(words[cut:]), QUESTION])
    ids, full = tok.encode(text), tok.encode(f"{text} {key}")
    assert full[:len(ids)] == ids, "the key's tokens must extend the prompt's"
    return [start_id(tok)] + ids, full[len(ids):]


def passkey_prompt(tok, length, depth, key):
    """(ids, answer): ids = BOS + the prompt, answer = the key's tokens after it, len(ids) + len(answer) within
    a few tokens of `length` (but not over): as many filler words as fit."""
    def size(w):
        return sum(map(len, build(tok, w, depth, key)))

    if size(0) > length:
        raise ValueError(f"{length} tokens is too short for the passkey template ({size(0)} without filler)")
    lo, hi = 0, length  # every word is at least one token: the largest w that fits is below `length`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= length else (lo, mid - 1)
    return build(tok, lo, depth, key)


def passkey_example(tok, length, rng):
    """A synthetic training row of at most `length` tokens: BOS, a prompt with a random 5-digit key at a random
    depth and of a random size between the bare template and `length`, then the answer and a full stop."""
    key = int(rng.integers(10_000, 100_000))
    bare = sum(map(len, build(tok, 0, 0.0, key)))
    if bare + 1 > length:
        raise ValueError(f"a {length}-token window is too short for the passkey template ({bare} tokens)")
    end = tok.encode(".")  # the answer is closed, so that the model learns where a key stops
    ids, answer = passkey_prompt(tok, int(rng.integers(bare, length - len(end) + 1)), float(rng.random()), key)
    return ids + answer + end
