"""Every tokenizer the project uses, loaded offline behind one interface: `load_tokenizer(spec)`.

    web-bpe4k        the project's own 4096-token byte-level BPE, trained on the training books (the default)
    gpt2:DIR         GPT-2's BPE from encoder.json + vocab.bpe in DIR (checked against GPT-2's sha256)
    DIR or FILE      tokenizer.json (Hugging Face, needs `tokenizers`), tokenizer.model (Llama-3, tiktoken format),
                     encoder.json + vocab.bpe (GPT-2), or a *.tiktoken rank file in web-bpe4k's format (a model
                     folder holding one of these, as train.py writes them, names its own tokenizer)

`encode` never produces special tokens (text that looks like "<|endoftext|>" is encoded as plain text): callers
add `bos_id` / `eos_id` themselves, as prepare.py does. Retrain web-bpe4k with `python tokenizer.py --train`.
"""
import argparse
import base64
import collections
import gzip
import hashlib
import json
import os
import time

import regex  # tiktoken's own dependency; only train_bpe needs it directly
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

WEB_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "web_bpe4k.tiktoken")
ENDOFTEXT = "<|endoftext|>"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Meta's Llama 3 list: 256 specials numbered after the ranks (Llama 3.1 renamed some reserved ones, same ids).
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)] + [
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"] + [
    f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
GPT2_SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
               "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}


class TiktokenTokenizer:
    """A tiktoken Encoding built from local ranks, a pre-tokenisation pattern and special tokens."""

    def __init__(self, name, ranks, pattern, specials, bos=None, eos=None):
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
        self.name, self.n_vocab = name, self.enc.n_vocab
        self.bos_id, self.eos_id = specials.get(bos), specials.get(eos)

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts):
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])  # also numpy or torch ids


class DamagedTokenizer(ValueError):
    """A tokenizer file that is there but does not parse: an error, where a folder without one is not."""


class HFTokenizer:
    """A Hugging Face tokenizer.json (LLaMA-2, TinyLlama ...), through the optional `tokenizers` package."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(f"{path}: reading tokenizer.json needs `pip install tokenizers`") from None
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # the library raises a bare Exception ("expected value at line 1 column 1")
            raise DamagedTokenizer(f"{path}: not a tokenizer the tokenizers library can read ({e})") from None
        self.name = "hf-" + os.path.basename(os.path.dirname(os.path.abspath(path)))
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self.first_id("<s>", "<|begin_of_text|>")
        self.eos_id = self.first_id("</s>", "<|end_of_text|>", ENDOFTEXT)

    def first_id(self, *tokens):
        """tokenizer.json does not say which token is BOS or EOS, so look for the usual names."""
        return next((i for i in map(self.tok.token_to_id, tokens) if i is not None), None)

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def read_ranks(path):
    """A tiktoken rank file ("base64-token rank" per line), read directly: tiktoken's loader caches by path."""
    with open(path, "rb") as f:
        lines = [line.split() for line in f if line.strip()]
    try:
        return {base64.b64decode(token, validate=True): int(rank) for token, rank in lines}
    except ValueError:  # a SentencePiece tokenizer.model (LLaMA-2) lands here too
        raise ValueError(f"{path}: not a tiktoken rank file (lines of 'base64-token rank')") from None


def web_bpe(path=WEB_BPE):
    try:
        ranks = read_ranks(path)
    except ValueError as e:  # a .tiktoken file is meant to be one
        raise DamagedTokenizer(str(e)) from None
    name = os.path.splitext(os.path.basename(path))[0].replace("_", "-")
    return TiktokenTokenizer(name, ranks, GPT2_PATTERN, {ENDOFTEXT: len(ranks)}, ENDOFTEXT, ENDOFTEXT)


def gpt2(folder):
    paths = {f: os.path.join(folder, f) for f in GPT2_SHA256}
    for f, p in paths.items():
        if not os.path.isfile(p):
            raise FileNotFoundError(f"GPT-2 tokenizer: {p} not found")
        with open(p, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != GPT2_SHA256[f]:
                raise ValueError(f"{p}: not GPT-2's {f} (sha256 differs)")
    # the hashes again, so that tiktoken's path-keyed cache cannot serve an older file from the same path
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"],
                                            GPT2_SHA256["vocab.bpe"], GPT2_SHA256["encoder.json"])
    return TiktokenTokenizer("gpt2", ranks, GPT2_PATTERN, {ENDOFTEXT: 50256}, ENDOFTEXT, ENDOFTEXT)


def llama3(path):
    ranks = read_ranks(path)
    specials = {token: len(ranks) + i for i, token in enumerate(LLAMA3_SPECIALS)}
    return TiktokenTokenizer("llama3", ranks, LLAMA3_PATTERN, specials, "<|begin_of_text|>", "<|end_of_text|>")


def start_id(tok):
    """The token every document starts with: BOS, or EOS where the tokenizer has no BOS (GPT-2, web-bpe4k)."""
    return tok.bos_id if tok.bos_id is not None else tok.eos_id


