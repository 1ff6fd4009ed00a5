#!/usr/bin/env python3
"""Trains orcd's built-in demo model: a small GPT-2 on the King James Version.

Runs on the GPU machine (PyTorch, numpy, HF tokenizers; transformers for a
cross-check) from the repository root:

    python3 tools/train_demo.py --corpus demo/corpus --out OUT

demo/corpus holds train.txt and valid.txt from tools/kjv_corpus.py; the
held-out test books are demo/testdata/kjv-test.txt. It writes to OUT:

  kjv-demo.gguf      the model (see below), for demo/model/
  reference.json.gz  for demo/testdata/: what orcd's tests compare against,
                     computed here in float32 with the weights exactly as the
                     GGUF stores them (Q8_0 dequantized): the last-position
                     logits of a few prompts, a greedy continuation with the
                     top-1/top-2 margin of each step, and the held-out
                     perplexity with the windows of `orcd perplexity`
The log on stdout has the settings, the training curve and the results.

Model: the GPT-2 architecture (learned position embeddings, pre-norm blocks
of LayerNorm, multi-head attention with a fused Q|K|V projection, LayerNorm,
tanh-approximated GELU MLP; final LayerNorm; output tied to the token
embedding) with GPT-2's vocabulary of 50,257 tokens, written here in a few
lines of PyTorch whose parameter names are the GGUF tensor names. When
transformers is installed the script loads the same weights into HF's
GPT2LMHeadModel and requires the same logits, so the module is GPT-2 as HF
defines it. Defaults: 6 layers, hidden 256, 4 heads of 64, MLP 1024,
context 256: 17.7M parameters, of which the embedding is 12.9M.

Tokenizer: HF tokenizers with tokenizer/testdata/gpt2.tokenizer.json.gz
(GPT-2's BPE from OpenAI's encoder.json and vocab.bpe; see the README
there). The GGUF's tokenizer.ggml.* metadata come from those two files in
tokenizer/vocab/, as `orcd synth` writes them.

Determinism: given --seed, the initialization, the batches (from a seeded
CPU generator), dropout and the checkpoint choice are fixed;
torch.use_deterministic_algorithms is on (warn_only: an op without a
deterministic kernel warns in the log instead of stopping the run). Training
uses bfloat16 autocast on CUDA; evaluation and every saved number use
float32 with TF32 off. The checkpoint kept is the one with the lowest
validation loss among the evaluations every --eval-every steps.
"""

import os

# cuBLAS needs this before CUDA initializes to be deterministic.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import gzip
import hashlib
import json
import math
import platform
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gguf_numpy import F32, GGUF, Q8_0

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FILE = "demo/testdata/kjv-test.txt"  # relative to ROOT, as the Go tests name it
EPS = 1e-5
EOT = 50256  # <|endoftext|>
PROMPTS = ["In the beginning", "And the LORD spake unto Moses, saying,", "Blessed are the"]
GREEDY_PROMPT, GREEDY_STEPS = "In the beginning God", 32


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, h, heads, ff, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attn_norm = nn.LayerNorm(h, eps=EPS)
        self.attn_qkv = nn.Linear(h, 3 * h)
        self.attn_output = nn.Linear(h, h)
        self.ffn_norm = nn.LayerNorm(h, eps=EPS)
        self.ffn_up = nn.Linear(h, ff)
        self.ffn_down = nn.Linear(ff, h)

    def forward(self, x, causal):
        B, T, C = x.shape
        q, k, v = self.attn_qkv(self.attn_norm(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        att = att.masked_fill(~causal[:T, :T], float("-inf")).softmax(dim=-1)
        att = F.dropout(att, self.dropout, self.training)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.dropout(self.attn_output(y), self.dropout, self.training)
        y = self.ffn_down(F.gelu(self.ffn_up(self.ffn_norm(x)), approximate="tanh"))
        return x + F.dropout(y, self.dropout, self.training)


class GPT2(nn.Module):
    """GPT-2; its state_dict keys are the GGUF tensor names, in file order."""

    def __init__(self, vocab, ctx, h, layers, heads, ff, dropout):
        super().__init__()
        self.dropout = dropout
        self.token_embd = nn.Embedding(vocab, h)
        self.position_embd = nn.Embedding(ctx, h)
        self.blk = nn.ModuleList(Block(h, heads, ff, dropout) for _ in range(layers))
        self.output_norm = nn.LayerNorm(h, eps=EPS)
        self.register_buffer("causal", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)), persistent=False)
        # GPT-2's initialization: N(0, 0.02), the projections into the
        # residual stream scaled by 1/sqrt(2·layers); zero biases.
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif "norm" not in name:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn_output.weight", "ffn_down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.token_embd(ids) + self.position_embd(torch.arange(T, device=ids.device))
        x = F.dropout(x, self.dropout, self.training)
        for b in self.blk:
            x = b(x, self.causal)
        return self.output_norm(x) @ self.token_embd.weight.T


