package model

import (
	"fmt"
	"math"

	"orcd/backend"
	"orcd/gguf"
	"orcd/tensor"
)

// GPT-2 (HF modeling_gpt2): learned token and position embeddings, pre-norm
// blocks of LayerNorm → multi-head attention (fused Q|K|V projection) and
// LayerNorm → GELU(tanh) MLP, a final LayerNorm and the output projection,
// tied to the token embedding unless the file has output.weight.

// gpt2Params are the hyperparameters of a gpt2 file.
type gpt2Params struct {
	layers, hidden, ff, heads, headDim, ctx, vocab int
	eps                                            float32
}

func init() {
	Register(Arch{
		Name:         "gpt2",
		HFModelTypes: []string{"gpt2"},
		Chat:         ChatPlain,
		Load: func(f *gguf.File, _ string, be backend.Backend, opts LoadOptions) (Model, error) {
			return loadGPT2(f, be, opts)
		},
		Layout: func(f *gguf.File, _ string) (KVLayout, error) {
			m := metadata{f: f, prefix: "gpt2."}
			var p gpt2Params
			var err error
			if p.layers, err = m.count("block_count", 4096); err != nil {
				return KVLayout{}, err
			}
			p.hidden, err = m.count("embedding_length", 1<<20)
			return p.layout(), err
		},
		FromHF: gpt2FromHF,
		Presets: map[string]Preset{
			"tiny-gpt2": gpt2Preset(gpt2Params{layers: 2, hidden: 64, heads: 4, headDim: 16, ff: 256, ctx: 1024}),
			"gpt2-124m": gpt2Preset(gpt2Params{layers: 12, hidden: 768, heads: 12, headDim: 64, ff: 3072, ctx: 1024}),
			"gpt2-1.5b": gpt2Preset(gpt2Params{layers: 48, hidden: 1600, heads: 25, headDim: 64, ff: 6400, ctx: 1024}),
		},
	})
}

func readGPT2Params(f *gguf.File) (gpt2Params, error) {
	m := metadata{f: f, prefix: "gpt2."}
	var p gpt2Params
	var err error
	const maxDim = 1 << 20
	if p.layers, err = m.count("block_count", 4096); err != nil {
		return p, err
	}
	if p.hidden, err = m.count("embedding_length", maxDim); err != nil {
		return p, err
	}
	if p.ff, err = m.count("feed_forward_length", 4*maxDim); err != nil {
		return p, err
	}
	if p.heads, err = m.count("attention.head_count", maxDim); err != nil {
		return p, err
	}
	if p.ctx, err = m.count("context_length", 1<<24); err != nil {
		return p, err
	}
	if p.eps, err = m.positive("attention.layer_norm_epsilon"); err != nil {
		return p, err
	}
	// GPT-2 files rarely carry key_length; its fused QKV projection makes
	// heads × head_dim equal the hidden size either way.
	if p.headDim, err = m.optionalCount("attention.key_length", p.hidden/p.heads, maxDim); err != nil {
		return p, err
	}
	if p.heads*p.headDim != p.hidden {
		return p, fmt.Errorf("model: %s: gpt2: %d heads × head_dim %d != embedding_length %d",
			f.Path, p.heads, p.headDim, p.hidden)
	}
	if p.vocab, err = readVocab(f, "gpt2", p.hidden); err != nil {
		return p, err
	}
	return p, nil
}

// layout is every layer with full attention over hidden-wide K and V rows.
func (p gpt2Params) layout() KVLayout {
	return KVLayout{Windows: make([]int, p.layers), Cols: p.hidden}
}

// write sets the metadata keys of p as llama.cpp writes them.
func (p gpt2Params) write(w *gguf.Writer) {
	w.SetUint32("gpt2.block_count", uint32(p.layers))
	w.SetUint32("gpt2.context_length", uint32(p.ctx))
	w.SetUint32("gpt2.embedding_length", uint32(p.hidden))
	w.SetUint32("gpt2.feed_forward_length", uint32(p.ff))
	w.SetUint32("gpt2.attention.head_count", uint32(p.heads))
	w.SetFloat32("gpt2.attention.layer_norm_epsilon", p.eps)
}

