#!/usr/bin/env python3
"""Reference logits from HF transformers for orcd's model conformance tests.

Builds tiny random GptOssForCausalLM and GPT2LMHeadModel models in float32,
writes each as a GGUF file with llama.cpp's tensor names and metadata keys,
and records HF's logits for a prompt (every position) and for a greedy
continuation, with the top-1/top-2 margin of each greedy step.

The weights are stored as they will be read back: each tensor is quantized
(MXFP4, Q8_0, F16, BF16 or F32, from the ggml block specifications) in numpy,
and the dequantized values are what the HF model is loaded with, so the only
differences left are the two implementations' arithmetic.

Runs where torch, transformers and numpy are installed (CPU is enough):
    python3 tools/hf_conformance.py OUTDIR
writes OUTDIR/<fixture>.gguf and OUTDIR/<fixture>.json.gz, which go to
model/testdata (see the README there).
"""

import gzip
import inspect
import json
import math
import os
import sys
import traceback

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, GptOssConfig, GptOssForCausalLM

from gguf_numpy import BF16, F16, F32, GGUF, MXFP4, Q8_0

torch.set_grad_enabled(False)

def minimal_tokenizer(g, vocab):
    # The tests feed token ids; the vocabulary is only there to be well formed.
    g.str("tokenizer.ggml.model", "gpt2")
    g.strs("tokenizer.ggml.tokens", ["<%d>" % i for i in range(vocab)])
    g.i32s("tokenizer.ggml.token_type", [1] * vocab)
    g.strs("tokenizer.ggml.merges", [])


# ---------------------------------------------------------------- helpers

def set_param(p, value):
    v = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    assert tuple(p.shape) == tuple(v.shape), (tuple(p.shape), tuple(v.shape))
    p.data.copy_(v)


def run_reference(model, prompt, steps):
    """Prompt logits at every position, then a greedy continuation computed
    from scratch each step (no HF cache involved)."""
    ids = torch.tensor([prompt])
    logits = model(input_ids=ids, use_cache=False).logits[0].float().numpy()
    seq = list(prompt)
    greedy, step_logits, margins = [], [], []
    last = logits[-1]
    for s in range(steps):
        if s > 0:
            last = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float().numpy()
            step_logits.append(last)
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        tok = int(np.argmax(last))
        greedy.append(tok)
        seq.append(tok)
    return logits, greedy, step_logits, margins


def dump(path, record):
    with gzip.open(path, "wt") as f:
        json.dump(record, f, separators=(",", ":"))


def floats(a):
    return [[float("%.8g" % v) for v in row] for row in np.asarray(a, np.float32)]


# ---------------------------------------------------------------- gpt-oss


