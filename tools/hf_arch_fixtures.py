#!/usr/bin/env python3
"""Reference fixtures for orcd's Hugging Face checkpoint loading, the Llama
family and chat templates, made with HF transformers and tokenizers.

Writes OUTDIR/hf/ and packs it as OUTDIR/hf_fixtures.tar.gz (one file, for
model/testdata/hf after unpacking):
  tiny_llama/   LlamaForCausalLM, GQA 4/2, llama3 rope scaling, untied, f32,
                one model.safetensors; tokenizer from model/testdata/hf_tok/llama3
  tiny_qwen2/   Qwen2ForCausalLM, QKV bias, tied, bf16, sharded with
                model.safetensors.index.json; tokenizer hf_tok/qwen2
  tiny_gptoss/  gpt-oss as published: bf16 tensors, experts as MXFP4
                _blocks/_scales with interleaved gate/up rows; tokenizer
                hf_tok/harmony
  <name>.json.gz  HF's logits for a prompt (every position) and a greedy
                continuation, as tools/hf_conformance.py records them; the
                HF model holds exactly the stored (rounded) weights
  chat.json.gz  apply_chat_template renderings (text and token ids) of the
                llama3 and qwen2 templates for 24 conversations, with tools
  tokens.json.gz  each tokenizer's ids for tricky strings

Runs on the GPU machine (CPU torch is enough), from the repo root:
    python3 tools/hf_arch_fixtures.py OUTDIR
"""

import gzip
import json
import math
import os
import shutil
import sys
import tarfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (AutoTokenizer, GptOssConfig, GptOssForCausalLM, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_numpy import FP4_VALUES, bf16_bits  # noqa: E402
from hf_conformance import dump, floats, run_reference, set_experts, set_param  # noqa: E402

torch.set_grad_enabled(False)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "model", "testdata", "hf_tok")
VOCAB = 1024  # the tokenizers have 1000 BPE tokens and up to 9 specials
STEPS, PLEN = 20, 40


def config(cls, **kw):
    """Builds a config, passing rope settings the way this transformers wants."""
    rope = kw.pop("rope")
    try:  # transformers 5 keeps rope_theta inside rope_parameters
        cfg = cls(**kw, rope_parameters=rope)
    except TypeError:
        rope = dict(rope)
        theta = rope.pop("rope_theta")
        cfg = cls(**kw, rope_theta=theta, rope_scaling=rope if rope.get("rope_type", "default") != "default" else None)
    cfg._attn_implementation = "eager"
    return cfg


def bf16_round(model):
    for p in model.parameters():
        p.data.copy_(p.data.to(torch.bfloat16).to(torch.float32))


def reference(outdir, name, model, arch, vocab_used, seed):
    rng = np.random.default_rng(seed)
    prompt = [int(t) for t in rng.integers(0, vocab_used, PLEN)]
    logits, greedy, step_logits, margins = run_reference(model, prompt, STEPS)
    dump(os.path.join(outdir, name + ".json.gz"), {
        "fixture": name, "arch": arch, "prompt": prompt, "prompt_logits": floats(logits), "greedy": greedy,
        "greedy_logits": floats(step_logits), "margins": margins,
        "transformers": transformers.__version__, "torch": torch.__version__})
    print(name, "greedy", greedy, "min margin %.4g" % min(margins))


def copy_tokenizer(src, dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOK, src, f), dst)


def llama_fixture(outdir):
    name = "tiny_llama"
    d = os.path.join(outdir, name)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    cfg = config(LlamaConfig, vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1000, eos_token_id=1004, rope=rope)
    torch.manual_seed(11)
    model = LlamaForCausalLM(cfg).eval()
    for n, p in model.named_parameters():  # larger than HF's init, so the logits vary
        if n.endswith("norm.weight"):
            p.data.normal_(1, 0.1)
        else:
            p.data.normal_(0, 1 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.1)
    model.save_pretrained(d)
    copy_tokenizer("llama3", d)
    # The llama3 scaling must have been applied (HF _compute_llama3_parameters).
    inv = 500000.0 ** (-np.arange(0, 16, 2) / 16)
    wavelen = 2 * math.pi / inv
    smooth = (32 / wavelen - 1) / (4 - 1)
    want = np.where(wavelen < 8, inv, np.where(wavelen > 32, inv / 8, (1 - smooth) * inv / 8 + smooth * inv))
    got = model.model.rotary_emb.inv_freq.numpy()
    assert np.allclose(got, want, rtol=1e-5), ("llama3 rope scaling not applied", got, want)
    reference(outdir, name, model, "llama", 1008, 12)