// gpt2Preset is a synthetic GPT-2 with the GPT-2 tokenizer, initialized as
// GPT-2 was: std 0.02, residual projections scaled by 1/sqrt(2·layers).
func gpt2Preset(p gpt2Params) Preset {
	p.eps = 1e-5
	return Preset{Vocab: "gpt2", Synth: func(w *gguf.Writer, vocab int, ty SynthTypes) []SynthTensor {
		p.write(w)
		h, ff := int64(p.hidden), int64(p.ff)
		resid := float32(0.02 / math.Sqrt(2*float64(p.layers)))
		var ts synthList
		ts.add("token_embd.weight", ty.Matrix, 0.02, 0, h, int64(vocab))
		ts.add("position_embd.weight", tensor.F32, 0.01, 0, h, int64(p.ctx))
		for l := range p.layers {
			b := fmt.Sprintf("blk.%d.", l)
			ts.norm(b+"attn_norm", h, true)
			ts.add(b+"attn_qkv.weight", ty.Matrix, 0.02, 0, h, 3*h)
			ts.add(b+"attn_qkv.bias", tensor.F32, 0, 0, 3*h)
			ts.add(b+"attn_output.weight", ty.Matrix, resid, 0, h, h)
			ts.add(b+"attn_output.bias", tensor.F32, 0, 0, h)
			ts.norm(b+"ffn_norm", h, true)
			ts.add(b+"ffn_up.weight", ty.Matrix, 0.02, 0, h, ff)
			ts.add(b+"ffn_up.bias", tensor.F32, 0, 0, ff)
			ts.add(b+"ffn_down.weight", ty.Matrix, resid, 0, ff, h)
			ts.add(b+"ffn_down.bias", tensor.F32, 0, 0, h)
		}
		ts.norm("output_norm", h, true)
		return ts
	}}
}

// gpt2FromHF maps an HF GPT2LMHeadModel checkpoint (Conv1D weights stored
// [in, out], optionally under "transformer.").
func gpt2FromHF(c *HFCheckpoint) error {
	if act := ""; c.Has("activation_function") {
		if c.get("activation_function", &act); act != "gelu_new" {
			return fmt.Errorf("model: %s: gpt2 activation_function %q is not supported (only gelu_new)", c.Dir, act)
		}
	}
	p := gpt2Params{
		layers: c.Int("n_layer", -1), hidden: c.Int("n_embd", -1), heads: c.Int("n_head", -1),
		ctx: c.Int("n_positions", c.Int("n_ctx", 1024)), eps: float32(c.Float("layer_norm_epsilon", 1e-5)),
	}
	p.ff = c.Int("n_inner", 4*p.hidden)
	if c.Err() != nil {
		return c.Err()
	}
	p.write(c.W)
	pre := ""
	if c.HasTensor("transformer.wte.weight") {
		pre = "transformer."
	}
	c.Tensor("token_embd.weight", pre+"wte.weight")
	c.Tensor("position_embd.weight", pre+"wpe.weight")
	for l := range p.layers {
		b, hp := fmt.Sprintf("blk.%d.", l), fmt.Sprintf("%sh.%d.", pre, l)
		for _, m := range [][2]string{{"attn_norm", "ln_1"}, {"ffn_norm", "ln_2"}} {
			c.Tensor(b+m[0]+".weight", hp+m[1]+".weight")
			c.Tensor(b+m[0]+".bias", hp+m[1]+".bias")
		}
		for _, m := range [][2]string{{"attn_qkv", "attn.c_attn"}, {"attn_output", "attn.c_proj"}, {"ffn_up", "mlp.c_fc"}, {"ffn_down", "mlp.c_proj"}} {
			c.Transposed(b+m[0]+".weight", hp+m[1]+".weight")
			c.Tensor(b+m[0]+".bias", hp+m[1]+".bias")
		}
	}
	c.Tensor("output_norm.weight", pre+"ln_f.weight")
	c.Tensor("output_norm.bias", pre+"ln_f.bias")
	if !c.Bool("tie_word_embeddings", true) {
		c.Tensor("output.weight", "lm_head.weight")
	} else if c.HasTensor("lm_head.weight") {
		c.source("lm_head.weight", 2) // the tied copy some writers keep
	}
	return c.Err()
}

