#!/usr/bin/env python3
"""orcd's tokenizer against tiktoken, one thread each, on the same CPU in one run.

Run from the repository root on a machine with tiktoken (no Go needed):

    CGO_ENABLED=0 go test -c -o bin/tokenizer.test ./tokenizer     # where Go is
    taskset -c 2 python3 tools/tokenizer_bench.py --test-binary bin/tokenizer.test

1. The Go test binary writes the benchmark corpora (TestWriteBenchCorpus: multilingual,
   prose, code, each about 8 MiB, generated deterministically; see
   tokenizer/testdata/bench/README.md) and orcd's Encode ids for each vocabulary.
2. tiktoken encodings are built from the vocabulary files in tokenizer/vocab/ (the ones
   orcd embeds): gpt2 and o200k_harmony (o200k_base plus the harmony special tokens),
   with the reference pre-tokenizer patterns; nothing is downloaded.
3. tiktoken's encode_ordinary ids are compared with orcd's, token by token.
4. Rounds alternate the two sides: orcd's BenchmarkEncode (GOMAXPROCS=1, --iters
   encodes of each corpus) and tiktoken's encode_ordinary (the same number of calls,
   one thread). Each round gives each side its mean time per encode; the table shows
   the median over rounds and the range. MB = 2^20 bytes, as Go's testing package
   reports.

Exit status 1 if any ids differ.
"""

import argparse
import array
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_conformance import load_o200k_ranks, tiktoken_encodings  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = ("multilingual", "prose", "code")
VOCABS = ("o200k_harmony", "gpt2")
# tokenizer/vocab/ file -> the name tokenizer_conformance.tiktoken_encodings reads.
VOCAB_FILES = {
    "gpt2-encoder.json.gz": "encoder.json",
    "gpt2-vocab.bpe.gz": "vocab.bpe",
    "o200k_base.tiktoken.gz": "o200k_base.tiktoken",
}
BENCH_LINE = re.compile(r"^BenchmarkEncode/(\S+?)/(\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op")


def unpack_vocab(dest):
    for src, name in VOCAB_FILES.items():
        with gzip.open(os.path.join(ROOT, "tokenizer", "vocab", src), "rb") as f, open(os.path.join(dest, name), "wb") as out:
            shutil.copyfileobj(f, out)


def run_go(binary, env_extra, args):
    env = dict(os.environ, GOMAXPROCS="1", **env_extra)
    proc = subprocess.run([os.path.abspath(binary)] + args, cwd=os.path.join(ROOT, "tokenizer"), env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def orcd_round(binary, iters):
    """Mean seconds per Encode, by (vocab, corpus), from one run of BenchmarkEncode."""
    out = run_go(binary, {}, ["-test.run", "^$", "-test.bench", "^BenchmarkEncode$", "-test.benchtime", f"{iters}x",
                              "-test.cpu", "1"])
    times = {}
    for line in out.splitlines():
        m = BENCH_LINE.match(line)
        if m:
            times[(m.group(1), m.group(2))] = float(m.group(4)) / 1e9
    missing = [(v, c) for v in VOCABS for c in CORPORA if (v, c) not in times]
    if missing:
        sys.exit(f"BenchmarkEncode output lacks {missing}:\n{out}")
    return times


def tiktoken_round(encs, texts, iters):
    times = {}
    for v in VOCABS:
        for c in CORPORA:
            t0 = time.perf_counter()
            for _ in range(iters):
                encs[v].encode_ordinary(texts[c])
            times[(v, c)] = (time.perf_counter() - t0) / iters
    return times


def compare_ids(ours, theirs):
    """None if equal, else a description of the first difference."""
    if list(ours) == theirs:
        return None
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return f"first difference at token {k}: orcd {list(ours[k:k + 5])}, tiktoken {theirs[k:k + 5]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-binary", required=True, help="CGO_ENABLED=0 go test -c -o FILE ./tokenizer")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="encodes of each corpus per side per round")
    args = ap.parse_args()

    import tiktoken

    work = tempfile.mkdtemp(prefix="tokbench-")
    try:
        run_go(args.test_binary, {"ORCD_TOKENIZER_CORPUS": work}, ["-test.run", "^TestWriteBenchCorpus$"])
        texts, sizes = {}, {}
        for c in CORPORA:
            with open(os.path.join(work, c + ".txt"), "rb") as f:
                data = f.read()
            sizes[c] = len(data)
            texts[c] = data.decode("utf-8")
        unpack_vocab(work)
        encs = tiktoken_encodings(work, load_o200k_ranks(os.path.join(work, "o200k_base.tiktoken")))

        tokens, mismatches = {}, []
        for v in VOCABS:
            for c in CORPORA:
                ours = array.array("i")
                with open(os.path.join(work, f"{c}.{v}.ids"), "rb") as f:
                    ours.frombytes(f.read())
                if sys.byteorder != "little":
                    ours.byteswap()
                theirs = encs[v].encode_ordinary(texts[c])
                tokens[(v, c)] = (len(ours), len(theirs))
                diff = compare_ids(ours, theirs)
                if diff:
                    mismatches.append(f"{v}/{c}: {diff}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rounds = {"orcd": [], "tiktoken": []}
    for r in range(args.rounds):
        rounds["orcd"].append(orcd_round(args.test_binary, args.iters))
        rounds["tiktoken"].append(tiktoken_round(encs, texts, args.iters))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def mbs(side, key):
        return sorted(sizes[key[1]] / t / 2**20 for t in (rd[key] for rd in rounds[side]))

    print(f"tiktoken {tiktoken.__version__}, Python {sys.version.split()[0]}, {args.rounds} rounds of {args.iters} "
          f"encodes per side, one thread; MB/s median (min-max)")
    print()
    print("| vocab | corpus | bytes | tokens | ids | orcd MB/s | tiktoken MB/s | orcd / tiktoken |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for v in VOCABS:
        for c in CORPORA:
            key = (v, c)
            o, t = mbs("orcd", key), mbs("tiktoken", key)
            n_ours, n_theirs = tokens[key]
            count = f"{n_ours:,}" if n_ours == n_theirs else f"orcd {n_ours:,}, tiktoken {n_theirs:,}"
            same = "different" if any(m.startswith(f"{v}/{c}:") for m in mismatches) else "identical"
            ratios = sorted(a / b for a, b in zip((sizes[c] / rd[key] for rd in rounds["orcd"]),
                                                  (sizes[c] / rd[key] for rd in rounds["tiktoken"])))
            print(f"| {v} | {c} | {sizes[c]:,} | {count} | {same} | {statistics.median(o):.1f} ({o[0]:.1f}-{o[-1]:.1f}) "
                  f"| {statistics.median(t):.1f} ({t[0]:.1f}-{t[-1]:.1f}) | {statistics.median(ratios):.2f}x "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f}) |")
    for m in mismatches:
        print("IDS DIFFER:", m)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
