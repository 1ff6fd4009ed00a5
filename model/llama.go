package model

import (
	"encoding/binary"
	"fmt"
	"math"

	"orcd/backend"
	"orcd/gguf"
	"orcd/tensor"
)

// Llama (HF modeling_llama; Llama 3.x): token embedding, pre-norm blocks of
// RMSNorm → attention (Q, K, V, O without biases, GQA, RoPE with Llama 3's
// frequency scaling) and RMSNorm → SwiGLU MLP (gate, up, down), a final
// RMSNorm and the output projection, tied to the embedding when the file
// has no output.weight. Other architectures of this family (qwen2.go)
// reuse the adapter with their own settings (decoderFamily).

// decoderFamily is what distinguishes the members of the Llama family.
type decoderFamily struct {
	arch string
	// rope is the pairing of the GGUF layout: llama.cpp's converter
	// permutes Llama's Q and K rows to pair adjacent elements, and leaves
	// Qwen2's in HF's rotate_half order.
	rope backend.RoPEMode
	// qkvBias: Q, K and V have biases (Qwen2).
	qkvBias bool
}

var llamaFamily = decoderFamily{arch: "llama", rope: backend.RoPENormal}

func init() {
	Register(Arch{
		Name:         "llama",
		HFModelTypes: []string{"llama"},
		Chat:         ChatTemplate,
		Load:         llamaFamily.load,
		Layout:       llamaFamily.layoutOf,
		FromHF:       llamaFamily.fromHF,
		Presets: map[string]Preset{
			"tiny-llama": llamaFamily.preset(decoderParams{layers: 2, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ff: 128,
				ctx: 4096, ropeBase: 500000}, 0),
			"llama-3.2-1b": llamaFamily.preset(decoderParams{layers: 16, hidden: 2048, heads: 32, kvHeads: 8, headDim: 64,
				ff: 8192, ctx: 131072, ropeBase: 500000}, 128256),
		},
	})
}

// decoderParams are the hyperparameters of a Llama-family file.
type decoderParams struct {
	layers, hidden, ff, heads, kvHeads, headDim, ctx, vocab int
	eps                                                     float32
	ropeBase                                                float64
}

func (fam decoderFamily) readParams(f *gguf.File, arch string) (decoderParams, error) {
	m := metadata{f: f, prefix: arch + "."}
	var p decoderParams
	const maxDim = 1 << 20
	var err error
	for _, k := range []struct {
		dst *int
		key string
		max int
	}{
		{&p.layers, "block_count", 4096}, {&p.hidden, "embedding_length", maxDim},
		{&p.ff, "feed_forward_length", 4 * maxDim}, {&p.heads, "attention.head_count", maxDim},
		{&p.ctx, "context_length", 1 << 24},
	} {
		if *k.dst, err = m.count(k.key, k.max); err != nil {
			return p, err
		}
	}
	if p.kvHeads, err = m.optionalCount("attention.head_count_kv", p.heads, maxDim); err != nil {
		return p, err
	}
	if p.headDim, err = m.optionalCount("attention.key_length", p.hidden/p.heads, maxDim); err != nil {
		return p, err
	}
	valueLen, err := m.optionalCount("attention.value_length", p.headDim, maxDim)
	if err != nil {
		return p, err
	}
	ropeDim, err := m.optionalCount("rope.dimension_count", p.headDim, maxDim)
	if err != nil {
		return p, err
	}
	switch {
	case valueLen != p.headDim:
		return p, fmt.Errorf("model: %s: %s: attention.value_length %d != attention.key_length %d (unsupported)", f.Path, arch, valueLen, p.headDim)
	case ropeDim != p.headDim:
		return p, fmt.Errorf("model: %s: %s: rope.dimension_count %d != head dim %d (partial rotation is unsupported)", f.Path, arch, ropeDim, p.headDim)
	case p.heads%p.kvHeads != 0:
		return p, fmt.Errorf("model: %s: %s: attention.head_count %d is not a multiple of attention.head_count_kv %d", f.Path, arch, p.heads, p.kvHeads)
	case p.headDim%2 != 0:
		return p, fmt.Errorf("model: %s: %s: head dim %d is odd; RoPE needs pairs", f.Path, arch, p.headDim)
	}
	if p.eps, err = m.positive("attention.layer_norm_rms_epsilon"); err != nil {
		return p, err
	}
	base, err := m.optionalPositive("rope.freq_base", 10000)
	if err != nil {
		return p, err
	}
	p.ropeBase = float64(base)
	if key := m.prefix + "rope.scaling.type"; f.Has(key) {
		if typ, _ := f.GetString(key); typ != "none" && typ != "" {
			return p, fmt.Errorf("model: %s: key %q: unsupported rope scaling %q for %s (Llama 3's scaling comes as rope_freqs.weight)", f.Path, key, typ, arch)
		}
	}
	if p.vocab, err = readVocab(f, arch, p.hidden); err != nil {
		return p, err
	}
	return p, nil
}