// gpt2Block is one transformer block's weights.
type gpt2Block struct {
	attnNormW, attnNormB backend.Tensor // ln_1
	qkvW, qkvB           backend.Tensor // attn.c_attn: hidden → 3·hidden
	attnOutW, attnOutB   backend.Tensor // attn.c_proj
	ffnNormW, ffnNormB   backend.Tensor // ln_2
	upW, upB             backend.Tensor // mlp.c_fc
	downW, downB         backend.Tensor // mlp.c_proj
}

// gpt2 is a loaded GPT-2.
type gpt2 struct {
	core[*gpt2Buffers]
	p    gpt2Params
	attn backend.AttentionParams

	tokEmbd, posEmbd   backend.Tensor
	blocks             []gpt2Block
	outNormW, outNormB backend.Tensor
	output             backend.Tensor // output.weight or the tied token_embd
}

func loadGPT2(f *gguf.File, be backend.Backend, opts LoadOptions) (*gpt2, error) {
	p, err := readGPT2Params(f)
	if err != nil {
		return nil, err
	}
	m := &gpt2{p: p}
	m.be = be
	m.cfg = Config{Arch: "gpt2", Chat: ChatPlain, VocabSize: p.vocab, ContextLength: p.ctx, Layers: p.layers, Hidden: p.hidden, MaxBatch: opts.MaxBatch}
	m.layout = p.layout()
	m.cfg.Name, _ = f.GetString("general.name")
	m.attn = backend.AttentionParams{
		Heads: p.heads, KVHeads: p.heads, HeadDim: p.headDim,
		Scale: float32(1 / math.Sqrt(float64(p.headDim))),
	}

	w := newWeights(f, be, "gpt2", opts.Progress)
	h, ff := p.hidden, p.ff
	m.tokEmbd = w.load(false, []int{h, p.vocab}, "token_embd.weight")
	m.posEmbd = w.load(false, []int{h, p.ctx}, "position_embd.weight")
	for l := 0; l < p.layers && w.err == nil; l++ {
		b := gpt2Block{}
		ll := layerLoader{w: w, layer: l}
		b.attnNormW = ll.get(true, []int{h}, "attn_norm.weight")
		b.attnNormB = ll.get(true, []int{h}, "attn_norm.bias")
		b.qkvW = ll.get(false, []int{h, 3 * h}, "attn_qkv.weight")
		b.qkvB = ll.get(true, []int{3 * h}, "attn_qkv.bias")
		b.attnOutW = ll.get(false, []int{h, h}, "attn_output.weight")
		b.attnOutB = ll.get(true, []int{h}, "attn_output.bias")
		b.ffnNormW = ll.get(true, []int{h}, "ffn_norm.weight")
		b.ffnNormB = ll.get(true, []int{h}, "ffn_norm.bias")
		b.upW = ll.get(false, []int{h, ff}, "ffn_up.weight")
		b.upB = ll.get(true, []int{ff}, "ffn_up.bias")
		b.downW = ll.get(false, []int{ff, h}, "ffn_down.weight")
		b.downB = ll.get(true, []int{h}, "ffn_down.bias")
		m.blocks = append(m.blocks, b)
	}
	m.outNormW = w.load(true, []int{h}, "output_norm.weight")
	m.outNormB = w.load(true, []int{h}, "output_norm.bias")
	m.output = m.tokEmbd
	if w.has("output.weight") {
		m.output = w.load(false, []int{h, p.vocab}, "output.weight")
	}
	if m.weights, err = w.finish(); err != nil {
		return nil, err
	}
	return m, nil
}