def load_tokenizer(spec="web-bpe4k"):
    """A tokenizer from a name or a path (see the top of this file); a clear error for anything else."""
    spec = os.fspath(spec)
    if spec == "web-bpe4k":
        return web_bpe(WEB_BPE)
    if spec.startswith("gpt2:"):
        return gpt2(spec[len("gpt2:"):])
    if not os.path.exists(spec):
        raise FileNotFoundError(f"tokenizer {spec!r}: not a built-in name (web-bpe4k, gpt2:DIR) nor an existing path")
    folder, name = (spec, None) if os.path.isdir(spec) else os.path.split(spec)
    present = set(os.listdir(folder))
    # first, because LLaMA-2 folders hold a SentencePiece tokenizer.model beside their tokenizer.json
    if name in (None, "tokenizer.json") and "tokenizer.json" in present:
        return HFTokenizer(os.path.join(folder, "tokenizer.json"))
    if name in (None, "tokenizer.model") and "tokenizer.model" in present:
        return llama3(os.path.join(folder, "tokenizer.model"))
    if name in (None, "encoder.json", "vocab.bpe") and {"encoder.json", "vocab.bpe"} <= present:
        return gpt2(folder)
    ranks = [f for f in sorted(present) if f.endswith(".tiktoken")] if name is None else [name]
    if ranks and ranks[0].endswith(".tiktoken"):
        return web_bpe(os.path.join(folder, ranks[0]))
    raise ValueError(f"tokenizer {spec!r}: expected tokenizer.json, tokenizer.model, encoder.json + vocab.bpe "
                     "or a .tiktoken file")


def own_tokenizer(folder):
    """The tokenizer a model folder carries (train.py writes it beside the weights), or None where it carries none it
    can read; a tokenizer.json or .tiktoken file that does not parse is a DamagedTokenizer naming it."""
    try:
        return load_tokenizer(folder)
    except DamagedTokenizer:
        raise
    except (OSError, ValueError):
        return None


def check_vocabulary(vocab_size, folder, tok, fix="pass the model's own with --tokenizer"):
    """A ValueError unless `tok` is the tokenizer of the model in `folder` with `vocab_size` embeddings: its ids are
    the model's rows (none beyond them, and no more unused rows than padding to a multiple of 1024 leaves, as GPT-2's
    50257 -> 50304), and where the folder carries a tokenizer of its own, it encodes as that one does."""
    n = tok.n_vocab
    if n > vocab_size or vocab_size > -(-n // 1024) * 1024:
        raise ValueError(f"{folder} has {vocab_size} token embeddings, the tokenizer {tok.name} {n} tokens: they are "
                         f"not one model's ({fix})")
    own = own_tokenizer(folder)
    if own is not None and not same_tokenizer(own, tok):
        raise ValueError(f"{folder} carries its own tokenizer ({own.name}), which is not {tok.name} ({fix})")


def same_tokenizer(a, b):
    """Whether two tokenizers are one: the same vocabulary size and the same ids for a probe of words and digits."""
    probe = "In the beginning, 12345 words. "
    return a.n_vocab == b.n_vocab and a.encode(probe) == b.encode(probe)


def tokenizer_files(spec):
    """The files a tokenizer spec is read from (what a model folder needs to carry its own tokenizer)."""
    tok_path = WEB_BPE if spec == "web-bpe4k" else spec.removeprefix("gpt2:")
    if os.path.isfile(tok_path):
        return [tok_path]
    names = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "encoder.json",
             "vocab.bpe")
    return [os.path.join(tok_path, f) for f in sorted(os.listdir(tok_path)) if f in names or f.endswith(".tiktoken")]


def train_bpe(texts, vocab_size, pattern=GPT2_PATTERN):
    """Byte-level BPE ranks {token bytes: rank}: 256 single bytes, then the most frequent adjacent pair, merged.

    Works on the counts of distinct pre-tokenised words rather than on the text, and updates the pair counts
    only for the words a merge touches, so 4k merges over 3 MB take seconds, not hours.
    """
    counts = collections.Counter(w.encode() for text in texts for w in regex.findall(pattern, text))
    words = [[bytes([b]) for b in w] for w in counts]  # each distinct word as its current list of tokens
    freq = list(counts.values())
    pairs, where = collections.Counter(), collections.defaultdict(set)  # pair -> count, pair -> word indices
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pairs[pair] += freq[i]
            where[pair].add(i)
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size and pairs:
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the bytes, so training is deterministic
        merged = best[0] + best[1]
        ranks.setdefault(merged, len(ranks))  # another merge order may already have made these bytes
        for i in where.pop(best):
            w = words[i]
            for pair in zip(w, w[1:]):
                pairs[pair] -= freq[i]
            j, new = 0, []
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    new.append(merged)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            words[i] = new
            for pair in zip(new, new[1:]):
                pairs[pair] += freq[i]
                where[pair].add(i)
        pairs = +pairs  # drop the pairs that no longer occur
    return ranks


def write_ranks(ranks, path):
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(token) + b" %d\n" % rank)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="retrain web-bpe4k on the training books and write it")
    parser.add_argument("--vocab_size", type=int, default=4096, help="including the one special token <|endoftext|>")
    parser.add_argument("--out", default=WEB_BPE, help="rank file --train writes (default: %(default)s)")
    parser.add_argument("--tokenizer", default="web-bpe4k", help="spec to load when not training")
    parser.add_argument("text", nargs="?", default="In the beginning God created the heavens and the earth.")
    args = parser.parse_args()
    if args.train:
        t0 = time.time()
        with gzip.open(os.path.join(os.path.dirname(WEB_BPE), "web", "train.jsonl.gz"), "rt", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]  # the training books only
        ranks = train_bpe(texts, args.vocab_size - 1)  # the last id is <|endoftext|>
        write_ranks(ranks, args.out)
        print(f"wrote {len(ranks)} ranks to {args.out} in {time.time() - t0:.0f} s")
    else:
        tok = load_tokenizer(args.tokenizer)
        ids = tok.encode(args.text)
        print(f"{tok.name}: n_vocab={tok.n_vocab} bos={tok.bos_id} eos={tok.eos_id}\n{ids}\n{tok.decode(ids)!r}")