# ---------------------------------------------------------------- perplexity

def windows(n, ctx, stride):
    """The windows of `orcd perplexity` over n tokens: (begin, score, end).
    A window runs tokens [begin, end) as one sequence and scores the
    predictions of tokens [score, end): the first window every token after
    its first, each later one (begin = previous begin + stride) only the
    tokens after the previous window's end. So every token but the first is
    scored exactly once, with at least ctx - stride tokens of context."""
    assert n >= 2 and 1 <= stride < ctx
    out, begin, prev_end = [], 0, 0
    while True:
        end = min(begin + ctx, n)
        out.append((begin, max(prev_end, begin + 1), end))
        if end == n:
            return out
        begin, prev_end = begin + stride, end


@torch.no_grad()
def token_nll(model, ids, ctx, stride, device, batch):
    """The negative log-likelihood (float64) of every scored token."""
    was_training = model.training
    model.eval()
    ws = windows(len(ids), ctx, stride)
    out = []
    for i in range(0, len(ws), batch):
        group = ws[i:i + batch]
        for length in sorted({e - b for b, _, e in group}):
            same = [w for w in group if w[2] - w[0] == length]
            x = torch.tensor([ids[b:e] for b, _, e in same], device=device)
            logp = torch.log_softmax(model(x).float(), dim=-1)
            for row, (b, s, e) in enumerate(same):
                # the logits at position p predict the token at p + 1
                pos = torch.arange(s - b - 1, e - b - 1, device=device)
                out.append(-logp[row, pos, x[row, s - b:e - b]].double())
    model.train(was_training)
    nll = torch.cat(out).cpu().numpy()
    assert len(nll) == len(ids) - 1
    return nll, len(ws)


def ppl_stats(nll):
    """Perplexity with its standard error by the delta method."""
    n, mean, sd = len(nll), float(nll.mean()), float(nll.std(ddof=1))
    ppl = math.exp(mean)
    return {"scored": n, "nll_mean": mean, "nll_sd": sd, "ppl": ppl, "ppl_se": ppl * sd / math.sqrt(n)}


# ---------------------------------------------------------------- GGUF

def read_gz(path):
    with gzip.open(os.path.join(ROOT, path), "rb") as f:
        return f.read().decode("utf-8")


def gpt2_vocab_metadata(g):
    """tokenizer.ggml.* for GPT-2, as orcd's tokenizer.VocabGGUF("gpt2")
    builds them: tokens by id, normal except the control <|endoftext|>,
    merges from vocab.bpe, <|endoftext|> as BOS, EOS and EOT."""
    encoder = json.loads(read_gz("tokenizer/vocab/gpt2-encoder.json.gz"))
    tokens = [None] * len(encoder)
    for tok, i in encoder.items():
        tokens[i] = tok
    assert None not in tokens and tokens[EOT] == "<|endoftext|>"
    types = [1] * len(tokens)
    types[EOT] = 3
    merges = [l for l in read_gz("tokenizer/vocab/gpt2-vocab.bpe.gz").split("\n") if l and not l.startswith("#version")]
    g.str("tokenizer.ggml.model", "gpt2")
    g.str("tokenizer.ggml.pre", "gpt-2")
    g.strs("tokenizer.ggml.tokens", tokens)
    g.i32s("tokenizer.ggml.token_type", types)
    g.strs("tokenizer.ggml.merges", merges)
    for key in ("bos", "eos", "eot"):
        g.u32("tokenizer.ggml.%s_token_id" % key, EOT)
    g.bool("tokenizer.ggml.add_bos_token", False)
    g.bool("tokenizer.ggml.add_eos_token", False)
    return len(tokens)