def qwen2_fixture(outdir):
    name = "tiny_qwen2"
    d = os.path.join(outdir, name)
    cfg = config(Qwen2Config, vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, use_sliding_window=False, eos_token_id=1002,
                 rope={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(13)
    model = Qwen2ForCausalLM(cfg).eval()
    for n, p in model.named_parameters():
        if n.endswith("norm.weight"):
            p.data.normal_(1, 0.1)
        elif p.dim() == 1:
            p.data.normal_(0, 0.3)  # the q, k, v biases
        else:
            p.data.normal_(0, 1 / math.sqrt(p.shape[-1]))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "not tied"
    bf16_round(model)
    got = model.model.rotary_emb.inv_freq.numpy()
    assert abs(got[1] / 1e6 ** (-2 / 16) - 1) < 1e-5, ("rope_theta not applied", got)
    # Saving as bf16 casts every floating buffer too; put the rotary inv_freq
    # back in full precision, which is what a loader computes from config.json.
    inv_freq = model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16).save_pretrained(d, max_shard_size="100KB")
    model.to(torch.float32)
    model.model.rotary_emb.inv_freq.copy_(inv_freq)
    assert os.path.exists(os.path.join(d, "model.safetensors.index.json")), "not sharded"
    copy_tokenizer("qwen2", d)
    reference(outdir, name, model, "qwen2", 1005, 14)


def mxfp4_hf(x):
    """MXFP4 of x (…, n) in HF's layout: blocks (…, n/32, 16) with element 2j
    in the low nibble of byte j and 2j+1 in the high one, E8M0 scales (…, n/32),
    and the dequantized values. Rounding as hf_conformance.quant_mxfp4."""
    shape = x.shape
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    e = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6)), -127) + 127
    e = np.clip(e, 0, 254).astype(np.uint8)
    scale = np.exp2(e.astype(np.float32) - 127)
    codes = np.abs((b / scale[:, None])[:, :, None] - FP4_VALUES[None, None, :]).argmin(axis=2).astype(np.uint8)
    blocks = codes[:, 0::2] | (codes[:, 1::2] << 4)
    deq = (FP4_VALUES[codes] * scale[:, None]).reshape(shape)
    return (blocks.reshape(shape[:-1] + (shape[-1] // 32, 16)), e.reshape(shape[:-1] + (shape[-1] // 32,)), deq)


def bf16(x):
    """(torch bf16 tensor, float32 values) of x."""
    bits = bf16_bits(x)
    vals = (bits.astype(np.uint32) << 16).view(np.float32).reshape(np.shape(x))
    return torch.from_numpy(vals).to(torch.bfloat16), vals


def gptoss_fixture(outdir):
    name = "tiny_gptoss"
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(21)
    h, H, KV, hd, E, ff, L, K = 64, 4, 2, 16, 4, 64, 4, 2
    rope = {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 16, "rope_theta": 100.0}
    cfg = config(GptOssConfig, vocab_size=VOCAB, hidden_size=h, intermediate_size=ff, num_hidden_layers=L,
                 num_attention_heads=H, num_key_value_heads=KV, head_dim=hd, num_local_experts=E,
                 num_experts_per_tok=K, sliding_window=8, max_position_embeddings=512, rms_norm_eps=1e-5,
                 tie_word_embeddings=False, attention_bias=True, rope=rope)
    model = GptOssForCausalLM(cfg).eval()
    assert abs(float(model.model.rotary_emb.attention_scaling) - (0.1 * math.log(4) + 1)) < 1e-6, "yarn not applied"
    cfg.save_pretrained(d)
    sd = dict(model.named_parameters())
    normal = lambda shape, std: rng.normal(0, std, shape).astype(np.float32)
    out = {}

    def put(hf, x):
        t, vals = bf16(x)
        out[hf] = t
        set_param(sd[hf], vals)
        return vals

    put("model.embed_tokens.weight", normal((VOCAB, h), 1.0))
    for l in range(L):
        hp = "model.layers.%d." % l
        put(hp + "input_layernorm.weight", 1 + normal((h,), 0.1))
        for proj, o in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            put(hp + "self_attn.%s_proj.weight" % proj, normal((o, h), 2 / math.sqrt(h)))
            put(hp + "self_attn.%s_proj.bias" % proj, normal((o,), 0.1))
        put(hp + "self_attn.o_proj.weight", normal((h, H * hd), 1 / math.sqrt(H * hd)))
        put(hp + "self_attn.o_proj.bias", normal((h,), 0.1))
        put(hp + "self_attn.sinks", normal((H,), 1.0))
        put(hp + "post_attention_layernorm.weight", 1 + normal((h,), 0.1))
        put(hp + "mlp.router.weight", normal((E, h), 1 / math.sqrt(h)))
        put(hp + "mlp.router.bias", normal((E,), 0.1))
        # gate_up: rows 2i gate, 2i+1 up, as the published checkpoints.
        gu_blocks, gu_scales, gu = mxfp4_hf(normal((E, 2 * ff, h), 3 / math.sqrt(h)))
        dn_blocks, dn_scales, down = mxfp4_hf(normal((E, h, ff), 0.5 / math.sqrt(ff)))
        ex = hp + "mlp.experts."
        out[ex + "gate_up_proj_blocks"] = torch.from_numpy(gu_blocks)
        out[ex + "gate_up_proj_scales"] = torch.from_numpy(gu_scales)
        out[ex + "down_proj_blocks"] = torch.from_numpy(dn_blocks)
        out[ex + "down_proj_scales"] = torch.from_numpy(dn_scales)
        gub_t, gub = bf16(normal((E, 2 * ff), 0.5))
        dnb_t, dnb = bf16(normal((E, h), 0.1))
        out[ex + "gate_up_proj_bias"], out[ex + "down_proj_bias"] = gub_t, dnb_t
        check = set_experts(model.model.layers[l].mlp, hp, sd, gu[:, 0::2], gu[:, 1::2], down,
                            gub[:, 0::2], gub[:, 1::2], dnb, E, h, ff, K, rng)
        print(name, "layer", l, "expert layout", check)
    put("model.norm.weight", 1 + normal((h,), 0.1))
    put("lm_head.weight", normal((VOCAB, h), 2 / math.sqrt(h)))
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer("harmony", d)
    reference(outdir, name, model, "gpt-oss", 1009, 22)


def tool(name, desc, props, required):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required}}}


