"""Tokenize text documents (by default the built-in Bible books) into one flat token file plus document offsets.

OUT/SPLIT.bin holds the tokens back to back (uint16 when the vocabulary fits, else uint32), OUT/SPLIT.offsets.npy
the int64 document boundaries (n_docs + 1 of them: document i is tokens[offsets[i]:offsets[i+1]]) and
OUT/SPLIT.json the tokenizer spec, dtype and counts. Every document starts with the tokenizer's BOS token (its
EOS where it has no BOS, as <|endoftext|> for web-bpe4k and GPT-2): LLaMA models saw BOS at position 0 in
training, and PoSE's chunk 0 is always cut from a document's start. Lengths and `min_len` count that token.
--pack=N cuts documents at their blank lines and packs the pieces back, in order, into documents of at least N
tokens: the built-in training books (a paragraph per chapter) become 478 documents (473 of 1024+ tokens), so that
windows cut from documents' starts, as the official code cuts them, read 478 starts rather than 61. The held-out
books stay whole, for long-context evaluation.

    python prepare.py --tokenizer=web-bpe4k                  # both built-in splits into data/tok/web-bpe4k
    python prepare.py --tokenizer=gpt2:DIR --min_len=2048 --split=train books/ more.jsonl.gz
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

from tokenizer import load_tokenizer, start_id
from util import atomic_open, exit_status, on_signals

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = {split: os.path.join(HERE, "data", "web", f"{split}.jsonl.gz") for split in ("train", "eval")}
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")


def list_files(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files if f.endswith(SUFFIXES))


def read_documents(paths, key="text"):
    """[(name, text)] from files and folders: a text file is one document, a JSON line is one (its `key` field).
    Every error names the file (and the line) it comes from."""
    docs = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        for file in list_files(os.fspath(path)):
            try:
                docs += _read_file(file, key)
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}: not UTF-8 text (byte {e.start}: {e.reason})") from None
            except (OSError, EOFError) as e:  # a .gz that is not gzip, or cut short
                raise ValueError(f"{file}: unreadable ({e})") from None
    return [(name, text) for name, text in docs if text.strip()]


def _read_file(file, key):
    with (gzip.open if file.endswith(".gz") else open)(file, "rt", encoding="utf-8") as f:
        if not file.endswith((".jsonl", ".jsonl.gz")):
            return [(file, f.read())]
        docs = []
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{file}:{n}: not a JSON line ({e})") from None
            if not isinstance(row, dict) or key not in row:
                raise ValueError(f"{file}:{n}: no {key!r} field (choose another with --key)")
            if not isinstance(row[key], str):
                raise ValueError(f"{file}:{n}: {key!r} is a {type(row[key]).__name__}, not a string of text")
            docs.append((str(row.get("title", f"{file}:{n}")), row[key]))
        return docs


def pack_paragraphs(docs, tok, n):
    """Each document cut at blank lines, the pieces joined back in order into documents of at least n tokens
    (counted piece by piece, BOS included); a shorter remainder joins the last one of its document."""
    out = []
    for name, text in docs:
        groups, size = [[]], 1
        for piece in text.split("\n\n"):
            if size >= n:
                groups.append([])
                size = 1
            groups[-1].append(piece)
            size += len(tok.encode(piece)) + 1
        if size < n and len(groups) > 1:
            last = groups.pop()
            groups[-1] += last
        out += [(f"{name} ({i + 1}/{len(groups)})", "\n\n".join(g)) for i, g in enumerate(groups)]
    return out


def token_dtype(n_vocab):
    for dtype in (np.uint16, np.uint32):
        if n_vocab - 1 <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"a vocabulary of {n_vocab} tokens does not fit in uint32")


def write_split(docs, tok, out, split, min_len=0, spec="", source=""):
    """Encode `docs`, drop those shorter than `min_len` tokens, write OUT/SPLIT.{bin,offsets.npy,json}; the meta."""
    if not docs:
        raise ValueError(f"{split}: no documents in {source}")
    first = start_id(tok)
    if first is None:
        raise ValueError(f"{tok.name}: no BOS or EOS token to start documents with")
    dtype = token_dtype(tok.n_vocab)
    t0 = time.time()
    encoded = [[first] + ids for ids in tok.encode_batch([text for _, text in docs])]
    dropped = [(name, len(ids)) for (name, _), ids in zip(docs, encoded) if len(ids) < min_len]
    kept = [ids for ids in encoded if len(ids) >= min_len]
    if dropped:
        shown = ", ".join(f"{name} ({n:,})" for name, n in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
        print(f"{split}: dropped {len(dropped)} of {len(docs)} documents shorter than min_len={min_len}: {shown}")
    if not kept:
        raise ValueError(f"{split}: all {len(docs)} documents are shorter than min_len={min_len} tokens")
    offsets = np.cumsum([0] + [len(ids) for ids in kept], dtype=np.int64)
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(out, split)
    tokens = np.fromiter((t for ids in kept for t in ids), dtype=dtype, count=int(offsets[-1]))
    meta = dict(tokenizer=spec or tok.name, n_vocab=tok.n_vocab, dtype=np.dtype(dtype).name, n_docs=len(kept),
                n_tokens=int(offsets[-1]), min_len=min_len, n_dropped=len(dropped), source=source)
    # all three written aside, then renamed (the tokens first, the description last): a full disk leaves the split
    # that was there, no temporary, and one line naming the file. write(), not a memory map: a full disk refuses a
    # map's pages with SIGBUS, which ends the process without a word.
    with (atomic_open(prefix + ".json") as meta_file, atomic_open(prefix + ".offsets.npy", "wb") as offsets_file,
          atomic_open(prefix + ".bin", "wb") as tokens_file):
        tokens_file.write(tokens.data)
        np.save(offsets_file, offsets)
        json.dump(meta, meta_file, indent=1)
    text_bytes = sum(len(text.encode()) for _, text in docs)
    print(f"{split}: {len(kept)} documents, {offsets[-1]:,} tokens ({text_bytes / sum(map(len, encoded)):.2f} "
          f"bytes/token) -> {prefix}.bin in {time.time() - t0:.1f} s")
    return meta


class TokenDataset:
    """A prepared split: `tokens` (a read-only memmap), `offsets`, `lengths`, and whole documents by index. Files
    that do not agree with each other (a cut-short .bin, offsets past it, ids past the tokenizer's) are refused,
    naming the file."""

    def __init__(self, folder, split="train"):
        prefix = os.path.join(folder, split)
        if not os.path.exists(prefix + ".json"):
            raise FileNotFoundError(f"{prefix}.json: no such prepared split (prepare.py makes them)")
        try:
            with open(prefix + ".json") as f:
                self.meta = json.load(f)
            dtype = np.dtype(self.meta["dtype"])
            self.meta["tokenizer"], self.meta["n_vocab"] = str(self.meta["tokenizer"]), int(self.meta["n_vocab"])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{prefix}.json: not a prepared split's description ({type(e).__name__}: {e})") from None
        size = os.path.getsize(prefix + ".bin")
        if size % dtype.itemsize:
            raise ValueError(f"{prefix}.bin: {size} bytes is not a whole number of {dtype} tokens: cut short?")
        self.tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        try:
            self.offsets = np.load(prefix + ".offsets.npy")
        except (ValueError, EOFError) as e:
            raise ValueError(f"{prefix}.offsets.npy: unreadable ({e})") from None
        if self.offsets.dtype.kind not in "iu":
            raise ValueError(f"{prefix}.offsets.npy: {self.offsets.dtype} offsets, not integers: prepare it again")
        self.lengths = np.diff(self.offsets)
        if self.offsets.ndim != 1 or len(self.offsets) < 2 or self.offsets[0] != 0 or (self.lengths < 0).any() \
                or self.offsets[-1] != len(self.tokens):
            raise ValueError(f"{prefix}: the offsets (ending at {self.offsets[-1] if self.offsets.size else None}) "
                             f"do not cut the {len(self.tokens)} tokens of {prefix}.bin into documents: prepare it "
                             "again")
        top = int(self.tokens.max()) if len(self.tokens) else -1  # one pass, or an embedding lookup fails mid-run
        if top >= self.meta["n_vocab"]:
            raise ValueError(f"{prefix}.bin: token id {top} is beyond the {self.meta['n_vocab']} tokens of "
                             f"{self.meta['tokenizer']} ({prefix}.json): prepare it again")

    def __len__(self):
        return len(self.lengths)

    def doc(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def docs_at_least(self, n):
        """Indices of the documents with at least n tokens: the ones a PoSE window of Lc = n can be cut from."""
        return np.flatnonzero(self.lengths >= n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="*", help=".txt / .jsonl(.gz) files or folders (default: the built-in books)")
    parser.add_argument("--tokenizer", default="web-bpe4k", help="see tokenizer.py (default: %(default)s)")
    parser.add_argument("--out", help="output folder (default: data/tok/<tokenizer name>)")
    parser.add_argument("--split", default="train", help="split name for the given inputs (default: %(default)s)")
    parser.add_argument("--min_len", type=int, default=0, help="drop documents shorter than this many tokens")
    parser.add_argument("--key", default="text", help="JSON field holding the text (default: %(default)s)")
    parser.add_argument("--pack", type=int, help="cut documents at blank lines and pack the pieces into documents "
                        "of at least this many tokens (default: 1024 for the built-in training books, else 0: whole)")
    args = parser.parse_args()
    on_signals()  # SIGTERM as Ctrl-C; a file-size limit as a full disk
    if args.min_len < 0 or (args.pack or 0) < 0:
        parser.error(f"--min_len={args.min_len} --pack={args.pack}: expected counts >= 0")
    if not args.split or os.sep in args.split or args.split.startswith("."):
        parser.error(f"--split={args.split}: expected a plain name (train, eval, ...)")
    print(vars(args))
    try:  # the errors above are meant for people: one line, no traceback
        tok = load_tokenizer(args.tokenizer)
        out = args.out or os.path.join(HERE, "data", "tok", tok.name)
        splits = {args.split: args.inputs} if args.inputs else CORPUS
        spec = os.path.abspath(args.tokenizer) if os.path.exists(args.tokenizer) else args.tokenizer  # any cwd
        for split, paths in splits.items():
            source = " ".join(paths) if args.inputs else os.path.relpath(paths, HERE)
            docs = read_documents(paths, args.key)
            pack = args.pack if args.pack is not None else 1024 if split == "train" and not args.inputs else 0
            if pack:
                docs = pack_paragraphs(docs, tok, pack)
                source += f", packed into documents of {pack}+ tokens"
            write_split(docs, tok, out, split, args.min_len, spec, source)
    except (OSError, ValueError, ImportError) as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print("interrupted: the split being written was left as it was (each file is written aside, then renamed)",
              file=sys.stderr)
        sys.exit(exit_status())