// layout is full attention in every layer.
func (p decoderParams) layout() KVLayout {
	return KVLayout{Windows: make([]int, p.layers), Cols: p.kvHeads * p.headDim}
}

// layoutOf reads only the keys the layout needs (memory estimates read
// metadata before the tensors are checked).
func (fam decoderFamily) layoutOf(f *gguf.File, arch string) (KVLayout, error) {
	m := metadata{f: f, prefix: arch + "."}
	var p decoderParams
	var err error
	if p.layers, err = m.count("block_count", 4096); err != nil {
		return KVLayout{}, err
	}
	if p.hidden, err = m.count("embedding_length", 1<<20); err != nil {
		return KVLayout{}, err
	}
	if p.heads, err = m.count("attention.head_count", 1<<20); err != nil {
		return KVLayout{}, err
	}
	if p.kvHeads, err = m.optionalCount("attention.head_count_kv", p.heads, 1<<20); err != nil {
		return KVLayout{}, err
	}
	p.headDim, err = m.optionalCount("attention.key_length", p.hidden/p.heads, 1<<20)
	return p.layout(), err
}

// write sets the metadata keys of p as llama.cpp writes them.
func (fam decoderFamily) write(w *gguf.Writer, p decoderParams) {
	a := fam.arch + "."
	for _, k := range []struct {
		key string
		v   int
	}{
		{"block_count", p.layers}, {"context_length", p.ctx}, {"embedding_length", p.hidden},
		{"feed_forward_length", p.ff}, {"attention.head_count", p.heads}, {"attention.head_count_kv", p.kvHeads},
		{"attention.key_length", p.headDim}, {"attention.value_length", p.headDim}, {"rope.dimension_count", p.headDim},
	} {
		w.SetUint32(a+k.key, uint32(k.v))
	}
	w.SetFloat32(a+"rope.freq_base", float32(p.ropeBase))
	w.SetFloat32(a+"attention.layer_norm_rms_epsilon", p.eps)
}

// preset is a synthetic model of the family with the GPT-2 tokenizer; a
// vocab above the tokenizer's pads the embedding (0 keeps the tokenizer's
// size). Weights have std 1/sqrt(fan-in); the embedding is tied.
func (fam decoderFamily) preset(p decoderParams, vocab int) Preset {
	p.eps = 1e-5
	return Preset{Vocab: "gpt2", Synth: func(w *gguf.Writer, tokens int, ty SynthTypes) []SynthTensor {
		fam.write(w, p)
		h, q, kv, ff := int64(p.hidden), int64(p.heads*p.headDim), int64(p.kvHeads*p.headDim), int64(p.ff)
		v := int64(max(vocab, tokens))
		var ts synthList
		ts.add("token_embd.weight", ty.Matrix, 1, 0, h, v)
		for l := range p.layers {
			b := fmt.Sprintf("blk.%d.", l)
			ts.norm(b+"attn_norm", h, false)
			for _, m := range []struct {
				name    string
				in, out int64
			}{{"attn_q", h, q}, {"attn_k", h, kv}, {"attn_v", h, kv}} {
				ts.add(b+m.name+".weight", ty.Matrix, invSqrt(m.in), 0, m.in, m.out)
				if fam.qkvBias {
					ts.add(b+m.name+".bias", tensor.F32, 0.02, 0, m.out)
				}
			}
			ts.add(b+"attn_output.weight", ty.Matrix, invSqrt(q), 0, q, h)
			ts.norm(b+"ffn_norm", h, false)
			ts.add(b+"ffn_gate.weight", ty.Matrix, invSqrt(h), 0, h, ff)
			ts.add(b+"ffn_up.weight", ty.Matrix, invSqrt(h), 0, h, ff)
			ts.add(b+"ffn_down.weight", ty.Matrix, invSqrt(ff), 0, ff, h)
		}
		ts.norm("output_norm", h, false)
		return ts
	}}
}

