"""The built-in corpus is split as documented, and prepare.py writes tokens and offsets that match each document."""
import gzip
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data.make_corpus import EVAL_BOOKS, books
from prepare import (
    CORPUS,
    TokenDataset,
    pack_paragraphs,
    read_documents,
    token_dtype,
    write_split,
)
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("web-bpe4k")


class BigVocab:
    """A stand-in tokenizer whose ids do not fit in uint16: one id per character, offset by 70000."""
    name, n_vocab, bos_id, eos_id = "big", 70000 + 0x110000, 0, None

    def encode_batch(self, texts):
        return [[70000 + ord(c) for c in text] for text in texts]


def test_corpus_split_by_book(tok):
    train, held_out = read_documents(CORPUS["train"]), read_documents(CORPUS["eval"])
    assert {name for name, _ in held_out} == set(EVAL_BOOKS)
    assert len(train) + len(held_out) == 66 and not {n for n, _ in train} & set(EVAL_BOOKS)
    assert all(len(tok.encode(text)) >= 30000 for _, text in held_out)
    train_bytes, eval_bytes = (sum(len(t) for _, t in docs) for docs in (train, held_out))
    assert train_bytes / (train_bytes + eval_bytes) > 0.7
    text = "".join(t for _, t in train + held_out)
    assert text.isascii() and "`" not in text and "  " not in text


def test_books_moves_psalm_headings_and_drops_verse_layout():
    verses = ["Job spoke.", " He   died.   BOOK I   Psalm 1", "Blessed `is` the man.   Psalm 2  A song.", " Why rage?"]
    text = "".join(verses)
    starts = dict(zip([18001001, 18001002, 19001001, 19002001], np.cumsum([0] + [len(v) for v in verses[:-1]])))
    ends = {vid: start + len(v) for (vid, start), v in zip(starts.items(), verses)}
    names = [f"book{i}" for i in range(1, 67)]
    names[17:19] = ["Job", "Psalms"]
    assert books(text, starts, ends, names) == [
        ("Job", "Job spoke. He died."),
        ("Psalms", "BOOK I Psalm 1\nBlessed 'is' the man.\n\nPsalm 2\nA song. Why rage?")]


def test_offsets_match_each_documents_encoding(tok, tmp_path):
    docs = read_documents(CORPUS["eval"])
    meta = write_split(docs, tok, tmp_path, "eval", spec="web-bpe4k")
    ds = TokenDataset(tmp_path, "eval")
    assert ds.tokens.dtype == np.uint16 and ds.offsets.dtype == np.int64
    assert len(ds) == meta["n_docs"] == 5 and ds.offsets[-1] == meta["n_tokens"] == len(ds.tokens)
    for i, (_, text) in enumerate(docs):
        assert ds.doc(i).tolist() == [tok.bos_id] + tok.encode(text)
    assert ds.docs_at_least(ds.lengths[2]).tolist() == [i for i in range(5) if ds.lengths[i] >= ds.lengths[2]]
    assert ds.meta["tokenizer"] == "web-bpe4k"


def test_min_len_drops_short_documents_and_says_which(tok, tmp_path, capsys):
    docs = [("long", "word " * 50), ("short", "hi"), ("medium", "word " * 20), ("tiny", "a")]
    meta = write_split(docs, tok, tmp_path, "train", min_len=15)
    ds = TokenDataset(tmp_path, "train")
    assert (meta["n_docs"], meta["n_dropped"]) == (2, 2)
    assert [tok.decode(ds.doc(i)[1:]) for i in range(len(ds))] == ["word " * 50, "word " * 20]
    assert "dropped 2 of 4 documents shorter than min_len=15: short (2), tiny (2)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="all 4 documents are shorter than min_len=1000"):
        write_split(docs, tok, tmp_path, "train", min_len=1000)


def test_ids_beyond_uint16_are_stored_as_uint32(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="does not fit in uint32"):
        token_dtype(2**32 + 1)
    write_split([("d", "héllo")], BigVocab(), tmp_path, "train")
    ds = TokenDataset(tmp_path, "train")
    assert ds.tokens.dtype == np.uint32 and ds.doc(0).tolist() == [0] + [70000 + ord(c) for c in "héllo"]


def test_reads_folders_of_text_and_jsonl(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.txt").write_text("first document")
    with gzip.open(tmp_path / "a" / "b" / "two.txt.gz", "wt") as f:
        f.write("second document")
    (tmp_path / "a" / "b" / "rows.jsonl").write_text('{"body": "third"}\n\n{"body": "fourth", "title": "Four"}\n')
    with gzip.open(tmp_path / "a" / "rows.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "fifth"}) + "\n" + json.dumps({"body": "  "}) + "\n")
    (tmp_path / "a" / "notes.md").write_text("not a document")
    docs = read_documents(tmp_path, key="body")
    assert sorted(text for _, text in docs) == ["fifth", "first document", "fourth", "second document", "third"]
    assert ("Four", "fourth") in docs
    with pytest.raises(ValueError, match=r"rows.jsonl:1: no 'text' field"):
        read_documents(tmp_path / "a" / "b" / "rows.jsonl")


def test_errors_name_the_problem(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt: no such file"):
        read_documents(tmp_path / "nowhere.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no documents in"):
        write_split(read_documents(tmp_path / "empty"), tok, tmp_path, "train", source=str(tmp_path / "empty"))


def test_prep_never_touches_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    tok = load_tokenizer("web-bpe4k")
    for split, path in CORPUS.items():
        write_split(read_documents(path), tok, tmp_path, split)
    assert TokenDataset(tmp_path, "train").meta["n_docs"] == 61


def test_cli_prepares_both_built_in_splits(tmp_path):
    out = subprocess.run([sys.executable, "prepare.py", f"--out={tmp_path}"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "train: 478 documents" in out and "eval: 5 documents" in out  # chapters packed to 1024+ tokens
    assert TokenDataset(tmp_path, "eval").meta["source"] == "data/web/eval.jsonl.gz"
    train = TokenDataset(tmp_path, "train")
    assert (train.lengths < 1024).sum() == 5  # five books are shorter than that whole
    whole = subprocess.run([sys.executable, "prepare.py", f"--out={tmp_path / 'whole'}", "--pack=0"],
                           capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "train: 61 documents" in whole
    bad = subprocess.run([sys.executable, "prepare.py", f"--out={tmp_path}", "--min_len=100000"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].endswith("shorter than min_len=100000 tokens")


def test_packing_keeps_every_chapter_in_order_and_makes_documents_of_n_tokens():
    tok = load_tokenizer("web-bpe4k")
    books = read_documents(CORPUS["train"])[:6]
    packed = pack_paragraphs(books, tok, 1024)
    for name, text in books:
        parts = [t for n, t in packed if n.startswith(name + " (")]
        assert "\n\n".join(parts) == text  # nothing lost, nothing reordered
        sizes = [len(tok.encode(t)) + 1 for t in parts]
        assert all(n >= 1024 for n in sizes) or len(parts) == 1