WEATHER = tool("get_weather", "Get the current weather in a city.",
               {"city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])
SEARCH = tool("search", "Search the web <fast> & cheap.", {"query": {"type": "string"}, "top_k": {"type": "integer"}},
              ["query"])


def conversations():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": {"city": "Paris", "unit": "celsius"}}}
    cs = [
        ({"messages": [{"role": "user", "content": "Hello!"}]}),
        ({"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]}),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "How are you?"}]}),
        ({"messages": [{"role": "user", "content": "  leading and trailing spaces  \n"}]}),
        ({"messages": [{"role": "user", "content": "Unicode: café, 日本語, emoji 🎉, Ω≈ç√"}]}),
        ({"messages": [{"role": "user", "content": "Code:\n```python\nprint('x')\n```"}]}),
        ({"messages": [{"role": "system", "content": "Line one.\nLine two."}, {"role": "user", "content": "a"},
                       {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}),
        ({"messages": [{"role": "user", "content": "Looks special: <|im_start|> <|eot_id|>"}]}),
        ({"messages": [{"role": "user", "content": ""}]}),
        ({"messages": [{"role": "user", "content": "What's the weather in Paris?"}], "tools": [WEATHER]}),
        ({"messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"}],
          "tools": [WEATHER, SEARCH]}),
        ({"messages": [{"role": "user", "content": "Weather in Paris?"},
                       {"role": "assistant", "content": "", "tool_calls": [call]},
                       {"role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "call_1"}], "tools": [WEATHER]}),
        ({"messages": [{"role": "user", "content": "Weather in Paris?"},
                       {"role": "assistant", "content": "", "tool_calls": [call]},
                       {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
                       {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks"}],
          "tools": [WEATHER]}),
        ({"messages": [{"role": "user", "content": "Find cats"}], "tools": [SEARCH]}),
        ({"messages": [{"role": "user", "content": "Tabs\tand\r\nCRLF"}]}),
        ({"messages": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}]}),
        ({"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}]}),
        ({"messages": [{"role": "user", "content": "Numbers 1234567890 and 3.14159"}]}),
        ({"messages": [{"role": "user", "content": "A \"quoted\" 'string' with \\backslash"}]}),
        ({"messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "u1"},
                       {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                       {"role": "assistant", "content": "a2"}, {"role": "user", "content": "u3"}]}),
        ({"messages": [{"role": "user", "content": "Two tools please"}], "tools": [SEARCH, WEATHER]}),
        ({"messages": [{"role": "user", "content": "x" * 300}]}),
        ({"messages": [{"role": "user", "content": "Weather?"},
                       {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
                       {"role": "tool", "content": "rain", "tool_call_id": "call_1"}], "tools": [WEATHER]}),
        ({"messages": [{"role": "user", "content": "multi\n\n\nnewlines\n"}]}),
    ]
    return cs


def chat_fixture(outdir):
    rec = {"transformers": transformers.__version__, "date_string": "26 Jul 2024", "templates": {}}
    for fam in ("llama3", "qwen2"):
        tok = AutoTokenizer.from_pretrained(os.path.join(TOK, fam))
        cases = []
        for conv in conversations():
            for gen in (True, False):
                kw = dict(tokenize=False, add_generation_prompt=gen, date_string="26 Jul 2024")
                try:
                    text = tok.apply_chat_template(conv["messages"], tools=conv.get("tools"), **kw)
                except Exception as e:  # a template may refuse a conversation; record that
                    cases.append({"conv": conv, "add_generation_prompt": gen, "error": str(e)})
                    continue
                ids = tok.encode(text, add_special_tokens=False)
                cases.append({"conv": conv, "add_generation_prompt": gen, "text": text, "ids": ids})
        rec["templates"][fam] = cases
        print("chat", fam, sum("text" in c for c in cases), "renderings")
    dump(os.path.join(outdir, "chat.json.gz"), rec)


TOKEN_STRINGS = [
    "Hello world", "I'm here, you're there; they'll go. DON'T", "123456789 12 1", "٣٤٥ and ½ ¾",
    "  two spaces\n\n\nnewlines\r\n", "café vs cafe\u0301 (NFC)", "日本語のテキスト", "emoji 🎉🎉 done",
    "tabs\t\tand\u00a0nbsp", "a/b/c\n//comment", "<|im_start|>not special<|im_end|>", "'s 'S 'll 'LL 'Re",
    "x" * 50, "MixedCASEWordsHere", "ǅungla Ǆ", "  ", "\n", "end with space ",
]


def tokens_fixture(outdir):
    rec = {"transformers": transformers.__version__, "strings": TOKEN_STRINGS, "ids": {}, "hi_with_special": {}}
    for fam in ("llama3", "qwen2", "harmony"):
        tok = AutoTokenizer.from_pretrained(os.path.join(TOK, fam))
        rec["ids"][fam] = [tok.encode(s, add_special_tokens=False) for s in TOKEN_STRINGS]
        rec["hi_with_special"][fam] = tok.encode("Hi", add_special_tokens=True)  # BOS where the tokenizer adds it
    dump(os.path.join(outdir, "tokens.json.gz"), rec)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "out"
    outdir = os.path.join(root, "hf")
    os.makedirs(outdir, exist_ok=True)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    failed = []
    for fn in (llama_fixture, qwen2_fixture, gptoss_fixture, chat_fixture, tokens_fixture):
        try:
            fn(outdir)
        except Exception:
            import traceback
            traceback.print_exc()
            failed.append(fn.__name__)
    with tarfile.open(os.path.join(root, "hf_fixtures.tar.gz"), "w:gz") as t:
        t.add(outdir, arcname="hf")
    if failed:
        raise SystemExit("failed: %s" % failed)


if __name__ == "__main__":
    main()