def gptoss_fixture(outdir, name, c):
    """c: hidden, heads, kv_heads, head_dim, layers, experts, top_k, ff, vocab,
    window, ctx, rope_base, factor, orig_ctx, types (embd, attn, experts, output)."""
    rng = np.random.default_rng(c["seed"])
    h, H, KV, hd, E, ff, V = c["hidden"], c["heads"], c["kv_heads"], c["head_dim"], c["experts"], c["ff"], c["vocab"]
    rope = {"rope_type": "yarn", "factor": float(c["factor"]), "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": c["orig_ctx"]}
    cfg_args = dict(vocab_size=V, hidden_size=h, intermediate_size=ff, num_hidden_layers=c["layers"],
                    num_attention_heads=H, num_key_value_heads=KV, head_dim=hd, num_local_experts=E,
                    num_experts_per_tok=c["top_k"], sliding_window=c["window"], max_position_embeddings=c["ctx"],
                    rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True)
    try:  # transformers 5 keeps rope_theta inside rope_parameters
        cfg = GptOssConfig(**cfg_args, rope_parameters=dict(rope, rope_theta=float(c["rope_base"])))
    except TypeError:
        cfg = GptOssConfig(**cfg_args, rope_theta=float(c["rope_base"]), rope_scaling=rope)
    cfg._attn_implementation = "eager"
    model = GptOssForCausalLM(cfg).eval()
    rot = model.model.rotary_emb
    want_mscale = 0.1 * math.log(c["factor"]) + 1
    assert abs(float(rot.attention_scaling) - want_mscale) < 1e-6, ("rope config not applied", rot.attention_scaling)
    lowest = c["rope_base"] ** (-(hd - 2) / hd) / c["factor"]  # the last frequency is fully interpolated
    assert abs(float(rot.inv_freq[-1]) / lowest - 1) < 1e-5, ("rope base not applied", rot.inv_freq)
    types = getattr(cfg, "layer_types", None)
    print(name, "attention:", model.config._attn_implementation, "layer types:", types)
    assert types is None or types[:2] == ["sliding_attention", "full_attention"], types

    g = GGUF()
    g.str("general.architecture", "gpt-oss")
    g.str("general.name", name)
    p = "gpt-oss."
    g.u32(p + "block_count", c["layers"])
    g.u32(p + "context_length", c["ctx"])
    g.u32(p + "embedding_length", h)
    g.u32(p + "feed_forward_length", ff)
    g.u32(p + "expert_feed_forward_length", ff)
    g.u32(p + "attention.head_count", H)
    g.u32(p + "attention.head_count_kv", KV)
    g.u32(p + "attention.key_length", hd)
    g.u32(p + "attention.value_length", hd)
    g.u32(p + "attention.sliding_window", c["window"])
    g.f32(p + "attention.layer_norm_rms_epsilon", 1e-5)
    g.f32(p + "rope.freq_base", c["rope_base"])
    g.str(p + "rope.scaling.type", "yarn")
    g.f32(p + "rope.scaling.factor", c["factor"])
    g.u32(p + "rope.scaling.original_context_length", c["orig_ctx"])
    g.u32(p + "expert_count", E)
    g.u32(p + "expert_used_count", c["top_k"])
    minimal_tokenizer(g, V)

    t_embd, t_attn, t_exp, t_out = c["types"]
    normal = lambda shape, std: rng.normal(0, std, shape).astype(np.float32)
    sd = dict(model.named_parameters())

    set_param(sd["model.embed_tokens.weight"], g.tensor("token_embd.weight", normal((V, h), 1.0), t_embd))
    moe_checks = []
    for l in range(c["layers"]):
        b, hp = "blk.%d." % l, "model.layers.%d." % l
        set_param(sd[hp + "input_layernorm.weight"], g.tensor(b + "attn_norm.weight", 1 + normal((h,), 0.1), F32))
        for proj, gname, out in (("q", "attn_q", H * hd), ("k", "attn_k", KV * hd), ("v", "attn_v", KV * hd)):
            set_param(sd[hp + "self_attn.%s_proj.weight" % proj],
                      g.tensor(b + gname + ".weight", normal((out, h), 2 / math.sqrt(h)), t_attn))
            set_param(sd[hp + "self_attn.%s_proj.bias" % proj], g.tensor(b + gname + ".bias", normal((out,), 0.1), F32))
        set_param(sd[hp + "self_attn.o_proj.weight"],
                  g.tensor(b + "attn_output.weight", normal((h, H * hd), 1 / math.sqrt(H * hd)), t_attn))
        set_param(sd[hp + "self_attn.o_proj.bias"], g.tensor(b + "attn_output.bias", normal((h,), 0.1), F32))
        set_param(sd[hp + "self_attn.sinks"], g.tensor(b + "attn_sinks.weight", normal((H,), 1.0), F32))
        set_param(sd[hp + "post_attention_layernorm.weight"],
                  g.tensor(b + "post_attention_norm.weight", 1 + normal((h,), 0.1), F32))
        set_param(sd[hp + "mlp.router.weight"], g.tensor(b + "ffn_gate_inp.weight", normal((E, h), 1 / math.sqrt(h)), F32))
        set_param(sd[hp + "mlp.router.bias"], g.tensor(b + "ffn_gate_inp.bias", normal((E,), 0.1), F32))
        # Expert weights in GGUF layout: [E, out, in] as numpy shapes.
        gate = g.tensor(b + "ffn_gate_exps.weight", normal((E, ff, h), 3 / math.sqrt(h)), t_exp)
        up = g.tensor(b + "ffn_up_exps.weight", normal((E, ff, h), 3 / math.sqrt(h)), t_exp)
        down = g.tensor(b + "ffn_down_exps.weight", normal((E, h, ff), 0.5 / math.sqrt(ff)), t_exp)
        gate_b = g.tensor(b + "ffn_gate_exps.bias", normal((E, ff), 0.5), F32)
        up_b = g.tensor(b + "ffn_up_exps.bias", normal((E, ff), 0.5), F32)
        down_b = g.tensor(b + "ffn_down_exps.bias", normal((E, h), 0.1), F32)
        moe_checks.append(set_experts(model.model.layers[l].mlp, hp, sd, gate, up, down, gate_b, up_b, down_b,
                                      E, h, ff, c["top_k"], rng))
    set_param(sd["model.norm.weight"], g.tensor("output_norm.weight", 1 + normal((h,), 0.1), F32))
    set_param(sd["lm_head.weight"], g.tensor("output.weight", normal((V, h), 2 / math.sqrt(h)), t_out))

    g.write(os.path.join(outdir, name + ".gguf"))
    prompt = [int(t) for t in rng.integers(0, V, c["prompt_len"])]
    logits, greedy, step_logits, margins = run_reference(model, prompt, c["steps"])
    dump(os.path.join(outdir, name + ".json.gz"), {
        "fixture": name, "arch": "gpt-oss", "config": {k: v for k, v in c.items() if k != "types"},
        "types": list(c["types"]), "prompt": prompt, "prompt_logits": floats(logits),
        "greedy": greedy, "greedy_logits": floats(step_logits), "margins": margins,
        "rope_inv_freq": [float(v) for v in rot.inv_freq.numpy()], "rope_attention_scaling": float(rot.attention_scaling),
        "moe_layout": moe_checks, "transformers": transformers.__version__, "torch": torch.__version__,
    })
    print(name, "done: prompt", len(prompt), "greedy", greedy, "min margin %.4g" % min(margins))


