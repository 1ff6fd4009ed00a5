#!/usr/bin/env python3
"""Single-thread tiktoken encode throughput on orcd's tokenizer benchmark corpus.

The corpus comes from the Go test binary (TestWriteBenchCorpus), so both sides time the
same bytes on the same CPU:

    ORCD_TOKENIZER_CORPUS=/tmp/corpus.txt ./tokenizer.test -test.run WriteBenchCorpus
    python3 tools/tokenizer_bench.py --vocab bin/tok /tmp/corpus.txt

encode_ordinary is what orcd's Encode does (special-token text stays text). One call
over the whole corpus runs in one thread. Prints the best of --repeat runs in MB/s
(1 MB = 2^20 bytes, as Go's testing package reports).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_conformance import load_o200k_ranks, tiktoken_encodings  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("corpus")
    args = ap.parse_args()
    with open(args.corpus, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")
    ranks = load_o200k_ranks(os.path.join(args.vocab, "o200k_base.tiktoken"))
    for name, enc in tiktoken_encodings(args.vocab, ranks).items():
        best = float("inf")
        n = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            n = len(enc.encode_ordinary(text))
            best = min(best, time.perf_counter() - t0)
        print(f"tiktoken {name}: {len(data) / best / 2**20:.2f} MB/s ({len(data)} bytes, {n} tokens, best of {args.repeat})", flush=True)


if __name__ == "__main__":
    main()
