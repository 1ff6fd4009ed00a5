package model

import (
	"fmt"
	"math"

	"orcd/backend"
	"orcd/gguf"
	"orcd/tensor"
)

// gpt-oss (HF modeling_gpt_oss): token embedding, pre-norm blocks of
// RMSNorm → attention (Q, K, V and O with biases, GQA, RoPE NeoX with YaRN,
// per-head sinks, a sliding window on even layers) and RMSNorm → mixture of
// experts (router top-k, softmax over the k, clamped SwiGLU experts), a final
// RMSNorm and an untied output projection.
//
// Files from llama.cpp use arch "gpt-oss"; ollama's use "gptoss" with a few
// other tensor names, accepted as alternatives below.

// gptossSwiGLU is gpt-oss's clamped SwiGLU (HF GptOssExperts: alpha 1.702,
// limit 7, and up + 1).
var gptossSwiGLU = backend.SwiGLUParams{Alpha: 1.702, Limit: 7, UpShift: 1}

func init() {
	Register(Arch{
		Name:         "gpt-oss",
		Aliases:      []string{"gptoss"},
		HFModelTypes: []string{"gpt_oss"},
		Chat:         ChatHarmony,
		Load: func(f *gguf.File, arch string, be backend.Backend, opts LoadOptions) (Model, error) {
			return loadGPTOSS(f, be, arch, opts)
		},
		Layout: func(f *gguf.File, arch string) (KVLayout, error) {
			m := metadata{f: f, prefix: arch + "."}
			var p gptossParams
			var err error
			for _, k := range []struct {
				dst *int
				key string
			}{{&p.layers, "block_count"}, {&p.kvHeads, "attention.head_count_kv"}, {&p.headDim, "attention.key_length"}, {&p.windowLen, "attention.sliding_window"}} {
				if *k.dst, err = m.count(k.key, 1<<24); err != nil {
					return KVLayout{}, err
				}
			}
			return p.layout(), nil
		},
		FromHF: gptossFromHF,
		Presets: map[string]Preset{
			"tiny-gpt-oss": gptossPreset(gptossParams{layers: 2, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ctx: 131072,
				experts: 4, expertsUsed: 2, expertFF: 64, windowLen: 128}),
			// gpt-oss-20b's head dim (the flash kernels' shape) with a
			// 16-token window, small enough for quick GPU tests.
			"small-gpt-oss": gptossPreset(gptossParams{layers: 2, hidden: 256, heads: 4, kvHeads: 2, headDim: 64, ctx: 4096,
				experts: 4, expertsUsed: 2, expertFF: 256, windowLen: 16}),
			"gpt-oss-20b": gptossPreset(gptossParams{layers: 24, hidden: 2880, heads: 64, kvHeads: 8, headDim: 64, ctx: 131072,
				experts: 32, expertsUsed: 4, expertFF: 2880, windowLen: 128}),
		},
	})
}

// gptossParams are the hyperparameters of a gpt-oss file.
type gptossParams struct {
	layers, hidden, heads, kvHeads, headDim, ctx, vocab int
	experts, expertsUsed, expertFF, windowLen           int
	eps                                                 float32
	ropeBase                                            float64
	yarn                                                yarnParams
}

// yarnParams configure YaRN rotary scaling; factor 0 means plain RoPE.
type yarnParams struct {
	factor, originalCtx, betaFast, betaSlow float64
}