def moe_spec(x, rw, rb, gate, up, down, gb, ub, db, top_k):
    """The gpt-oss MoE of the issue's spec, in numpy, used only to find out how
    this transformers version lays out its fused expert weights."""
    logits = x @ rw.T + rb
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        idx = np.argsort(-logits[t])[:top_k]
        w = np.exp(logits[t, idx] - logits[t, idx].max())
        w /= w.sum()
        for e, we in zip(idx, w):
            gt = np.minimum(gate[e] @ x[t] + gb[e], 7.0)
            u = np.clip(up[e] @ x[t] + ub[e], -7.0, 7.0)
            a = gt / (1 + np.exp(-1.702 * gt)) * (u + 1)
            out[t] += we * (down[e] @ a + db[e])
    return out


def set_experts(mlp, hp, sd, gate, up, down, gate_b, up_b, down_b, E, h, ff, top_k, rng):
    """Loads GGUF-layout expert weights into HF's fused parameters. The fused
    gate_up layout (interleaved or concatenated, in×out or out×in) differs
    between transformers versions; the candidate that makes HF's MoE block
    compute the specified function is kept."""
    gu = sd[hp + "mlp.experts.gate_up_proj"]
    gub = sd[hp + "mlp.experts.gate_up_proj_bias"]
    dp = sd[hp + "mlp.experts.down_proj"]
    dpb = sd[hp + "mlp.experts.down_proj_bias"]
    fused_in_out = tuple(gu.shape) == (E, h, 2 * ff)
    assert fused_in_out or tuple(gu.shape) == (E, 2 * ff, h), gu.shape
    set_param(dp, down.transpose(0, 2, 1) if tuple(dp.shape) == (E, ff, h) else down)
    set_param(dpb, down_b)
    x = rng.normal(0, 1, (5, h)).astype(np.float32)
    want = moe_spec(x, sd[hp + "mlp.router.weight"].numpy(), sd[hp + "mlp.router.bias"].numpy(),
                    gate, up, down, gate_b, up_b, down_b, top_k)
    errs = {}
    for layout in ("interleaved", "concatenated"):
        w = np.zeros((E, 2 * ff, h), np.float32)
        bias = np.zeros((E, 2 * ff), np.float32)
        if layout == "interleaved":
            w[:, 0::2], w[:, 1::2], bias[:, 0::2], bias[:, 1::2] = gate, up, gate_b, up_b
        else:
            w[:, :ff], w[:, ff:], bias[:, :ff], bias[:, ff:] = gate, up, gate_b, up_b
        set_param(gu, w.transpose(0, 2, 1) if fused_in_out else w)
        set_param(gub, bias)
        got = mlp(torch.from_numpy(x)[None])
        got = (got[0] if isinstance(got, tuple) else got).reshape(5, h).numpy()
        errs[layout] = float(np.abs(got - want).max() / np.abs(want).max())
        if errs[layout] < 1e-4:
            return {"layout": layout, "in_out": fused_in_out, "rel_err_vs_spec": errs[layout]}
    print(inspect.getsource(type(mlp.experts)))
    raise SystemExit("no expert layout matches the spec: %s" % errs)