def export_gguf(model, a, path):
    """Writes the model as GGUF: Q8_0 matrices, F32 position embedding,
    norms and biases. The model's weights are replaced by the values the
    file stores, so that everything computed afterwards matches orcd."""
    g = GGUF()
    g.str("general.architecture", "gpt2")
    g.str("general.name", "kjv-demo")
    g.str("general.description", "orcd's demo model: a small GPT-2 trained on the King James Version "
          "(public domain) by tools/train_demo.py")
    g.u32("general.file_type", 7)  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0
    g.u32("gpt2.block_count", a.layers)
    g.u32("gpt2.context_length", a.ctx)
    g.u32("gpt2.embedding_length", a.hidden)
    g.u32("gpt2.feed_forward_length", a.ff)
    g.u32("gpt2.attention.head_count", a.heads)
    g.f32("gpt2.attention.layer_norm_epsilon", EPS)
    assert gpt2_vocab_metadata(g) == a.vocab
    with torch.no_grad():
        for name, t in model.state_dict().items():
            x = t.float().cpu().numpy()
            typ = Q8_0 if x.ndim == 2 and name != "position_embd.weight" else F32
            t.copy_(torch.from_numpy(g.tensor(name, x, typ)))
    g.write(path)


# ---------------------------------------------------------------- checks

@torch.no_grad()
def logits_of(model, ids, device):
    model.eval()
    return model(torch.tensor([ids], device=device))[0].float().cpu().numpy()


def greedy(model, ids, steps, device):
    """Greedy tokens, each step recomputed from scratch, and the top-1 minus
    top-2 logit of each step."""
    seq, toks, margins = list(ids), [], []
    for _ in range(steps):
        last = logits_of(model, seq, device)[-1]
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        toks.append(int(np.argmax(last)))
        seq.append(toks[-1])
    return toks, margins


