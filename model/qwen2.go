package model

import "orcd/backend"

// Qwen2 (HF modeling_qwen2; Qwen2.5) is Llama with biases on the Q, K and V
// projections, RoPE in HF's rotate_half pairing (llama.cpp's converter
// leaves Qwen2's rows as they are), and usually a tied embedding. The
// adapter is llama.go's; this file says what differs and registers it.

var qwen2Family = decoderFamily{arch: "qwen2", rope: backend.RoPENeoX, qkvBias: true}

func init() {
	Register(Arch{
		Name:         "qwen2",
		HFModelTypes: []string{"qwen2"},
		Chat:         ChatTemplate,
		Load:         qwen2Family.load,
		Layout:       qwen2Family.layoutOf,
		FromHF:       qwen2Family.fromHF,
		Presets: map[string]Preset{
			"tiny-qwen2": qwen2Family.preset(decoderParams{layers: 2, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ff: 128,
				ctx: 4096, ropeBase: 1000000}, 0),
			// Qwen2.5-0.5B's shape and vocabulary size (the GPT-2 tokenizer's
			// tokens, the embedding padded to 151,936 rows).
			"qwen2.5-0.5b": qwen2Family.preset(decoderParams{layers: 24, hidden: 896, heads: 14, kvHeads: 2, headDim: 64,
				ff: 4864, ctx: 32768, ropeBase: 1000000}, 151936),
		},
	})
}
