#!/usr/bin/env python3
"""Golden token ids for orcd's tokenizer tests, from the reference tokenizers.

Run on the GPU machine (it has tiktoken and tokenizers; no network):

    python3 tools/tokenizer_conformance.py --vocab bin/tok --out $OUT

--vocab holds copies of the shared vocabulary files: encoder.json, vocab.bpe and
o200k_base.tiktoken.

It writes:
  conformance.json.gz        the test strings and, per tokenizer, their ids from
                             tiktoken (o200k_harmony, gpt2) and from HF tokenizers
                             (the tokenizer.json files below), both with special
                             tokens as plain text and with special tokens parsed.
  gpt2.tokenizer.json.gz     GPT-2 as a HF tokenizer.json (ByteLevel pre-tokenizer)
  o200k_harmony.tokenizer.json.gz
                             o200k_harmony as a HF tokenizer.json (Split regex then
                             ByteLevel without regex), merges from the ranks.
The tests require 100% identical ids; the summary printed at the end says how many
strings the references agree on among themselves.
"""

import argparse
import base64
import gzip
import json
import os
import random
import sys

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
O200K_PAT = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

HARMONY_NAMED = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
}


def harmony_specials():
    return {HARMONY_NAMED.get(i, f"<|reserved_{i}|>"): i for i in range(199998, 201088)}


def bytes_to_unicode():
    """GPT-2's byte-level alphabet: byte value -> printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_o200k_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def load_gpt2(vocab_dir):
    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(l.split(" ")) for l in f.read().split("\n")[1:] if l]
    return encoder, merges


def derive_merges(ranks):
    """For each multi-byte token, in rank order: BPE over its bytes by tiktoken's rule
    (merge the adjacent pair whose concatenation has the lowest rank), allowing only
    ranks below the token's own, until two parts remain. Those are its merge."""
    out = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = [tok[i:i + 1] for i in range(len(tok))]
        while len(parts) > 2:
            best, at = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best:
                    best, at = r, i
            if at < 0:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise SystemExit(f"token {tok!r} (rank {rank}) does not split into two lower-ranked tokens")
        out.append(parts)
    return out


# ---------------------------------------------------------------- test strings

WORDS = ("the of and to in is was that for it with as his on be at by had are but from not this have which "
         "one you were her all she there would their we him been has when who will more no if out so said what "
         "up its about into than them can only other new some could time these two may then do first any my "
         "now such like our over man me even most made after also did many before must through back years "
         "where much your way well down should because each just those people Mr how too little state good "
         "very make world still own see men work long get here between both life being under never day same "
         "another know while last might us great old year off come since against go came right used take "
         "three internationalization antidisestablishmentarianism tokenizer GPU CUDA NVIDIA JSON HTTP API").split()
CONTRACTIONS = ["don't", "DON'T", "Don'T", "I'm", "I'M", "we've", "WE'VE", "We'Ve", "it's", "IT'S", "It'S",
                "they'll", "THEY'LL", "they'Ll", "you're", "YOU'RE", "she'd", "SHE'D", "can't", "CAN'T",
                "'s", "'S", "'ll", "'LL", "'re", "'ve", "'d", "'D", "'m", "'t", "o'clock", "rock'n'roll",
                "it’s", "Ma'ſ", "x'ſ", "''s", "'''", "L'Oréal", "D'ARTAGNAN"]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "func main() {\n\tfmt.Println(\"hello, 世界\")\n}\n",
    "const x = {a: 1, 'b': [2, 3], \"c\": null}; // comment\n",
    "<div class=\"x\"><a href=\"https://example.com/a/b?c=d&e=f\">link</a></div>\r\n",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC;",
    "#include <stdio.h>\nint main(void){printf(\"%d\\n\", 42);return 0;}",
    "if x!=y&&z||!w{panic(err)}",
    "    \n        \n\t\t\n",
    "path/to/file.go:123:45: error: expected ';'\n",
    "$ ls -la /usr/local/bin | grep -v '^d' >> out.txt 2>&1\n",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares\r\n",
    "/* multi\n * line\n */\n//\n///\n////",
    "a//b///c\n//\n\n/",
    "{\"key\": \"value\", \"num\": 3.14159, \"arr\": [1,2,3]}\n",
]
CJK = ["你好，世界！", "我们今天去公园散步。", "東京都渋谷区", "こんにちは、世界。", "カタカナとひらがなー", "ラーメン",
       "日本語の文章です。漢字、ひらがな、カタカナ。", "中文English混合text", "一二三四五六七八九十", "龘靐齉爨"]