@torch.no_grad()
def hf_crosscheck(model, a, prompts, device):
    """The largest relative logit difference between the module and HF's
    GPT2LMHeadModel with the same weights, or why it was not run."""
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        return {"skipped": repr(e)}
    cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.ctx, n_embd=a.hidden, n_layer=a.layers, n_head=a.heads,
                     n_inner=a.ff, activation_function="gelu_new", layer_norm_epsilon=EPS, tie_word_embeddings=True,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "eager"
    hf = GPT2LMHeadModel(cfg).to(device).eval()
    sd = model.state_dict()

    def put(module, weight, bias=None):
        w = sd[weight]
        # HF's Conv1D stores [in, out]; nn.Linear and embeddings [out, in].
        module.weight.copy_(w if not type(module).__name__ == "Conv1D" else w.T)
        if bias:
            module.bias.copy_(sd[bias])

    tr = hf.transformer
    put(tr.wte, "token_embd.weight")
    put(tr.wpe, "position_embd.weight")
    for l, blk in enumerate(tr.h):
        p = "blk.%d." % l
        for module, name in ((blk.ln_1, "attn_norm"), (blk.attn.c_attn, "attn_qkv"), (blk.attn.c_proj, "attn_output"),
                             (blk.ln_2, "ffn_norm"), (blk.mlp.c_fc, "ffn_up"), (blk.mlp.c_proj, "ffn_down")):
            put(module, p + name + ".weight", p + name + ".bias")
    put(tr.ln_f, "output_norm.weight", "output_norm.bias")
    assert hf.lm_head.weight.data_ptr() == tr.wte.weight.data_ptr(), "HF's lm_head is not tied"
    worst = 0.0
    for ids in prompts:
        ours = logits_of(model, ids, device)
        theirs = hf(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float().cpu().numpy()
        worst = max(worst, float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
    return {"transformers": transformers.__version__, "max_rel_diff": worst}


# ---------------------------------------------------------------- main

def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description="Trains orcd's demo model (see the module docstring).")
    ap.add_argument("--corpus", default="demo/corpus", help="directory with train.txt and valid.txt")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=32, help="sequences of --ctx tokens per step")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate; cosine decay to a tenth")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batch", type=int, default=16, help="windows per evaluation forward")
    ap.add_argument("--short-limit", type=int, default=1024, help="tokens of the CI test's short perplexity")
    a = ap.parse_args()
    a.vocab = 50257
    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import tokenizers
    tok = tokenizers.Tokenizer.from_str(read_gz("tokenizer/testdata/gpt2.tokenizer.json.gz"))
    log("torch", torch.__version__, "tokenizers", tokenizers.__version__, "numpy", np.__version__,
        "python", platform.python_version(), "device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    log("settings", json.dumps({k: v for k, v in vars(a).items() if k != "out"}, sort_keys=True))

    texts, ids, corpus = {}, {}, {}
    for name, path in (("train", os.path.join(a.corpus, "train.txt")), ("valid", os.path.join(a.corpus, "valid.txt")),
                       ("test", os.path.join(ROOT, TEST_FILE))):
        with open(path, encoding="utf-8") as f:
            texts[name] = f.read()
        ids[name] = tok.encode(texts[name]).ids
        corpus[name] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path), "tokens": len(ids[name])}
        log(name, path, corpus[name])

    model = GPT2(a.vocab, a.ctx, a.hidden, a.layers, a.heads, a.ff, a.dropout).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log("parameters", n_params, "embedding", model.token_embd.weight.numel())

    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    train = torch.tensor(ids["train"], dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(a.seed)
    offsets = torch.arange(a.ctx + 1, device=device)
    lr_min = a.lr / 10

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return lr_min + 0.5 * (a.lr - lr_min) * (1 + math.cos(math.pi * t))

    curve, best, best_step, best_nll = [], None, -1, float("inf")
    model.train()
    t_train = time.time()
    for step in range(1, a.steps + 1):
        starts = torch.randint(0, len(train) - a.ctx, (a.batch,), generator=gen).to(device)
        chunk = train[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, a.vocab), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            nll, _ = token_nll(model, ids["valid"], a.ctx, a.ctx // 2, device, a.eval_batch)
            v = float(nll.mean())
            curve.append({"step": step, "train_loss": float(loss), "valid_nll": v, "valid_ppl": math.exp(v)})
            mark = ""
            if v < best_nll:
                best_nll, best_step, mark = v, step, " *"
                best = {k: t.detach().clone() for k, t in model.state_dict().items()}
            log("step %5d  lr %.2e  train loss %.4f  valid ppl %.3f  %.0f s%s"
                % (step, lr_at(step - 1), float(loss), math.exp(v), time.time() - t_train, mark))
    train_seconds = time.time() - t_train
    model.load_state_dict(best)
    model.eval()
    log("kept step", best_step, "valid ppl %.3f" % math.exp(best_nll))

    gguf_path = os.path.join(a.out, "kjv-demo.gguf")
    export_gguf(model, a, gguf_path)
    log("wrote", gguf_path, os.path.getsize(gguf_path), "bytes, sha256", sha256_file(gguf_path))

    # Everything below uses the weights as stored in the GGUF, in float32.
    prompts = [{"text": p, "ids": tok.encode(p).ids} for p in PROMPTS]
    prompts.append({"file": TEST_FILE, "ids": ids["test"][:a.ctx]})  # a full context of held-out text
    for p in prompts:
        p["last_logits"] = [float("%.7g" % v) for v in logits_of(model, p["ids"], device)[-1]]
    g_ids = tok.encode(GREEDY_PROMPT).ids
    g_toks, g_margins = greedy(model, g_ids, GREEDY_STEPS, device)
    log("greedy:", repr(GREEDY_PROMPT + tok.decode(g_toks)), "min margin %.4g" % min(g_margins))
    ppl = []
    for limit in (0, a.short_limit):
        use = ids["test"][:limit] if limit else ids["test"]
        nll, n_windows = token_nll(model, use, a.ctx, a.ctx // 2, device, a.eval_batch)
        r = {"file": TEST_FILE, "ctx": a.ctx, "stride": a.ctx // 2, "limit": limit, "tokens": len(use),
             "windows": n_windows, **ppl_stats(nll)}
        ppl.append(r)
        log("perplexity", json.dumps(r))
    try:
        cross = hf_crosscheck(model, a, [p["ids"] for p in prompts], device)
    except Exception as e:  # a transformers API change should not cost the run; the log says so
        cross = {"error": repr(e)}
    log("HF GPT2LMHeadModel cross-check:", cross)

    ref = {
        "model": {"file": "kjv-demo.gguf", "sha256": sha256_file(gguf_path), "bytes": os.path.getsize(gguf_path),
                  "parameters": n_params, "vocab": a.vocab, "ctx": a.ctx, "hidden": a.hidden, "layers": a.layers,
                  "heads": a.heads, "ff": a.ff},
        "training": {"settings": {k: v for k, v in vars(a).items() if k != "out"}, "kept_step": best_step,
                     "curve": curve, "train_seconds": train_seconds, "total_seconds": time.time() - t0,
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "tokenizers": tokenizers.__version__, "numpy": np.__version__},
        "corpus": corpus,
        "prompts": prompts,
        "greedy": {"text": GREEDY_PROMPT, "ids": g_ids, "tokens": g_toks, "margins": g_margins},
        "perplexity": ppl,
        "hf_crosscheck": cross,
    }
    with gzip.GzipFile(os.path.join(a.out, "reference.json.gz"), "wb", mtime=0) as f:
        f.write(json.dumps(ref, separators=(",", ":")).encode())
    log("done in %.0f s" % (time.time() - t0))
    if cross.get("max_rel_diff", 0) > 1e-4:
        raise SystemExit("the module's logits differ from HF's GPT-2 by %.3g" % cross["max_rel_diff"])


if __name__ == "__main__":
    main()