func readGPTOSSParams(f *gguf.File, arch string) (gptossParams, error) {
	m := metadata{f: f, prefix: arch + "."}
	var p gptossParams
	const maxDim = 1 << 20
	ints := []struct {
		dst *int
		key string
		max int
	}{
		{&p.layers, "block_count", 4096},
		{&p.hidden, "embedding_length", maxDim},
		{&p.heads, "attention.head_count", maxDim},
		{&p.kvHeads, "attention.head_count_kv", maxDim},
		{&p.headDim, "attention.key_length", maxDim},
		{&p.ctx, "context_length", 1 << 24},
		{&p.experts, "expert_count", 4096},
		{&p.expertsUsed, "expert_used_count", 4096},
		{&p.windowLen, "attention.sliding_window", 1 << 24},
	}
	for _, k := range ints {
		v, err := m.count(k.key, k.max)
		if err != nil {
			return p, err
		}
		*k.dst = v
	}
	var err error
	ffKey := "expert_feed_forward_length"
	if !f.Has(m.prefix + ffKey) {
		ffKey = "feed_forward_length"
	}
	if p.expertFF, err = m.count(ffKey, 4*maxDim); err != nil {
		return p, err
	}
	valueLen, err := m.optionalCount("attention.value_length", p.headDim, maxDim)
	if err != nil {
		return p, err
	}
	if valueLen != p.headDim {
		return p, fmt.Errorf("model: %s: %s: attention.value_length %d != attention.key_length %d (unsupported)",
			f.Path, arch, valueLen, p.headDim)
	}
	if p.heads%p.kvHeads != 0 {
		return p, fmt.Errorf("model: %s: %s: attention.head_count %d is not a multiple of attention.head_count_kv %d",
			f.Path, arch, p.heads, p.kvHeads)
	}
	if p.headDim%2 != 0 {
		return p, fmt.Errorf("model: %s: %s: attention.key_length %d is odd; RoPE needs pairs", f.Path, arch, p.headDim)
	}
	if p.expertsUsed > p.experts {
		return p, fmt.Errorf("model: %s: %s: expert_used_count %d > expert_count %d", f.Path, arch, p.expertsUsed, p.experts)
	}
	if p.eps, err = m.positive("attention.layer_norm_rms_epsilon"); err != nil {
		return p, err
	}
	base, err := m.positive("rope.freq_base")
	if err != nil {
		return p, err
	}
	p.ropeBase = float64(base)
	if p.yarn, err = readYaRN(m); err != nil {
		return p, err
	}
	if p.vocab, err = readVocab(f, arch, p.hidden); err != nil {
		return p, err
	}
	return p, nil
}

// readYaRN reads rope.scaling.*: absent or "none" is plain RoPE, "yarn"
// needs a factor and the original context; beta_fast and beta_slow default
// to 32 and 1 as in gpt-oss.
func readYaRN(m metadata) (yarnParams, error) {
	key := m.prefix + "rope.scaling.type"
	typ := "none"
	if m.f.Has(key) {
		var err error
		if typ, err = m.f.GetString(key); err != nil {
			return yarnParams{}, fmt.Errorf("model: %w", err)
		}
	}
	switch typ {
	case "none", "":
		return yarnParams{}, nil
	case "yarn":
	default:
		return yarnParams{}, fmt.Errorf("model: %s: key %q: unsupported rope scaling %q (supported: none, yarn)",
			m.f.Path, key, typ)
	}
	var y yarnParams
	factor, err := m.positive("rope.scaling.factor")
	if err != nil {
		return y, err
	}
	orig, err := m.count("rope.scaling.original_context_length", 1<<24)
	if err != nil {
		return y, err
	}
	fast, err := m.optionalPositive("rope.scaling.yarn_beta_fast", 32)
	if err != nil {
		return y, err
	}
	slow, err := m.optionalPositive("rope.scaling.yarn_beta_slow", 1)
	if err != nil {
		return y, err
	}
	return yarnParams{factor: float64(factor), originalCtx: float64(orig), betaFast: float64(fast), betaSlow: float64(slow)}, nil
}

// gptossWindow is the sliding window of layer l: even layers slide, odd
// layers see everything.
func (p gptossParams) window(l int) int {
	if l%2 == 0 {
		return p.windowLen
	}
	return 0
}

// layout is the per-layer windows over KV rows of kvHeads·headDim.
func (p gptossParams) layout() KVLayout {
	l := KVLayout{Cols: p.kvHeads * p.headDim}
	for i := range p.layers {
		l.Windows = append(l.Windows, p.window(i))
	}
	return l
}

// write sets the metadata keys of p as llama.cpp writes them.
func (p gptossParams) write(w *gguf.Writer) {
	a := "gpt-oss."
	for _, k := range []struct {
		key string
		v   int
	}{
		{"block_count", p.layers}, {"context_length", p.ctx}, {"embedding_length", p.hidden},
		{"feed_forward_length", p.expertFF}, {"expert_feed_forward_length", p.expertFF},
		{"attention.head_count", p.heads}, {"attention.head_count_kv", p.kvHeads},
		{"attention.key_length", p.headDim}, {"attention.value_length", p.headDim},
		{"attention.sliding_window", p.windowLen}, {"expert_count", p.experts}, {"expert_used_count", p.expertsUsed},
	} {
		w.SetUint32(a+k.key, uint32(k.v))
	}
	w.SetFloat32(a+"attention.layer_norm_rms_epsilon", p.eps)
	w.SetFloat32(a+"rope.freq_base", float32(p.ropeBase))
	if p.yarn.factor > 0 {
		w.SetString(a+"rope.scaling.type", "yarn")
		w.SetFloat32(a+"rope.scaling.factor", float32(p.yarn.factor))
		w.SetUint32(a+"rope.scaling.original_context_length", uint32(p.yarn.originalCtx))
		if p.yarn.betaFast != 32 || p.yarn.betaSlow != 1 {
			w.SetFloat32(a+"rope.scaling.yarn_beta_fast", float32(p.yarn.betaFast))
			w.SetFloat32(a+"rope.scaling.yarn_beta_slow", float32(p.yarn.betaSlow))
		}
	}
}