// fromHF maps an HF LlamaForCausalLM (or Qwen2ForCausalLM) checkpoint.
// Llama's Q and K rows are permuted as llama.cpp's converter does, and its
// llama3 rope scaling becomes the rope_freqs.weight tensor of per-pair
// frequency divisors, also as the converter writes it.
func (fam decoderFamily) fromHF(c *HFCheckpoint) error {
	p := decoderParams{
		layers: c.Int("num_hidden_layers", -1), hidden: c.Int("hidden_size", -1), ff: c.Int("intermediate_size", -1),
		heads: c.Int("num_attention_heads", -1), ctx: c.Int("max_position_embeddings", -1),
		eps: float32(c.Float("rms_norm_eps", math.NaN())),
	}
	if c.Err() != nil {
		return c.Err()
	}
	p.kvHeads = c.Int("num_key_value_heads", p.heads)
	p.headDim = c.Int("head_dim", p.hidden/p.heads)
	if c.Bool("use_sliding_window", false) {
		return fmt.Errorf("model: %s: %s with use_sliding_window is not supported", c.Dir, fam.arch)
	}
	if c.Bool("mlp_bias", false) {
		return fmt.Errorf("model: %s: %s with mlp_bias is not supported", c.Dir, fam.arch)
	}
	theta, kind, rope := c.RopeParameters()
	p.ropeBase = theta
	var factors []float32
	switch kind {
	case "", "default":
	case "llama3":
		factors = llama3RopeFactors(p.headDim, theta, rope)
	default:
		return fmt.Errorf("model: %s: %s rope_type %q is not supported (only llama3)", c.Dir, fam.arch, kind)
	}
	if c.Err() != nil {
		return c.Err()
	}
	fam.write(c.W, p)
	c.Tensor("token_embd.weight", "model.embed_tokens.weight")
	bias := fam.qkvBias || c.Bool("attention_bias", false)
	for l := range p.layers {
		b, hp := fmt.Sprintf("blk.%d.", l), fmt.Sprintf("model.layers.%d.self_attn.", l)
		c.Tensor(b+"attn_norm.weight", fmt.Sprintf("model.layers.%d.input_layernorm.weight", l))
		for _, m := range []struct {
			name, hf string
			heads    int
		}{{"attn_q", "q_proj", p.heads}, {"attn_k", "k_proj", p.kvHeads}, {"attn_v", "v_proj", 0}} {
			if fam.rope == backend.RoPENormal && m.heads > 0 {
				perm := normalRoPERows(m.heads, p.headDim)
				c.Rows(b+m.name+".weight", hp+m.hf+".weight", perm)
				if bias {
					c.Rows(b+m.name+".bias", hp+m.hf+".bias", perm)
				}
				continue
			}
			c.Tensor(b+m.name+".weight", hp+m.hf+".weight")
			if bias {
				c.Tensor(b+m.name+".bias", hp+m.hf+".bias")
			}
		}
		c.Tensor(b+"attn_output.weight", hp+"o_proj.weight")
		if c.HasTensor(hp + "o_proj.bias") {
			c.Tensor(b+"attn_output.bias", hp+"o_proj.bias")
		}
		mp := fmt.Sprintf("model.layers.%d.", l)
		c.Tensor(b+"ffn_norm.weight", mp+"post_attention_layernorm.weight")
		for _, m := range [][2]string{{"ffn_gate", "gate_proj"}, {"ffn_up", "up_proj"}, {"ffn_down", "down_proj"}} {
			c.Tensor(b+m[0]+".weight", mp+"mlp."+m[1]+".weight")
		}
	}
	c.Tensor("output_norm.weight", "model.norm.weight")
	tied := c.Bool("tie_word_embeddings", false)
	switch {
	case !tied:
		c.Tensor("output.weight", "lm_head.weight")
	case c.HasTensor("lm_head.weight"):
		c.source("lm_head.weight", 2) // the tied copy some writers keep
	}
	if factors != nil {
		c.Vector("rope_freqs.weight", factors)
	}
	return c.Err()
}

