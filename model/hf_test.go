package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"orcd/backend/cpu"
	"orcd/gguf"
	"orcd/tensor"
)

// These tests lay the HF conformance fixtures out as Hugging Face checkpoint
// directories (the inverse of each FromHF, written here independently: HF
// names, Conv1D transposes, MXFP4 _blocks/_scales with interleaved gate/up
// rows) and expect the directory, and the GGUF file convert writes from it,
// to give HF's reference logits, which the fixtures hold.

// stTensor is one tensor of a safetensors file being written.
type stTensor struct {
	dtype string
	shape []int64
	data  []byte
	// lastAxis: a fused tensor's halves interleave along the last axis
	// (gate_up_proj [E, in, 2ff]) rather than along axis 1.
	lastAxis bool
}

// writeSafetensors writes tensors as a safetensors file, in name order.
func writeSafetensors(t *testing.T, path string, ts map[string]stTensor) {
	t.Helper()
	names := make([]string, 0, len(ts))
	for n := range ts {
		names = append(names, n)
	}
	sort.Strings(names)
	hdr := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var data []byte
	for _, n := range names {
		s := ts[n]
		hdr[n] = map[string]any{"dtype": s.dtype, "shape": s.shape, "data_offsets": []int{len(data), len(data) + len(s.data)}}
		data = append(data, s.data...)
	}
	h, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(append(out, h...), data...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// hfLayout turns a fixture's GGUF into HF tensors with mapping fn, which
// returns the tensors one GGUF tensor becomes (none to drop it).
type hfLayout func(name string, ti *gguf.TensorInfo, data []byte) map[string]stTensor

// plainTensor keeps a tensor's bytes under an HF name: ggml dims reversed
// are the row-major shape. Q8_0 becomes F32 with the values HF computed
// with.
func plainTensor(t *testing.T, name string, ti *gguf.TensorInfo, data []byte) map[string]stTensor {
	shape := make([]int64, len(ti.Dims))
	for i, d := range ti.Dims {
		shape[len(shape)-1-i] = d
	}
	switch ti.Type {
	case tensor.F32, tensor.F16, tensor.BF16:
		return map[string]stTensor{name: {dtype: ti.Type.String(), shape: shape, data: data}}
	}
	vals := make([]float32, ti.Elements())
	if err := tensor.Dequantize(ti.Type, data, vals); err != nil {
		t.Fatal(err)
	}
	raw, _ := tensor.Quantize(tensor.F32, vals)
	return map[string]stTensor{name: {dtype: "F32", shape: shape, data: raw}}
}

// writeHFDir writes fixture's tensors through layout and config into a
// fresh directory.
func writeHFDir(t *testing.T, fixture string, config map[string]any, layout hfLayout) string {
	t.Helper()
	f, err := gguf.Open(filepath.Join("testdata", fixture+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ts := map[string]stTensor{}
	for i := range f.Tensors {
		ti := &f.Tensors[i]
		// Tensors come in file order, gate before up in every block, so
		// mergeRows sees the gate half first.
		for n, s := range layout(ti.Name, ti, f.TensorData(ti)) {
			if prev, ok := ts[n]; ok { // the second half of a fused tensor
				s = mergeRows(t, n, prev, s)
			}
			ts[n] = s
		}
	}
	dir := t.TempDir()
	writeSafetensors(t, filepath.Join(dir, "model.safetensors"), ts)
	cfg, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// mergeRows merges the gate (first) and up (second) halves of a gate_up
// tensor [E, rows, …]: gate row i goes to 2i and up row i to 2i+1, along
// axis 1, or along the last axis when lastAxis is set.
func mergeRows(t *testing.T, name string, gate, up stTensor) stTensor {
	t.Helper()
	if !slices.Equal(gate.shape, up.shape) || gate.dtype != up.dtype {
		t.Fatalf("%s: halves differ: %v %v", name, gate.shape, up.shape)
	}
	units := gate.shape[0] * gate.shape[1] // interleaved units: rows
	shape := slices.Clone(gate.shape)
	if gate.lastAxis {
		units = 1
		for _, d := range gate.shape {
			units *= d
		}
		shape[len(shape)-1] *= 2
	} else {
		shape[1] *= 2
	}
	unit := int64(len(gate.data)) / units
	out := make([]byte, 0, 2*len(gate.data))
	for u := range units {
		out = append(out, gate.data[u*unit:(u+1)*unit]...)
		out = append(out, up.data[u*unit:(u+1)*unit]...)
	}
	return stTensor{dtype: gate.dtype, shape: shape, data: out}
}

// inOutExperts lays a float expert stack [E, out, in] (ggml [in, out, E])
// out as HF's GptOssExperts stores it: [E, in, out].
func inOutExperts(ti *gguf.TensorInfo, data []byte) stTensor {
	in, out, e := ti.Dims[0], ti.Dims[1], ti.Dims[2]
	es := int64(len(data)) / (in * out * e)
	tr := make([]byte, len(data))
	for x := range e {
		for o := range out {
			for i := range in {
				copy(tr[((x*in+i)*out+o)*es:][:es], data[((x*out+o)*in+i)*es:][:es])
			}
		}
	}
	return stTensor{dtype: ti.Type.String(), shape: []int64{e, in, out}, data: tr}
}

// hfMXFP4 splits ggml MXFP4 data of shape [E, rows, in] into HF's _blocks
// (element 2j in the low nibble of byte j, 2j+1 in the high one) and
// _scales.
func hfMXFP4(ti *gguf.TensorInfo, data []byte) (blocks, scales stTensor) {
	in, rows, e := ti.Dims[0], ti.Dims[1], ti.Dims[2]
	nblk := in / 32
	b := make([]byte, 0, e*rows*nblk*16)
	s := make([]byte, 0, e*rows*nblk)
	for k := 0; k < len(data); k += 17 {
		blk := data[k : k+17]
		s = append(s, blk[0])
		elem := func(i int) byte { // ggml: j low, j+16 high
			if i < 16 {
				return blk[1+i] & 15
			}
			return blk[1+i-16] >> 4
		}
		for j := range 16 {
			b = append(b, elem(2*j)|elem(2*j+1)<<4)
		}
	}
	return stTensor{dtype: "U8", shape: []int64{e, rows, nblk, 16}, data: b},
		stTensor{dtype: "U8", shape: []int64{e, rows, nblk}, data: s}
}

// gptossHFLayout is gpt-oss's published layout: MXFP4 experts as
// _blocks/_scales; float experts (dequantized checkpoints) [E, in, out] as
// transformers' GptOssExperts keeps them, or [E, out, in] with outIn.
func gptossHFLayout(t *testing.T, outIn ...bool) hfLayout {
	return func(name string, ti *gguf.TensorInfo, data []byte) map[string]stTensor {
		switch name {
		case "token_embd.weight":
			return plainTensor(t, "model.embed_tokens.weight", ti, data)
		case "output_norm.weight":
			return plainTensor(t, "model.norm.weight", ti, data)
		case "output.weight":
			return plainTensor(t, "lm_head.weight", ti, data)
		}
		var l int
		var rest string
		if _, err := fmt.Sscanf(name, "blk.%d.", &l); err != nil {
			t.Fatalf("unexpected tensor %s", name)
		}
		rest = name[strings.Index(name[4:], ".")+5:]
		hp := fmt.Sprintf("model.layers.%d.", l)
		simple := map[string]string{
			"attn_norm.weight": "input_layernorm.weight", "post_attention_norm.weight": "post_attention_layernorm.weight",
			"attn_sinks.weight": "self_attn.sinks", "ffn_gate_inp.weight": "mlp.router.weight", "ffn_gate_inp.bias": "mlp.router.bias",
			"attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
			"attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
			"attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
			"attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
			"ffn_down_exps.bias": "mlp.experts.down_proj_bias",
		}
		if hf, ok := simple[rest]; ok {
			return plainTensor(t, hp+hf, ti, data)
		}
		ex := hp + "mlp.experts."
		if ti.Type != tensor.MXFP4 && strings.HasSuffix(rest, "_exps.weight") { // a dequantized checkpoint
			if len(outIn) > 0 && outIn[0] {
				st := plainTensor(t, "", ti, data)[""]
				if rest == "ffn_down_exps.weight" {
					return map[string]stTensor{ex + "down_proj": st}
				}
				return map[string]stTensor{ex + "gate_up_proj": st}
			}
			st := inOutExperts(ti, data)
			if rest == "ffn_down_exps.weight" {
				return map[string]stTensor{ex + "down_proj": st}
			}
			st.lastAxis = true
			return map[string]stTensor{ex + "gate_up_proj": st}
		}
		switch rest {
		case "ffn_gate_exps.weight", "ffn_up_exps.weight":
			b, s := hfMXFP4(ti, data)
			return map[string]stTensor{ex + "gate_up_proj_blocks": b, ex + "gate_up_proj_scales": s}
		case "ffn_down_exps.weight":
			b, s := hfMXFP4(ti, data)
			return map[string]stTensor{ex + "down_proj_blocks": b, ex + "down_proj_scales": s}
		case "ffn_gate_exps.bias", "ffn_up_exps.bias":
			return plainTensor(t, ex+"gate_up_proj_bias", ti, data)
		}
		t.Fatalf("unexpected tensor %s", name)
		return nil
	}
}

func gptossHFConfig(t *testing.T, fixture string) map[string]any {
	f, err := gguf.Open(filepath.Join("testdata", fixture+".gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := readGPTOSSParams(f, "gpt-oss")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{
		"model_type": "gpt_oss", "num_hidden_layers": p.layers, "hidden_size": p.hidden, "intermediate_size": p.expertFF,
		"num_attention_heads": p.heads, "num_key_value_heads": p.kvHeads, "head_dim": p.headDim,
		"num_local_experts": p.experts, "num_experts_per_tok": p.expertsUsed, "sliding_window": p.windowLen,
		"max_position_embeddings": p.ctx, "rms_norm_eps": p.eps, "rope_theta": p.ropeBase, "tie_word_embeddings": false,
		"rope_scaling": map[string]any{"rope_type": "yarn", "factor": p.yarn.factor, "beta_fast": 32.0, "beta_slow": 1.0,
			"original_max_position_embeddings": p.yarn.originalCtx},
		"layer_types": []string{"sliding_attention", "full_attention", "sliding_attention", "full_attention"},
	}
}

// gpt2HFLayout is GPT2LMHeadModel's layout: Conv1D weights stored [in, out].
func gpt2HFLayout(t *testing.T) hfLayout {
	return func(name string, ti *gguf.TensorInfo, data []byte) map[string]stTensor {
		top := map[string]string{"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
			"output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias", "output.weight": "lm_head.weight"}
		if hf, ok := top[name]; ok {
			return plainTensor(t, hf, ti, data)
		}
		var l int
		fmt.Sscanf(name, "blk.%d.", &l)
		rest := name[strings.Index(name[4:], ".")+5:]
		hp := fmt.Sprintf("transformer.h.%d.", l)
		m := map[string]string{"attn_norm": "ln_1", "ffn_norm": "ln_2", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
			"ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
		base, suffix, _ := strings.Cut(rest, ".")
		out := plainTensor(t, hp+m[base]+"."+suffix, ti, data)
		if suffix == "weight" && len(ti.Dims) == 2 && base != "attn_norm" && base != "ffn_norm" {
			for n, s := range out { // [out, in] → Conv1D [in, out]
				es := len(s.data) / int(s.shape[0]*s.shape[1])
				rows, cols := int(s.shape[0]), int(s.shape[1])
				tr := make([]byte, len(s.data))
				for r := range rows {
					for c := range cols {
						copy(tr[(c*rows+r)*es:][:es], s.data[(r*cols+c)*es:][:es])
					}
				}
				out[n] = stTensor{dtype: s.dtype, shape: []int64{s.shape[1], s.shape[0]}, data: tr}
			}
		}
		return out
	}
}

// checkConverted writes f as a GGUF file (orcd convert) and expects the
// file to give the logits fromDir of f, bit for bit.
func checkConverted(t *testing.T, f *gguf.File, fromDir []float32, fx *hfFixture) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "converted.gguf")
	if err := WriteGGUF(out, f, ConvertOptions{}); err != nil {
		t.Fatal(err)
	}
	g, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	m, err := Load(g, cpu.New(), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !slices.Equal(checkAgainstHF(t, m, fx), fromDir) {
		t.Error("the converted GGUF's logits differ from the directory's")
	}
}

// checkAgainstHF runs the fixture's prompt through m and compares every
// position's logits with HF's.
func checkAgainstHF(t *testing.T, m Model, fx *hfFixture) []float32 {
	t.Helper()
	c, err := m.NewCache(len(fx.Prompt))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	logits, err := m.Forward(c, fx.Prompt, true)
	if err != nil {
		t.Fatal(err)
	}
	vocab := m.Config().VocabSize
	var worst float64
	for p, want := range fx.PromptLogits {
		worst = max(worst, relErr(logits[p*vocab:(p+1)*vocab], want))
	}
	if worst > conformanceTolerance {
		t.Errorf("max relative error %.3g > %g", worst, conformanceTolerance)
	}
	return slices.Clone(logits)
}

func TestHFDirectories(t *testing.T) {
	cases := []struct {
		fixture string
		config  map[string]any
		layout  hfLayout
	}{
		{"gptoss_mxfp4_q8", gptossHFConfig(t, "gptoss_mxfp4_q8"), gptossHFLayout(t)},
		{"gptoss_f16_bf16", gptossHFConfig(t, "gptoss_f16_bf16"), gptossHFLayout(t)},       // F16 experts, [E, in, out]
		{"gptoss_f16_bf16", gptossHFConfig(t, "gptoss_f16_bf16"), gptossHFLayout(t, true)}, // [E, out, in]
		{"gpt2_untied_mixed", map[string]any{"model_type": "gpt2", "n_layer": 3, "n_embd": 64, "n_head": 4, "n_inner": 256,
			"n_positions": 64, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tie_word_embeddings": false}, gpt2HFLayout(t)},
	}
	for _, c := range cases {
		t.Run(c.fixture, func(t *testing.T) {
			dir := writeHFDir(t, c.fixture, c.config, c.layout)
			fx := readFixture(t, c.fixture)
			f, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			m, err := Load(f, cpu.New(), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			checkConverted(t, f, checkAgainstHF(t, m, fx), fx)
		})
	}
}

// TestHFErrors checks that a broken checkpoint directory fails with an
// error naming what is wrong.
func TestHFErrors(t *testing.T) {
	base := gptossHFConfig(t, "gptoss_mxfp4_q8")
	for _, c := range []struct {
		name   string
		config func(map[string]any)
		drop   string
		want   string
	}{
		{"unknown model_type", func(c map[string]any) { c["model_type"] = "falcon" }, "", `unsupported model_type "falcon"`},
		{"missing key", func(c map[string]any) { delete(c, "head_dim") }, "", `no "head_dim"`},
		{"bad number", func(c map[string]any) { c["num_hidden_layers"] = 2.5 }, "", "not a positive integer"},
		{"missing tensor", nil, "model.layers.1.self_attn.sinks", "model.layers.1.self_attn.sinks is missing"},
		{"unsupported rope", func(c map[string]any) { c["rope_scaling"] = map[string]any{"rope_type": "linear", "factor": 2.0} }, "", `rope_type "linear"`},
		{"odd layer types", func(c map[string]any) { c["layer_types"] = []string{"full_attention"} }, "", "layer_types[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := map[string]any{}
			for k, v := range base {
				cfg[k] = v
			}
			if c.config != nil {
				c.config(cfg)
			}
			layout := gptossHFLayout(t)
			dir := writeHFDir(t, "gptoss_mxfp4_q8", cfg, func(name string, ti *gguf.TensorInfo, data []byte) map[string]stTensor {
				out := layout(name, ti, data)
				delete(out, c.drop)
				return out
			})
			f, err := Open(dir)
			if err == nil {
				f.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

// TestLlamaPermutation checks normalRoPERows against llama.cpp's converter's
// permute (reshape(n_head, 2, d/2, …).swapaxes(1, 2)) worked by hand for
// two heads of 4: new row (h, i, s) is old row (h, s, i).
func TestLlamaPermutation(t *testing.T) {
	if got, want := normalRoPERows(2, 4), []int{0, 2, 1, 3, 4, 6, 5, 7}; !slices.Equal(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
}

// TestLlama3RopeFactors checks the factors against HF's llama3 rule worked
// by hand: head dim 8, base 10000 (frequencies 1, 0.1, 0.01, 0.001; their
// wavelengths 6.28, 62.8, 628, 6283) with factor 8, low 1, high 4, original
// context 1000: wavelengths under 250 keep 1, over 1000 take 8, and 628.3
// blends with smooth = (1000/628.3 − 1)/3 = 0.19717, giving
// 1/((1−s)/8 + s) = 3.3611.
func TestLlama3RopeFactors(t *testing.T) {
	got := llama3RopeFactors(8, 10000, map[string]float64{"factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
		"original_max_position_embeddings": 1000})
	want := []float64{1, 1, 3.3611, 8}
	for i := range want {
		if math.Abs(float64(got[i])-want[i]) > 1e-3 {
			t.Errorf("factor %d = %g, want %g", i, got[i], want[i])
		}
	}
}

// TestConvertTypes checks the types convert gives each tensor under
// llama.cpp's rules: float matrices take the output type ("auto": BF16,
// as the checkpoint's first matrix is not F16; "f32" too, though F32 is the
// zero tensor.Type), vectors and the router stay F32, MXFP4 experts stay
// MXFP4, and general.file_type says so. "keep" changes no type and claims
// no file type.
func TestConvertTypes(t *testing.T) {
	dir := writeHFDir(t, "gptoss_mxfp4_q8", gptossHFConfig(t, "gptoss_mxfp4_q8"), gptossHFLayout(t))
	f, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		outType  string
		matrices tensor.Type
	}{{"auto", tensor.BF16}, {"q8_0", tensor.Q8_0}, {"f16", tensor.F16}, {"f32", tensor.F32}} {
		out := filepath.Join(t.TempDir(), c.outType+".gguf")
		if err := WriteGGUF(out, f, ConvertOptions{OutType: c.outType}); err != nil {
			t.Fatal(err)
		}
		g, err := gguf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]tensor.Type{
			"token_embd.weight": c.matrices, "blk.0.attn_q.weight": c.matrices, "output.weight": c.matrices,
			"blk.0.attn_norm.weight": tensor.F32, "blk.0.attn_q.bias": tensor.F32, "blk.0.ffn_gate_inp.weight": tensor.F32,
			"blk.0.attn_sinks.weight": tensor.F32, "blk.0.ffn_gate_exps.weight": tensor.MXFP4,
		}
		for name, typ := range want {
			if ti, ok := g.Tensor(name); !ok || ti.Type != typ {
				t.Errorf("%s: %s is %v, want %s", c.outType, name, ti, typ)
			}
		}
		if ft, err := g.GetUint32("general.file_type"); err != nil || ft != 38 {
			t.Errorf("%s: general.file_type %d, %v; want 38 (MXFP4 experts)", c.outType, ft, err)
		}
		// The converted model still runs, close to the directory's.
		m, err := Load(g, cpu.New(), LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		g.Close()
	}
	out := filepath.Join(t.TempDir(), "keep.gguf")
	if err := WriteGGUF(out, f, ConvertOptions{OutType: "keep"}); err != nil {
		t.Fatal(err)
	}
	g, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for i := range f.Tensors {
		if ti, ok := g.Tensor(f.Tensors[i].Name); !ok || ti.Type != f.Tensors[i].Type {
			t.Errorf("keep: %s is %v, want %s", f.Tensors[i].Name, ti, f.Tensors[i].Type)
		}
	}
	if ft, err := g.GetUint32("general.file_type"); err == nil {
		t.Errorf("keep: general.file_type %d, want none", ft)
	}
	if err := WriteGGUF(filepath.Join(t.TempDir(), "x.gguf"), f, ConvertOptions{OutType: "q4_k"}); err == nil {
		t.Error("an unknown output type was accepted")
	}
}

// TestHFTokenizerFiles adds the qwen2 fixture tokenizer to a checkpoint
// directory and expects its vocabulary and chat template in the metadata;
// the template also comes from chat_template.jinja, where newer
// checkpoints keep it.
func TestHFTokenizerFiles(t *testing.T) {
	cfg := map[string]any{"model_type": "gpt2", "n_layer": 3, "n_embd": 64, "n_head": 4, "n_inner": 256,
		"n_positions": 64, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": false}
	for _, separate := range []bool{false, true} {
		dir := writeHFDir(t, "gpt2_untied_mixed", cfg, gpt2HFLayout(t))
		src := filepath.Join("testdata", "hf_tok", "qwen2")
		tj, err := os.ReadFile(filepath.Join(src, "tokenizer.json"))
		if err != nil {
			t.Fatal(err)
		}
		tc, err := os.ReadFile(filepath.Join(src, "tokenizer_config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var conf map[string]any
		json.Unmarshal(tc, &conf)
		tmpl := conf["chat_template"].(string)
		if separate {
			delete(conf, "chat_template")
			tc, _ = json.Marshal(conf)
			os.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte(tmpl), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644)
		os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), tc, 0o644)
		f, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.GetString("tokenizer.chat_template")
		pre, _ := f.GetString("tokenizer.ggml.pre")
		eos, _ := f.GetUint32("tokenizer.ggml.eos_token_id")
		if err != nil || got != tmpl || pre != "qwen2" || eos != 1002 {
			t.Errorf("separate %v: template %d bytes (%v), pre %q, eos %d", separate, len(got), err, pre, eos)
		}
		f.Close()
	}
}

// TestConvertF32 converts the bf16 qwen2 checkpoint with outtype f32 (the
// zero tensor.Type, once taken for "keep"): its matrices must come out F32,
// each value the BF16 bits widened by 16 zero bits, with general.file_type
// 0 (llama.cpp's ALL_F32).
func TestConvertF32(t *testing.T) {
	f, err := Open(filepath.Join("testdata", "hf", "tiny_qwen2"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	src, ok := f.Tensor("blk.0.attn_v.weight")
	if !ok || src.Type != tensor.BF16 {
		t.Fatalf("the fixture's attn_v is %v, want BF16", src)
	}
	want := f.TensorData(src)
	out := filepath.Join(t.TempDir(), "f32.gguf")
	if err := WriteGGUF(out, f, ConvertOptions{OutType: "f32"}); err != nil {
		t.Fatal(err)
	}
	g, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ti, ok := g.Tensor("blk.0.attn_v.weight")
	if !ok || ti.Type != tensor.F32 {
		t.Fatalf("attn_v is %v, want F32", ti)
	}
	got := g.TensorData(ti)
	if len(got) != 2*len(want) {
		t.Fatalf("%d bytes, want %d", len(got), 2*len(want))
	}
	for i := 0; i < len(want)/2; i++ {
		bf := binary.LittleEndian.Uint16(want[2*i:])
		if w := uint32(bf) << 16; binary.LittleEndian.Uint32(got[4*i:]) != w {
			t.Fatalf("value %d: %#x, want %#x", i, binary.LittleEndian.Uint32(got[4*i:]), w)
		}
	}
	if ft, err := g.GetUint32("general.file_type"); err != nil || ft != 0 {
		t.Errorf("general.file_type %d, %v; want 0", ft, err)
	}
}

// TestHFVocabPadded opens the llama fixture, whose tokenizer.json has fewer
// tokens than config.json's vocab_size (and embedding rows): like
// llama.cpp's converter, which llama.cpp needs to load the file (it wants
// one token_embd row per token), the token list is padded with unused
// "[PAD<id>]" tokens up to vocab_size.
func TestHFVocabPadded(t *testing.T) {
	dir := filepath.Join("testdata", "hf", "tiny_llama")
	var tj struct {
		Model       struct{ Vocab map[string]int } `json:"model"`
		AddedTokens []struct{ ID int }             `json:"added_tokens"`
	}
	var cfg struct {
		VocabSize int `json:"vocab_size"`
	}
	for name, dst := range map[string]any{"tokenizer.json": &tj, "config.json": &cfg} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatal(err)
		}
	}
	n := len(tj.Model.Vocab) + len(tj.AddedTokens)
	if n >= cfg.VocabSize {
		t.Fatalf("the fixture's tokenizer has %d tokens for vocab_size %d: nothing to pad", n, cfg.VocabSize)
	}
	f, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tokens, err := f.GetStrings("tokenizer.ggml.tokens")
	if err != nil {
		t.Fatal(err)
	}
	types, err := f.GetInt32s("tokenizer.ggml.token_type")
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != cfg.VocabSize || len(types) != cfg.VocabSize {
		t.Fatalf("%d tokens, %d types; want vocab_size %d", len(tokens), len(types), cfg.VocabSize)
	}
	if emb, ok := f.Tensor("token_embd.weight"); !ok || emb.Dims[1] != int64(cfg.VocabSize) {
		t.Errorf("token_embd.weight is %v, want %d rows", emb, cfg.VocabSize)
	}
	for id := n; id < cfg.VocabSize; id++ {
		if want := fmt.Sprintf("[PAD%d]", id); tokens[id] != want || types[id] != 5 {
			t.Errorf("token %d is %q of type %d, want %q of type 5 (unused)", id, tokens[id], types[id], want)
		}
	}
	if strings.HasPrefix(tokens[n-1], "[PAD") || types[n-1] == 5 {
		t.Errorf("token %d (%q, type %d) is the tokenizer's last, not padding", n-1, tokens[n-1], types[n-1])
	}
}