// gptossPreset is a synthetic gpt-oss with the o200k_harmony tokenizer and
// gpt-oss-20b's rope settings; weights have std 1/sqrt(fan-in), since the
// RMSNorms rescale each block's input.
func gptossPreset(p gptossParams) Preset {
	p.eps, p.ropeBase = 1e-5, 150000
	p.yarn = yarnParams{factor: 32, originalCtx: 4096, betaFast: 32, betaSlow: 1}
	return Preset{Vocab: "o200k_harmony", Synth: func(w *gguf.Writer, vocab int, ty SynthTypes) []SynthTensor {
		p.write(w)
		h, q, kv := int64(p.hidden), int64(p.heads*p.headDim), int64(p.kvHeads*p.headDim)
		ff, e := int64(p.expertFF), int64(p.experts)
		var ts synthList
		ts.add("token_embd.weight", ty.Matrix, 1, 0, h, int64(vocab))
		for l := range p.layers {
			b := fmt.Sprintf("blk.%d.", l)
			ts.norm(b+"attn_norm", h, false)
			for _, m := range []struct {
				name    string
				in, out int64
			}{{"attn_q", h, q}, {"attn_k", h, kv}, {"attn_v", h, kv}, {"attn_output", q, h}} {
				ts.add(b+m.name+".weight", ty.Matrix, invSqrt(m.in), 0, m.in, m.out)
				ts.add(b+m.name+".bias", tensor.F32, 0.02, 0, m.out)
			}
			ts.add(b+"attn_sinks.weight", tensor.F32, 1, 0, int64(p.heads))
			ts.norm(b+"post_attention_norm", h, false)
			ts.add(b+"ffn_gate_inp.weight", tensor.F32, invSqrt(h), 0, h, e)
			ts.add(b+"ffn_gate_inp.bias", tensor.F32, 0.02, 0, e)
			for _, m := range []struct {
				name    string
				in, out int64
			}{{"ffn_gate_exps", h, ff}, {"ffn_up_exps", h, ff}, {"ffn_down_exps", ff, h}} {
				ts.add(b+m.name+".weight", ty.Experts, invSqrt(m.in), 0, m.in, m.out, e)
				ts.add(b+m.name+".bias", tensor.F32, 0.02, 0, m.out, e)
			}
		}
		ts.norm("output_norm", h, false)
		ts.add("output.weight", ty.Matrix, invSqrt(h), 0, h, int64(vocab))
		return ts
	}}
}