KOREAN = ["안녕하세요", "대한민국 서울특별시", "한국어 문장입니다. 감사합니다!", "ㄱㄴㄷㄹ", "한글ABC123"]
ARABIC = ["مرحبا بالعالم", "اللُّغَةُ العَرَبِيَّةُ", "السلام عليكم ورحمة الله", "٣٤٥٦ رقم", "عربي123"]
DEVANAGARI = ["नमस्ते दुनिया", "हिन्दी भाषा", "क्षत्रिय ज्ञान", "संस्कृतम्", "१२३४५ अंक"]
THAI = ["สวัสดีครับ", "ภาษาไทยง่ายนิดเดียว", "กรุงเทพมหานคร", "น้ำ ไม้ ก็"]
EMOJI = ["👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "1️⃣", "#️⃣", "❤️", "🧑🏿‍🚀", "😀😃😄",
         "👩🏻‍❤️‍💋‍👨🏼", "🫠", "©®™", "a👍b", " 👍 ", "🤷‍♀️"]
COMBINING = ["e\u0301", "Cafe\u0301", "\u0301", "\u0301ABC", "\u0301abc", " \u0301x", "a\u0300\u0301\u0302\u0303",
             "Z\u0351\u0352\u0353\u0354a\u0355l\u0356g\u0357o", "n\u0303o", "\u20dd", "A\u0308", "\u0308A",
             "ABC\u0301", "ABC\u0301def", "x\u0301Y", "1\u0301", "\u05d0\u05b8", "\u0e01\u0e34"]
TRICKY = ["ǅemal", "ǅ", "ʰello", "Hʰ", "ABCdef", "ABC", "AbC", "aBC", "HTTPServer", "iPhone", "ﬁnance",
          "²³", "x²", "½", "Ⅻ", "ⅫⅫ", "٣٤٥", "１２３４", "123456789", "1,234,567.89", "3.14", "-42", "+1e-10",
          "ſ", "K", "İstanbul", "ΣΑΣ", "ΌΣΟΣ", "straße", "STRASSE", "Ǉ", "ᾈ", "ℌ", "ª", "º", "µ", "ß", "ŉ"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\u00a0", "\u3000", "\u2009", "\u200b",
          "\x0b", "\x0c", "\u0085", "\u2028", "\u2029", "\u1680", "\u202f", "\u205f", " \n", "\n ", " \t ", "\t\n"]


def char_pool():
    """Characters from every class the pre-tokenizer patterns distinguish."""
    pool = list("abcxyzABCXYZ0123456789'\"/\\.,;:!?-_()[]{}<>|@#$%^&*+=~`")
    pool += list("éüñçÉÜÑßøåæœ") + list("中文日本語한국어") + list("ابتثعغ") + list("अआकखगक्ष")
    pool += list("กขคง") + ["\u0301", "\u0308", "\u0e34", "\u094d", "\u064e", "\u20dd", "\u200d", "\ufe0f"]
    pool += ["ǅ", "ʰ", "ー", "ǈ", "²", "½", "Ⅻ", "٣", "०", "１", "ſ", "İ"]
    pool += ["👍", "🏽", "💻", "🇯", "🇵", "©", "€", "£", "→", "∑", "★", "…", "—", "–", "’", "“", "”", "«", "»"]
    pool += [" ", " ", " ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b"]
    return pool


