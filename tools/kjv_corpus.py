#!/usr/bin/env python3
"""The demo model's corpus: the King James Version from Debian, as plain text.

Standard library only; needs apt-get and dpkg-deb (a Debian or Ubuntu host
with bookworm's archive, e.g. this project's dev machine). Run from the
repository root:

    python3 tools/kjv_corpus.py --out demo/corpus

It downloads bible-kjv-text 4.38 (the text, public domain) and bible-kjv 4.38
(the `bible` program that reads it, GPL-2+) with `apt-get download`, checks
their SHA-256 against the values below, unpacks both with `dpkg-deb -x`, and
runs `bible -p usr/lib Gen1:1-Rev22:21`, which prints the whole Bible: a
heading per chapter ("Genesis 1"), then verses ("  1 In the beginning ...")
wrapped at 80 columns. --debs DIR uses .deb files already downloaded there.

Normalization (documented in demo/README.md):
  * wrapped lines are joined with one space and runs of spaces collapsed;
  * verse numbers and chapter numbers are dropped: the text of a chapter is
    one paragraph (one line), its verses joined by spaces;
  * each book starts with its name on a line of its own ("Genesis");
  * blocks (book names and chapter paragraphs) are separated by one blank
    line; every file ends with a newline.
The parse is checked against the KJV's known shape: 66 books, 1,189 chapters,
31,102 verses, chapters and verses numbered 1, 2, 3, ... in order.

The split is by whole books (fixed lists below), so held-out text is never
seen in training, not even as a neighbouring verse:
  test.txt   TEST_BOOKS: held out; the perplexity reported in docs/QUALITY.md
  valid.txt  VALID_BOOKS: held out; the training script picks its checkpoint
             by the loss on these
  train.txt  the other 58 books
in canonical order within each file. The output SHA-256 sums are checked
against OUTPUTS; a mismatch is an error (the corpus would not be the one the
demo model was trained on).
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile

PACKAGES = {
    # file name: SHA-256 (Debian bookworm, main)
    "bible-kjv-text_4.38_all.deb": "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
    "bible-kjv_4.38_amd64.deb": "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
}
APT_NAMES = ["bible-kjv-text=4.38", "bible-kjv=4.38"]
RANGE = "Gen1:1-Rev22:21"

TEST_BOOKS = ["Ruth", "Lamentations", "Jonah", "Philippians", "James"]
VALID_BOOKS = ["Esther", "Joel", "Titus"]

# SHA-256 of the outputs of this script (see the module docstring).
OUTPUTS = {
    "train.txt": "e25d913c7550e1b32190d48dabc2c74954063226646952e2f29a6e9167ca6ae1",
    "valid.txt": "f8e38497e455fea560076c053cb15e11beab3e216f02132545f39825b5e3106b",
    "test.txt": "bc42ba98e1f3c859ef9e7be15b137373ed9ac3ed43cf5aed389232e0fe9a2e4f",
}

HEADING = re.compile(r"^(\S.*) (\d+)$")
VERSE = re.compile(r"^  (\d+) (.*)$")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch_debs(debs, tmp):
    """Returns {file name: path} of the two .debs, downloading them into tmp
    unless debs names a directory that has them, and checks their hashes."""
    if debs is None:
        debs = os.path.join(tmp, "debs")
        os.makedirs(debs)
        subprocess.run(["apt-get", "download", *APT_NAMES], cwd=debs, check=True)
    paths = {}
    for name, want in PACKAGES.items():
        path = os.path.join(debs, name)
        with open(path, "rb") as f:
            got = sha256(f.read())
        if got != want:
            sys.exit(f"{path}: SHA-256 {got}, want {want}")
        paths[name] = path
    return paths


def bible_text(paths, tmp):
    """The output of `bible` for the whole range, as str."""
    root = os.path.join(tmp, "root")
    for path in paths.values():
        subprocess.run(["dpkg-deb", "-x", path, root], check=True)
    out = subprocess.run([os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"), RANGE],
                         check=True, stdout=subprocess.PIPE).stdout
    return out.decode("ascii")  # the KJV text is ASCII; anything else is an error


def parse(text):
    """[(book, [[verse text, ...] per chapter])] from bible's output. A
    heading is a line after a blank line; a verse starts with two spaces and
    its number; any other line continues the verse before it."""
    books = []
    verse = None  # the list of lines of the current verse
    prev_blank = True
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip() == "":
            prev_blank = True
            continue
        h = HEADING.match(line) if prev_blank else None
        prev_blank = False
        if h:
            book, chap = h.group(1), int(h.group(2))
            if not books or books[-1][0] != book:
                books.append((book, []))
            chapters = books[-1][1]
            if chap != len(chapters) + 1:
                sys.exit(f"line {n}: {book} {chap} follows chapter {len(chapters)}")
            chapters.append([])
            verse = None
            continue
        v = VERSE.match(line)
        if v:
            if not books or not books[-1][1]:
                sys.exit(f"line {n}: a verse before any chapter heading")
            verses = books[-1][1][-1]
            if int(v.group(1)) != len(verses) + 1:
                sys.exit(f"line {n}: verse {v.group(1)} follows verse {len(verses)}")
            verse = [v.group(2)]
            verses.append(verse)
        elif verse is None:
            sys.exit(f"line {n}: text before the first verse of a chapter: {line!r}")
        else:
            verse.append(line)
    for _, chapters in books:
        for verses in chapters:
            for i, lines in enumerate(verses):
                verses[i] = " ".join(" ".join(lines).split())
    counts = (len(books), sum(len(c) for _, c in books), sum(len(v) for _, c in books for v in c))
    if counts != (66, 1189, 31102):
        sys.exit(f"parsed {counts[0]} books, {counts[1]} chapters, {counts[2]} verses; want 66, 1189, 31102")
    return books


def render(books):
    """Book names and chapter paragraphs, separated by blank lines."""
    blocks = []
    for book, chapters in books:
        blocks.append(book)
        blocks.extend(" ".join(verses) for verses in chapters)
    return "\n\n".join(blocks) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--debs", help="directory holding the two .deb files (default: apt-get download them)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        books = parse(bible_text(fetch_debs(args.debs, tmp), tmp))
    names = [b for b, _ in books]
    for b in TEST_BOOKS + VALID_BOOKS:
        if b not in names:
            sys.exit(f"no book {b!r} in the text")
    split = {
        "train.txt": [b for b in books if b[0] not in TEST_BOOKS + VALID_BOOKS],
        "valid.txt": [b for b in books if b[0] in VALID_BOOKS],
        "test.txt": [b for b in books if b[0] in TEST_BOOKS],
    }
    os.makedirs(args.out, exist_ok=True)
    bad = []
    for name, part in split.items():
        data = render(part).encode("ascii")
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        got = sha256(data)
        words = len(data.split())
        print(f"{name}: {len(part)} books, {len(data)} bytes, {words} words, sha256 {got}")
        if got != OUTPUTS[name]:
            bad.append(f"{name}: SHA-256 {got}, want {OUTPUTS[name]}")
    if bad:
        sys.exit("outputs differ from the recorded corpus:\n  " + "\n  ".join(bad))


if __name__ == "__main__":
    main()