// gptossFromHF maps an HF GptOssForCausalLM checkpoint: experts as MXFP4
// _blocks/_scales whose gate and up rows interleave (gate 2i, up 2i+1), or
// as float stacks (dequantized checkpoints), everything else bf16 (or any
// float type).
func gptossFromHF(c *HFCheckpoint) error {
	p := gptossParams{
		layers: c.Int("num_hidden_layers", -1), hidden: c.Int("hidden_size", -1),
		heads: c.Int("num_attention_heads", -1), kvHeads: c.Int("num_key_value_heads", -1),
		headDim: c.Int("head_dim", -1), ctx: c.Int("max_position_embeddings", -1),
		experts: c.Int("num_local_experts", -1), expertFF: c.Int("intermediate_size", -1),
		windowLen: c.Int("sliding_window", -1), eps: float32(c.Float("rms_norm_eps", 1e-5)),
	}
	if used := "num_experts_per_tok"; c.Has(used) {
		p.expertsUsed = c.Int(used, -1)
	} else {
		p.expertsUsed = c.Int("experts_per_token", -1) // the original release's name
	}
	if limit := c.Float("swiglu_limit", float64(gptossSwiGLU.Limit)); limit != float64(gptossSwiGLU.Limit) {
		return fmt.Errorf("model: %s: gpt-oss swiglu_limit %g is not supported (only %g)", c.Dir, limit, float64(gptossSwiGLU.Limit))
	}
	theta, kind, rope := c.RopeParameters()
	p.ropeBase = theta
	switch kind {
	case "", "default":
	case "yarn":
		p.yarn = yarnParams{factor: rope["factor"], originalCtx: rope["original_max_position_embeddings"],
			betaFast: cmpOr(rope["beta_fast"], 32), betaSlow: cmpOr(rope["beta_slow"], 1)}
		if !(p.yarn.factor > 0) || !(p.yarn.originalCtx > 0) {
			return fmt.Errorf("model: %s: gpt-oss yarn rope needs factor and original_max_position_embeddings: %v", c.Dir, rope)
		}
	default:
		return fmt.Errorf("model: %s: gpt-oss rope_type %q is not supported (only yarn)", c.Dir, kind)
	}
	var types []string
	if c.Has("layer_types") {
		c.fail(c.get("layer_types", &types))
		for l, t := range types {
			if want := map[bool]string{true: "sliding_attention", false: "full_attention"}[p.window(l) > 0]; t != want {
				return fmt.Errorf("model: %s: layer_types[%d] is %q; orcd's gpt-oss slides on even layers only", c.Dir, l, t)
			}
		}
	}
	if c.Err() != nil {
		return c.Err()
	}
	p.write(c.W)
	c.Tensor("token_embd.weight", "model.embed_tokens.weight")
	ff := p.expertFF
	for l := range p.layers {
		b, hp := fmt.Sprintf("blk.%d.", l), fmt.Sprintf("model.layers.%d.", l)
		c.Tensor(b+"attn_norm.weight", hp+"input_layernorm.weight")
		for _, m := range [][2]string{{"attn_q", "q_proj"}, {"attn_k", "k_proj"}, {"attn_v", "v_proj"}, {"attn_output", "o_proj"}} {
			c.Tensor(b+m[0]+".weight", hp+"self_attn."+m[1]+".weight")
			c.Tensor(b+m[0]+".bias", hp+"self_attn."+m[1]+".bias")
		}
		c.Tensor(b+"attn_sinks.weight", hp+"self_attn.sinks")
		c.Tensor(b+"post_attention_norm.weight", hp+"post_attention_layernorm.weight")
		c.Tensor(b+"ffn_gate_inp.weight", hp+"mlp.router.weight")
		c.Tensor(b+"ffn_gate_inp.bias", hp+"mlp.router.bias")
		ex := hp + "mlp.experts."
		if c.HasTensor(ex + "gate_up_proj_blocks") { // as published: MXFP4
			c.MXFP4Experts(b+"ffn_gate_exps.weight", ex+"gate_up_proj", Span(0, ff, 2))
			c.MXFP4Experts(b+"ffn_up_exps.weight", ex+"gate_up_proj", Span(1, ff, 2))
			c.MXFP4Experts(b+"ffn_down_exps.weight", ex+"down_proj", Span(0, p.hidden, 1))
		} else { // dequantized checkpoints: float stacks
			c.Experts(b+"ffn_gate_exps.weight", ex+"gate_up_proj", p.hidden, Span(0, ff, 2))
			c.Experts(b+"ffn_up_exps.weight", ex+"gate_up_proj", p.hidden, Span(1, ff, 2))
			c.Experts(b+"ffn_down_exps.weight", ex+"down_proj", ff, Span(0, p.hidden, 1))
		}
		c.ExpertBias(b+"ffn_gate_exps.bias", ex+"gate_up_proj_bias", Span(0, ff, 2))
		c.ExpertBias(b+"ffn_up_exps.bias", ex+"gate_up_proj_bias", Span(1, ff, 2))
		c.ExpertBias(b+"ffn_down_exps.bias", ex+"down_proj_bias", Span(0, p.hidden, 1))
	}
	c.Tensor("output_norm.weight", "model.norm.weight")
	c.Tensor("output.weight", "lm_head.weight")
	return c.Err()
}

// cmpOr is v, or def when v is 0 (a missing number).
func cmpOr(v, def float64) float64 {
	if v == 0 {
		return def
	}
	return v
}