def test_strings():
    rng = random.Random(20261125)
    out = ["", " ", "a", "\n", "Hello world", "Hello, world!", "hello world\n"]
    # ASCII prose.
    for _ in range(300):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 30))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        s = " ".join(words)
        s += rng.choice([".", "!", "?", "", ",", "...", ";"])
        if rng.random() < 0.3:
            s = s.upper()
        out.append(s)
    # Contractions, in sentences and alone.
    for c in CONTRACTIONS:
        out.append(c)
        out.append(f"{rng.choice(WORDS)} {c} {rng.choice(WORDS)}")
        out.append(c.upper() + " " + c.lower())
    # Code.
    for c in CODE:
        out.append(c)
        out.append(c.replace("\n", "\r\n"))
        out.append(c.replace("    ", "\t"))
    # Scripts and emoji, alone, repeated, and with ASCII around them.
    for group in (CJK, KOREAN, ARABIC, DEVANAGARI, THAI, EMOJI, COMBINING, TRICKY):
        for s in group:
            out.append(s)
            out.append(s * 3)
            out.append(f"{rng.choice(WORDS)} {s} {rng.choice(WORDS)}")
            out.append(f"{s}{rng.choice(SPACES)}{rng.choice(group)}")
            out.append(f"({s}) '{s}' {s}'s {s.upper()}'S")
    # Whitespace runs and line endings.
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append("".join(rng.choice(SPACES) for _ in range(rng.randint(1, 6))))
            parts.append(rng.choice(WORDS + ["123", "!!", "x", "中文", "\u0301", "👍", ""]))
        out.append("".join(parts))
    # Digits.
    for _ in range(120):
        n = rng.randint(0, 10 ** rng.randint(1, 25))
        sep = rng.choice(["", " ", ",", ".", "\n", "-", "/"])
        out.append(f"{n}{sep}{rng.randint(0, 99999)}")
    # Very long words and runs.
    for n in (100, 127, 128, 129, 257, 1000, 5000):
        out.append("a" * n)
        out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)))
    out += [" " * 300, "\n" * 300, "x" + " " * 200 + "y", "!" * 500, "9" * 1000, "中" * 400, "👍" * 200,
            "Supercalifragilisticexpialidocious" * 20, "e\u0301" * 300, "\t" * 129 + "z"]
    # Random mixtures of characters from every class.
    pool = char_pool()
    for _ in range(1000):
        out.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 40))))
    seen, uniq = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    return uniq


def special_strings(rng_seed=7):
    rng = random.Random(rng_seed)
    out = [
        "<|start|>user<|message|>Hello!<|end|>",
        "<|start|>assistant<|channel|>final<|message|>Hi<|return|>",
        "<|endoftext|>",
        "text<|endoftext|>more text",
        "<|startoftext|><|endoftext|><|call|><|constrain|>",
        "<|reserved_200100|> and <|reserved_201087|>",
        "<|start", "<|start|", "start|>", "<<|start|>>", "<|START|>", "<| start |>",
        "<|endofprompt|>", "a<|end|>b<|end|>c",
    ]
    specials = list(HARMONY_NAMED.values())
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(1, 6)):
            parts.append(rng.choice(specials + WORDS + [" ", "\n", "<|", "|>", "<", "|", "中文"]))
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------- references

def tiktoken_encodings(vocab_dir, ranks):
    import tiktoken

    with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    gpt2_ranks = {bytes(byte_decoder[c] for c in tok): i for tok, i in encoder.items() if tok != "<|endoftext|>"}
    encs = {
        "gpt2": tiktoken.Encoding(name="gpt2_local", pat_str=GPT2_PAT, mergeable_ranks=gpt2_ranks,
                                  special_tokens={"<|endoftext|>": 50256}),
        "o200k_harmony": tiktoken.Encoding(name="o200k_harmony_local", pat_str=O200K_PAT, mergeable_ranks=ranks,
                                           special_tokens=harmony_specials()),
    }
    return encs