// gpt2Buffers are the activations of a step.
type gpt2Buffers struct {
	activations
	qkv, q, k, v, att backend.Tensor // fused projection, its split, attention output
	proj              backend.Tensor // c_proj outputs, n×hidden
	ff                backend.Tensor // MLP hidden, n×ff
}

func (m *gpt2) newBuffers() (*gpt2Buffers, error) {
	n, h := m.cfg.MaxBatch, m.p.hidden
	b := &gpt2Buffers{activations: newActivations(m.be, n, 1, h, false)}
	s := &b.set
	b.qkv = s.f32(n, 3*h)
	// The attention output, read by c_proj, carries a quantized copy where
	// the backend has them.
	b.q, b.k, b.v, b.att, b.proj = s.f32(n, h), s.f32(n, h), s.f32(n, h), s.f32q(n, h), s.f32(n, h)
	b.ff = s.f32(n, m.p.ff)
	if err := b.ready(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *gpt2Buffers) view(be backend.Backend, n int) *gpt2Buffers {
	v := *b
	v.activations = b.activations.view(be, n)
	for _, t := range []*backend.Tensor{&v.qkv, &v.q, &v.k, &v.v, &v.att, &v.proj, &v.ff} {
		*t = be.View(*t, n)
	}
	return &v
}

// Step runs a batch of sequences through the model.
func (m *gpt2) Step(kv KV, b *Batch) (Logits, error) { return m.step(kv, b, m.newBuffers, m.ops) }

// Forward runs tokens through the model at the cache's position.
func (m *gpt2) Forward(c Cache, tokens []int32, all bool) ([]float32, error) {
	return m.forward(c, tokens, all, m.newBuffers, m.ops)
}

// ops queues one step's forward pass.
func (m *gpt2) ops(v *stepView[*gpt2Buffers], b *gpt2Buffers) {
	be := m.be
	// Embeddings: wte(ids) + wpe(positions).
	be.Embed(b.x, m.tokEmbd, b.ids)
	be.Embed(b.h, m.posEmbd, b.pos)
	be.Add(b.x, b.x, b.h)
	attn := v.attention(m.attn, 0)
	for l := range m.blocks {
		blk := &m.blocks[l]
		c := v.cache(l)
		// Attention: ln_1 → c_attn → split Q|K|V → causal MHA → c_proj, residual.
		be.LayerNorm(b.h, b.x, blk.attnNormW, blk.attnNormB, m.p.eps)
		be.MatMul(b.qkv, b.h, blk.qkvW, blk.qkvB)
		be.CopyCols(b.q, b.qkv, 0)
		be.CopyCols(b.k, b.qkv, m.p.hidden)
		be.CopyCols(b.v, b.qkv, 2*m.p.hidden)
		be.StoreKV(c.k, c.v, b.k, b.v, c.slots)
		be.Attention(b.att, b.q, c.k, c.v, b.pos, b.seq, c.table, nil, attn)
		be.MatMul(b.proj, b.att, blk.attnOutW, blk.attnOutB)
		be.Add(b.x, b.x, b.proj)
		// MLP: ln_2 → c_fc → GELU(tanh) → c_proj, residual.
		be.LayerNorm(b.h, b.x, blk.ffnNormW, blk.ffnNormB, m.p.eps)
		be.MatMul(b.ff, b.h, blk.upW, blk.upB)
		be.GELU(b.ff, b.ff)
		be.MatMul(b.proj, b.ff, blk.downW, blk.downB)
		be.Add(b.x, b.x, b.proj)
	}
	// ln_f and lm_head, for the rows whose logits are wanted.
	if v.last == nil {
		return
	}
	be.Embed(v.lastX, b.x, v.last)
	be.LayerNorm(v.lastX, v.lastX, m.outNormW, m.outNormB, m.p.eps)
	be.MatMul(v.logits, v.lastX, m.output, nil)
}