// ropeFrequencies returns the headDim/2 inverse frequencies of NeoX RoPE and
// the factor on cos and sin, following HF _compute_yarn_parameters with
// truncate=False: dimensions that rotate more than betaFast times over the
// original context keep their frequency, those under betaSlow are divided by
// factor, and a linear ramp blends the ones between; the attention factor is
// 0.1·ln(factor) + 1.
func ropeFrequencies(headDim int, base float64, y yarnParams) ([]float32, float32) {
	half := headDim / 2
	inv := make([]float32, half)
	// correctionDim is the dimension index whose wavelength fits `rotations`
	// times into the original context.
	correctionDim := func(rotations float64) float64 {
		return float64(headDim) * math.Log(y.originalCtx/(rotations*2*math.Pi)) / (2 * math.Log(base))
	}
	var low, high float64
	if y.factor > 0 {
		low = max(correctionDim(y.betaFast), 0)
		high = min(correctionDim(y.betaSlow), float64(headDim-1))
		if low == high {
			high += 0.001 // as HF, to avoid dividing by zero in the ramp
		}
	}
	for i := range half {
		extrapolated := 1 / math.Pow(base, float64(2*i)/float64(headDim))
		if y.factor == 0 {
			inv[i] = float32(extrapolated)
			continue
		}
		interpolated := extrapolated / y.factor
		ramp := min(max((float64(i)-low)/(high-low), 0), 1)
		keep := 1 - ramp // weight of the unscaled frequency
		inv[i] = float32(interpolated*(1-keep) + extrapolated*keep)
	}
	mscale := float32(1)
	if y.factor > 1 {
		mscale = float32(0.1*math.Log(y.factor) + 1)
	}
	return inv, mscale
}

// gptossBlock is one transformer block's weights.
type gptossBlock struct {
	attn         ropeAttention  // with biases and sinks
	postAttnNorm backend.Tensor // post_attention_layernorm
	moe          backend.MoEWeights
	window       int // sliding window of this layer, 0 for full attention
}

// gptoss is a loaded gpt-oss.
type gptoss struct {
	core[*gptossBuffers]
	p            gptossParams
	attn         backend.AttentionParams // Window and the paging fields set per step
	attnSettings ropeSettings
	moe          backend.MoEParams

	tokEmbd, outNorm, output backend.Tensor
	blocks                   []gptossBlock
}

func loadGPTOSS(f *gguf.File, be backend.Backend, arch string, opts LoadOptions) (*gptoss, error) {
	p, err := readGPTOSSParams(f, arch)
	if err != nil {
		return nil, err
	}
	m := &gptoss{p: p}
	m.be = be
	m.cfg = Config{Arch: "gpt-oss", Chat: ChatHarmony, VocabSize: p.vocab, ContextLength: p.ctx, Layers: p.layers, Hidden: p.hidden, MaxBatch: opts.MaxBatch}
	m.cfg.Name, _ = f.GetString("general.name")
	m.attn = backend.AttentionParams{
		Heads: p.heads, KVHeads: p.kvHeads, HeadDim: p.headDim,
		Scale: float32(1 / math.Sqrt(float64(p.headDim))),
	}
	m.moe = backend.MoEParams{TopK: p.expertsUsed, SwiGLU: gptossSwiGLU}
	m.attnSettings = ropeSettings{eps: p.eps, rope: backend.RoPEParams{HeadDim: p.headDim, Mode: backend.RoPENeoX}}

	w := newWeights(f, be, arch, opts.Progress)
	h, q, kv, ff, e := p.hidden, p.heads*p.headDim, p.kvHeads*p.headDim, p.expertFF, p.experts
	m.tokEmbd = w.load(false, []int{h, p.vocab}, "token_embd.weight")
	for l := 0; l < p.layers && w.err == nil; l++ {
		b := gptossBlock{}
		ll := layerLoader{w: w, layer: l}
		b.attn = loadAttention(ll, h, q, kv, true)
		if b.attn.oB == nil { // gpt-oss's output projection has a bias
			b.attn.oB = ll.get(true, []int{h}, "attn_output.bias", "attn_out.bias")
		}
		b.attn.sinks = ll.get(true, []int{p.heads}, "attn_sinks.weight", "attn_sinks")
		b.postAttnNorm = ll.get(true, []int{h}, "post_attention_norm.weight", "ffn_norm.weight")
		b.moe.Router = ll.get(false, []int{h, e}, "ffn_gate_inp.weight")
		b.moe.RouterBias = ll.get(true, []int{e}, "ffn_gate_inp.bias")
		b.moe.Gate = ll.get(false, []int{h, ff, e}, "ffn_gate_exps.weight")
		b.moe.GateBias = ll.get(true, []int{ff, e}, "ffn_gate_exps.bias")
		b.moe.Up = ll.get(false, []int{h, ff, e}, "ffn_up_exps.weight")
		b.moe.UpBias = ll.get(true, []int{ff, e}, "ffn_up_exps.bias")
		b.moe.Down = ll.get(false, []int{ff, h, e}, "ffn_down_exps.weight")
		b.moe.DownBias = ll.get(true, []int{h, e}, "ffn_down_exps.bias")
		b.window = p.window(l)
		m.blocks = append(m.blocks, b)
	}
	m.layout = p.layout()
	m.outNorm = w.load(true, []int{h}, "output_norm.weight")
	m.output = w.load(false, []int{h, p.vocab}, "output.weight")
	if m.weights, err = w.finish(); err != nil {
		return nil, err
	}

	inv, mscale := ropeFrequencies(p.headDim, p.ropeBase, p.yarn)
	m.attnSettings.rope.MScale = mscale
	if m.attnSettings.invFreq, err = m.upload("the RoPE frequencies", inv); err != nil {
		return nil, err
	}
	return m, nil
}