def official_tiktoken(vocab_dir):
    """tiktoken's own gpt2 and o200k_harmony, fed the carried files through its cache."""
    import hashlib
    import shutil
    import tiktoken

    cache = "/tmp/tiktoken_cache"
    os.makedirs(cache, exist_ok=True)
    files = {
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe": "vocab.bpe",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json": "encoder.json",
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken": "o200k_base.tiktoken",
    }
    for url, name in files.items():
        shutil.copy(os.path.join(vocab_dir, name), os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
    os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return {name: tiktoken.get_encoding(name) for name in ("gpt2", "o200k_harmony")}


def build_hf(vocab_dir, ranks, o200k_merges):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()

    def bl(b):
        return "".join(b2u[x] for x in b)

    encoder, gpt2_merges = load_gpt2(vocab_dir)
    gpt2 = Tokenizer(models.BPE(vocab=encoder, merges=gpt2_merges))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])

    vocab = {bl(tok): r for tok, r in ranks.items()}
    merges = [(bl(a), bl(b)) for a, b in o200k_merges]
    o200k = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    o200k.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PAT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    o200k.decoder = decoders.ByteLevel()
    specials = sorted(harmony_specials().items(), key=lambda kv: kv[1])
    o200k.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
    for t, i in specials:
        assert o200k.token_to_id(t) == i, (t, i, o200k.token_to_id(t))
    return {"gpt2": gpt2, "o200k_harmony": o200k}


def hf_ids(tok, strings, parse_special):
    tok.encode_special_tokens = not parse_special
    return [e.ids for e in tok.encode_batch(strings, add_special_tokens=False)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()

    ranks = load_o200k_ranks(os.path.join(args.vocab, "o200k_base.tiktoken"))
    o200k_merges = derive_merges(ranks)

    strings = test_strings()
    specials = special_strings()
    print(f"{len(strings)} strings, {len(specials)} strings with special-token text", flush=True)

    result = {
        "generator": "tools/tokenizer_conformance.py",
        "strings": strings,
        "special_strings": specials,
        "ids": {},          # "<reference>/<tokenizer>" -> ids per string, special-token text as text
        "special_ids": {},  # same, special-token text parsed into ids
        "notes": {},
    }
    import tiktoken
    import tokenizers
    result["notes"]["versions"] = {"tiktoken": tiktoken.__version__, "tokenizers": tokenizers.__version__}

    encs = tiktoken_encodings(args.vocab, ranks)
    for name, enc in encs.items():
        result["ids"]["tiktoken/" + name] = [enc.encode_ordinary(s) for s in strings]
        result["special_ids"]["tiktoken/" + name] = [enc.encode(s, allowed_special="all") for s in specials]
        bad = sum(enc.decode(ids) != s for ids, s in zip(result["ids"]["tiktoken/" + name], strings))
        print(f"tiktoken/{name}: decode(encode(s)) != s for {bad} strings", flush=True)

    try:
        official = official_tiktoken(args.vocab)
        for name, enc in official.items():
            same = sum(enc.encode_ordinary(s) == ids for s, ids in zip(strings, result["ids"]["tiktoken/" + name]))
            note = f"tiktoken.get_encoding({name!r}) agrees with the locally built encoding on {same}/{len(strings)} strings; pat_str equal: {enc._pat_str == encs[name]._pat_str}"
            extra = sorted(set(enc.special_tokens_set) - set(encs[name].special_tokens_set))
            if extra:
                note += f"; extra special tokens there: {extra}"
            result["notes"]["official_" + name] = note
            print(note, flush=True)
    except Exception as e:  # a cross-check only: the local encodings are the reference
        result["notes"]["official"] = f"tiktoken.get_encoding unavailable: {e!r}"
        print(result["notes"]["official"], flush=True)

    hf = build_hf(args.vocab, ranks, o200k_merges)
    for name, tok in hf.items():
        result["ids"]["hf/" + name] = hf_ids(tok, strings, parse_special=False)
        result["special_ids"]["hf/" + name] = hf_ids(tok, specials, parse_special=True)
        for field in ("ids", "special_ids"):
            a, b = result[field]["hf/" + name], result[field]["tiktoken/" + name]
            same = sum(x == y for x, y in zip(a, b))
            msg = f"hf/{name} {field}: agrees with tiktoken on {same}/{len(a)}"
            result["notes"][f"hf_vs_tiktoken_{name}_{field}"] = msg
            print(msg, flush=True)
        if args.out:
            with gzip.open(os.path.join(args.out, f"{name}.tokenizer.json.gz"), "wt", encoding="utf-8") as f:
                f.write(tok.to_str())

    if args.out:
        with gzip.open(os.path.join(args.out, "conformance.json.gz"), "wt", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
