#!/usr/bin/env python3
"""Writes small Llama-3-style, Qwen2-style and harmony (gpt-oss) Hugging Face
tokenizers for orcd's tests (model/testdata/hf_tok/{llama3,qwen2,harmony}/): tokenizer.json and
tokenizer_config.json with the chat template beside this script's inputs.

The vocabulary is GPT-2's (tokenizer/vocab: OpenAI's encoder.json and
vocab.bpe) cut to its 256 byte tokens and first 744 merges, so it is a
valid byte-level BPE of 1000 tokens; then each family's special tokens
(ids 1000 on), its pre-tokenizer regex (Llama 3's, cl100k-style; Qwen2's,
the same with single digits), Qwen2's NFC normalizer, Llama 3's BOS
post-processor and ignore_merges. Only the standard library is needed:
    python3 tools/make_tokenizer_fixtures.py
"""

import gzip
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "tokenizer", "vocab")
OUT = os.path.join(ROOT, "model", "testdata", "hf_tok")
MERGES = 744

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
O200K = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def base_vocab():
    enc = json.loads(gzip.open(os.path.join(VOCAB, "gpt2-encoder.json.gz"), "rt", encoding="utf-8").read())
    lines = gzip.open(os.path.join(VOCAB, "gpt2-vocab.bpe.gz"), "rt", encoding="utf-8").read().split("\n")
    merges = [l for l in lines if l and not l.startswith("#version")][:MERGES]
    vocab = {t: i for t, i in enc.items() if i < 256}
    for m in merges:
        a, b = m.split(" ")
        assert a in vocab and b in vocab, m
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def added(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def write(name, vocab, merges, specials, regex, normalizer, post, ignore_merges, config, template):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    toks = [added(len(vocab) + i, s, sp) for i, (s, sp) in enumerate(specials)]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": toks,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    if template:
        with open(os.path.join(OUT, template), encoding="utf-8") as f:
            config["chat_template"] = f.read()
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)


def main():
    vocab, merges = base_vocab()
    n = len(vocab)
    llama_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]
    post = {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n], "tokens": ["<|begin_of_text|>"]}}}
    write("llama3", vocab, merges, [(s, True) for s in llama_specials], LLAMA3, None, post, True,
          {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "model_max_length": 131072}, "llama3.jinja")
    qwen_specials = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                     ("<tool_call>", False), ("</tool_call>", False)]
    write("qwen2", vocab, merges, qwen_specials, QWEN2, {"type": "NFC"},
          {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}, False,
          {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
           "model_max_length": 32768}, "qwen2.jinja")
    harmony = ["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
               "<|end|>", "<|message|>", "<|call|>"]
    write("harmony", vocab, merges, [(s, True) for s in harmony], O200K, None, None, True,
          {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}, None)


if __name__ == "__main__":
    main()