# ---------------------------------------------------------------- gpt2


def gpt2_fixture(outdir, name, c):
    rng = np.random.default_rng(c["seed"])
    h, ff, V, P, L = c["hidden"], c["ff"], c["vocab"], c["ctx"], c["layers"]
    tied = c["tied"]
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=h, n_layer=L, n_head=c["heads"], n_inner=ff,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=tied)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    sd = dict(model.named_parameters())
    g = GGUF()
    g.str("general.architecture", "gpt2")
    g.str("general.name", name)
    g.u32("gpt2.block_count", L)
    g.u32("gpt2.context_length", P)
    g.u32("gpt2.embedding_length", h)
    g.u32("gpt2.feed_forward_length", ff)
    g.u32("gpt2.attention.head_count", c["heads"])
    g.f32("gpt2.attention.layer_norm_epsilon", 1e-5)
    minimal_tokenizer(g, V)
    t_embd, t_pos, t_layers, t_out = c["types"]
    normal = lambda shape, std: rng.normal(0, std, shape).astype(np.float32)

    def linear(module_path, gname, out, inp, std, typ):
        """Stores an [out, in] weight and loads it into a Conv1D (in×out) or
        nn.Linear (out×in) module."""
        w = g.tensor(gname + ".weight", normal((out, inp), std), typ)
        mod = model.get_submodule(module_path)
        set_param(mod.weight, w if isinstance(mod, torch.nn.Linear) else w.T)
        set_param(mod.bias, g.tensor(gname + ".bias", normal((out,), 0.1), F32))

    set_param(sd["transformer.wte.weight"], g.tensor("token_embd.weight", normal((V, h), 0.5), t_embd))
    set_param(sd["transformer.wpe.weight"], g.tensor("position_embd.weight", normal((P, h), 0.3), t_pos))
    for l in range(L):
        b, hp = "blk.%d." % l, "transformer.h.%d." % l
        set_param(sd[hp + "ln_1.weight"], g.tensor(b + "attn_norm.weight", 1 + normal((h,), 0.1), F32))
        set_param(sd[hp + "ln_1.bias"], g.tensor(b + "attn_norm.bias", normal((h,), 0.1), F32))
        linear(hp + "attn.c_attn", b + "attn_qkv", 3 * h, h, 2 / math.sqrt(h), t_layers)
        linear(hp + "attn.c_proj", b + "attn_output", h, h, 1 / math.sqrt(h), t_layers)
        set_param(sd[hp + "ln_2.weight"], g.tensor(b + "ffn_norm.weight", 1 + normal((h,), 0.1), F32))
        set_param(sd[hp + "ln_2.bias"], g.tensor(b + "ffn_norm.bias", normal((h,), 0.1), F32))
        linear(hp + "mlp.c_fc", b + "ffn_up", ff, h, 2 / math.sqrt(h), t_layers)
        linear(hp + "mlp.c_proj", b + "ffn_down", h, ff, 1 / math.sqrt(ff), t_layers)
    set_param(sd["transformer.ln_f.weight"], g.tensor("output_norm.weight", 1 + normal((h,), 0.1), F32))
    set_param(sd["transformer.ln_f.bias"], g.tensor("output_norm.bias", normal((h,), 0.1), F32))
    if tied:
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head is not tied"
    else:
        set_param(model.lm_head.weight, g.tensor("output.weight", normal((V, h), 2 / math.sqrt(h)), t_out))
        assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    g.write(os.path.join(outdir, name + ".gguf"))
    prompt = [int(t) for t in rng.integers(0, V, c["prompt_len"])]
    logits, greedy, step_logits, margins = run_reference(model, prompt, c["steps"])
    dump(os.path.join(outdir, name + ".json.gz"), {
        "fixture": name, "arch": "gpt2", "config": {k: v for k, v in c.items() if k != "types"},
        "types": list(c["types"]), "prompt": prompt, "prompt_logits": floats(logits),
        "greedy": greedy, "greedy_logits": floats(step_logits), "margins": margins,
        "transformers": transformers.__version__, "torch": torch.__version__,
    })
    print(name, "done: prompt", len(prompt), "greedy", greedy, "min margin %.4g" % min(margins))