// gptossBuffers are the activations of a step.
type gptossBuffers struct {
	activations
	q, k, v, att backend.Tensor
	proj         backend.Tensor // attention output and expert mix, n×hidden
	route        routeBuffers
}

func (m *gptoss) newBuffers() (*gptossBuffers, error) {
	n, h := m.cfg.MaxBatch, m.p.hidden
	q, kv := m.p.heads*m.p.headDim, m.p.kvHeads*m.p.headDim
	b := &gptossBuffers{activations: newActivations(m.be, n, len(m.layout.Groups()), h, true)}
	s := &b.set
	// The normed stream and the attention output are each read by the
	// products after them: they carry quantized copies where the backend
	// has them.
	b.q, b.k, b.v, b.att = s.f32(n, q), s.f32(n, kv), s.f32(n, kv), s.f32q(n, q)
	b.proj = s.f32(n, h)
	if _, fused := m.be.(backend.FusedMoE); !fused {
		b.route = newRouteBuffers(s, n, m.p.experts, m.p.expertsUsed)
	}
	if err := b.ready(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *gptossBuffers) view(be backend.Backend, n int) *gptossBuffers {
	v := *b
	v.activations = b.activations.view(be, n)
	for _, t := range []*backend.Tensor{&v.q, &v.k, &v.v, &v.att, &v.proj} {
		*t = be.View(*t, n)
	}
	v.route = b.route.view(be, n)
	return &v
}

// mixture queues the mixture of experts of x into dst: the backend's fused
// MoE when it has one, else the router's product, Route and Experts.
func (m *gptoss) mixture(dst, x backend.Tensor, w *backend.MoEWeights, r *routeBuffers) {
	if f, ok := m.be.(backend.FusedMoE); ok {
		f.MoE(dst, x, w, m.moe)
		return
	}
	m.be.MatMul(r.logits, x, w.Router, w.RouterBias)
	m.be.Route(r.ids, r.weights, r.logits, m.moe.TopK)
	m.be.Experts(dst, x, r.ids, r.weights, &w.ExpertWeights, m.moe.SwiGLU)
}

// Step runs a batch of sequences through the model.
func (m *gptoss) Step(kv KV, b *Batch) (Logits, error) { return m.step(kv, b, m.newBuffers, m.ops) }

// Forward runs tokens through the model at the cache's position.
func (m *gptoss) Forward(c Cache, tokens []int32, all bool) ([]float32, error) {
	return m.forward(c, tokens, all, m.newBuffers, m.ops)
}

// ops queues one step's forward pass.
func (m *gptoss) ops(v *stepView[*gptossBuffers], b *gptossBuffers) {
	be := m.be
	be.Embed(b.x, m.tokEmbd, b.ids)
	for l := range m.blocks {
		blk := &m.blocks[l]
		// Attention, with sinks and a window on even layers. Each residual
		// add is fused into the norm after it (AddRMSNorm): here the
		// previous block's expert output joins the residual stream.
		blk.attn.queue(be, m.attnSettings, l, &b.activations, b.q, b.k, b.v, b.att, b.proj, v.cache(l), v.attention(m.attn, blk.window))
		// Mixture of experts: residual add and RMSNorm → router top-k →
		// clamped SwiGLU experts, weighted sum (added to the residual by
		// the next block's norm).
		be.AddRMSNorm(b.h, b.x, b.proj, blk.postAttnNorm, m.p.eps)
		m.mixture(b.proj, b.h, &blk.moe, &b.route)
	}
	be.Add(b.x, b.x, b.proj) // the last block's expert output
	// Final norm and the output projection, for the rows whose logits are
	// wanted.
	v.rmsLogits(be, b.x, m.outNorm, m.output, m.p.eps)
}