// normalRoPERows is the row permutation of llama.cpp's converter for a Q or
// K projection of heads heads: within each head, HF's rotate_half order
// (first half, second half) becomes interleaved pairs, so that row
// h·d + 2i + s is HF's row h·d + s·d/2 + i.
func normalRoPERows(heads, d int) []int {
	rows := make([]int, 0, heads*d)
	for h := range heads {
		for r := range d {
			i, s := r/2, r%2
			rows = append(rows, h*d+s*d/2+i)
		}
	}
	return rows
}

// llama3RopeFactors are the divisors of each pair's frequency for HF's
// "llama3" rope scaling (_compute_llama3_parameters), as llama.cpp's
// converter computes them: wavelengths shorter than the original context
// over high_freq_factor keep their frequency, those longer than it over
// low_freq_factor are divided by factor, and a smooth blend in between.
func llama3RopeFactors(headDim int, base float64, rope map[string]float64) []float32 {
	factor := cmpOr(rope["factor"], 8)
	low, high := cmpOr(rope["low_freq_factor"], 1), cmpOr(rope["high_freq_factor"], 4)
	orig := cmpOr(rope["original_max_position_embeddings"], 8192)
	lowWavelen, highWavelen := orig/low, orig/high
	out := make([]float32, headDim/2)
	for i := range out {
		freq := 1 / math.Pow(base, float64(2*i)/float64(headDim))
		wavelen := 2 * math.Pi / freq
		switch {
		case wavelen < highWavelen:
			out[i] = 1
		case wavelen > lowWavelen:
			out[i] = float32(factor)
		default:
			smooth := (orig/wavelen - low) / (high - low)
			out[i] = float32(1 / ((1-smooth)/factor + smooth))
		}
	}
	return out
}

// decoderBlock is one transformer block's weights.
type decoderBlock struct {
	attn              ropeAttention
	ffnNorm           backend.Tensor
	gateW, upW, downW backend.Tensor
}

// decoder is a loaded member of the Llama family.
type decoder struct {
	core[*decoderBuffers]
	fam          decoderFamily
	p            decoderParams
	attn         backend.AttentionParams
	attnSettings ropeSettings
	tokEmbd      backend.Tensor
	outNorm      backend.Tensor
	output       backend.Tensor // output.weight or the tied token_embd
	blocks       []decoderBlock
}