def real_gptoss_rope(outdir):
    """HF's YaRN frequencies for gpt-oss-20b's real rope settings."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding
    cfg = GptOssConfig()  # defaults are gpt-oss-20b's
    rot = GptOssRotaryEmbedding(config=cfg)
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    with open(os.path.join(outdir, "gptoss_20b_rope.json"), "w") as f:
        json.dump({"head_dim": cfg.head_dim, "rope": rope, "rope_theta": getattr(cfg, "rope_theta", None),
                   "inv_freq": [float(v) for v in rot.inv_freq.numpy()],
                   "attention_scaling": float(rot.attention_scaling),
                   "transformers": transformers.__version__}, f, indent=1, default=str)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "out"
    os.makedirs(outdir, exist_ok=True)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    from transformers.models.gpt_oss import modeling_gpt_oss
    with open(os.path.join(outdir, "hf_gpt_oss_source.txt"), "w") as f:
        f.write(inspect.getsource(modeling_gpt_oss))
    steps, plen = 20, 40
    # A: GQA (4 query heads per 2 KV heads), window 8 < prompt, sinks, YaRN
    #    factor 4 over 16 positions (the prompt runs to 60), top-2 of 4
    #    experts, MXFP4 experts, Q8_0 attention, embedding and output.
    failed = []

    def attempt(fn, *args):
        try:
            fn(*args)
        except Exception:  # keep going: one broken fixture should not hide the others
            traceback.print_exc()
            failed.append(args[1] if len(args) > 1 else fn.__name__)

    attempt(gptoss_fixture, outdir, "gptoss_mxfp4_q8", dict(
        seed=1, hidden=64, heads=4, kv_heads=2, head_dim=16, layers=4, experts=4, top_k=2, ff=96, vocab=512,
        window=8, ctx=64, rope_base=100.0, factor=4.0, orig_ctx=16, prompt_len=plen, steps=steps,
        types=(Q8_0, Q8_0, MXFP4, Q8_0)))
    # B: no grouping (4/4 heads), window 16, YaRN factor 2 over 32, top-3 of
    #    4, BF16 embedding, F16 attention and experts, F32 output.
    attempt(gptoss_fixture, outdir, "gptoss_f16_bf16", dict(
        seed=2, hidden=64, heads=4, kv_heads=4, head_dim=16, layers=4, experts=4, top_k=3, ff=96, vocab=512,
        window=16, ctx=64, rope_base=1000.0, factor=2.0, orig_ctx=32, prompt_len=plen, steps=steps,
        types=(BF16, F16, F16, F32)))
    # GPT-2 tied (Q8_0 everywhere, the embedding doubles as the output) and
    # untied (F16 embedding, F16 positions, F32 layers, BF16 output).
    attempt(gpt2_fixture, outdir, "gpt2_tied_q8", dict(
        seed=3, hidden=64, heads=4, ff=256, layers=3, vocab=512, ctx=64, tied=True, prompt_len=plen,
        steps=steps, types=(Q8_0, F32, Q8_0, None)))
    attempt(gpt2_fixture, outdir, "gpt2_untied_mixed", dict(
        seed=4, hidden=64, heads=4, ff=256, layers=3, vocab=512, ctx=64, tied=False, prompt_len=plen,
        steps=steps, types=(F16, F16, F32, BF16)))
    attempt(real_gptoss_rope, outdir)
    if failed:
        raise SystemExit("failed: %s" % failed)


if __name__ == "__main__":
    main()