func (fam decoderFamily) load(f *gguf.File, arch string, be backend.Backend, opts LoadOptions) (Model, error) {
	p, err := fam.readParams(f, arch)
	if err != nil {
		return nil, err
	}
	m := &decoder{fam: fam, p: p}
	m.be = be
	m.cfg = Config{Arch: fam.arch, Chat: ChatTemplate, VocabSize: p.vocab, ContextLength: p.ctx, Layers: p.layers, Hidden: p.hidden, MaxBatch: opts.MaxBatch}
	m.cfg.Name, _ = f.GetString("general.name")
	m.layout = p.layout()
	m.attn = backend.AttentionParams{Heads: p.heads, KVHeads: p.kvHeads, HeadDim: p.headDim, Scale: float32(1 / math.Sqrt(float64(p.headDim)))}
	m.attnSettings = ropeSettings{eps: p.eps, rope: backend.RoPEParams{HeadDim: p.headDim, Mode: fam.rope, MScale: 1}}

	// Llama 3's frequency divisors, read on the host: the frequencies are
	// computed once here.
	factors := make([]float32, p.headDim/2)
	for i := range factors {
		factors[i] = 1
	}
	if ti, ok := f.Tensor("rope_freqs.weight"); ok {
		data := f.TensorData(ti)
		if ti.Type != tensor.F32 || len(ti.Dims) != 1 || ti.Dims[0] != int64(len(factors)) || len(data) != 4*len(factors) {
			return nil, fmt.Errorf("model: %s: %s: tensor rope_freqs.weight is %s %v, want F32 [%d]", f.Path, arch, ti.Type, ti.Dims, len(factors))
		}
		for i := range factors {
			factors[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
			if !(factors[i] > 0) {
				return nil, fmt.Errorf("model: %s: %s: rope_freqs.weight[%d] = %g is not positive", f.Path, arch, i, factors[i])
			}
		}
	}

	w := newWeights(f, be, arch, opts.Progress)
	h, q, kv, ff := p.hidden, p.heads*p.headDim, p.kvHeads*p.headDim, p.ff
	m.tokEmbd = w.load(false, []int{h, p.vocab}, "token_embd.weight")
	for l := 0; l < p.layers && w.err == nil; l++ {
		var b decoderBlock
		ll := layerLoader{w: w, layer: l}
		b.attn = loadAttention(ll, h, q, kv, fam.qkvBias || ll.has("attn_q.bias"))
		b.ffnNorm = ll.get(true, []int{h}, "ffn_norm.weight")
		b.gateW = ll.get(false, []int{h, ff}, "ffn_gate.weight")
		b.upW = ll.get(false, []int{h, ff}, "ffn_up.weight")
		b.downW = ll.get(false, []int{ff, h}, "ffn_down.weight")
		m.blocks = append(m.blocks, b)
	}
	m.outNorm = w.load(true, []int{h}, "output_norm.weight")
	m.output = m.tokEmbd
	if w.has("output.weight") {
		m.output = w.load(false, []int{h, p.vocab}, "output.weight")
	}
	if m.weights, err = w.finish(); err != nil {
		return nil, err
	}
	inv, _ := ropeFrequencies(p.headDim, p.ropeBase, yarnParams{})
	for i := range inv {
		inv[i] = float32(float64(inv[i]) / float64(factors[i]))
	}
	if m.attnSettings.invFreq, err = m.upload("the RoPE frequencies", inv); err != nil {
		return nil, err
	}
	return m, nil
}

// decoderBuffers are the activations of a step.
type decoderBuffers struct {
	activations
	q, k, v, att backend.Tensor
	proj         backend.Tensor // attention output and MLP output, n×hidden
	gate, up     backend.Tensor // n×ff
}

func (m *decoder) newBuffers() (*decoderBuffers, error) {
	n, h := m.cfg.MaxBatch, m.p.hidden
	q, kv := m.p.heads*m.p.headDim, m.p.kvHeads*m.p.headDim
	b := &decoderBuffers{activations: newActivations(m.be, n, 1, h, true)}
	s := &b.set
	// h and the attention output carry quantized copies where the backend
	// has them (each is read by the products after it).
	b.q, b.k, b.v, b.att, b.proj = s.f32(n, q), s.f32(n, kv), s.f32(n, kv), s.f32q(n, q), s.f32(n, h)
	b.gate, b.up = s.f32(n, m.p.ff), s.f32(n, m.p.ff)
	if err := b.ready(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *decoderBuffers) view(be backend.Backend, n int) *decoderBuffers {
	v := *b
	v.activations = b.activations.view(be, n)
	for _, t := range []*backend.Tensor{&v.q, &v.k, &v.v, &v.att, &v.proj, &v.gate, &v.up} {
		*t = be.View(*t, n)
	}
	return &v
}

// Step runs a batch of sequences through the model.
func (m *decoder) Step(kv KV, b *Batch) (Logits, error) { return m.step(kv, b, m.newBuffers, m.ops) }

// Forward runs tokens through the model at the cache's position.
func (m *decoder) Forward(c Cache, tokens []int32, all bool) ([]float32, error) {
	return m.forward(c, tokens, all, m.newBuffers, m.ops)
}

// plainSwiGLU is SiLU(gate)·up.
var plainSwiGLU = backend.SwiGLUParams{Alpha: 1}

// ops queues one step's forward pass.
func (m *decoder) ops(v *stepView[*decoderBuffers], b *decoderBuffers) {
	be := m.be
	be.Embed(b.x, m.tokEmbd, b.ids)
	attn := v.attention(m.attn, 0)
	for l := range m.blocks {
		blk := &m.blocks[l]
		// Attention (the previous block's MLP output joins the residual
		// stream in its norm).
		blk.attn.queue(be, m.attnSettings, l, &b.activations, b.q, b.k, b.v, b.att, b.proj, v.cache(l), attn)
		// MLP: residual add and RMSNorm → SiLU(gate)·up → down.
		be.AddRMSNorm(b.h, b.x, b.proj, blk.ffnNorm, m.p.eps)
		be.MatMul(b.gate, b.h, blk.gateW, nil)
		be.MatMul(b.up, b.h, blk.upW, nil)
		be.SwiGLU(b.gate, b.gate, b.up, plainSwiGLU)
		be.MatMul(b.proj, b.gate, blk.downW, nil)
	}
	be.Add(b.x, b.x, b.proj)
	v.rmsLogits(be, b.x, m.outNorm, m.output, m.p.eps)
}
