package server

import (
	"encoding/json"
	"strings"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/tokenizer"
)

// o200k adapts the real o200k_harmony tokenizer to the engine.
type o200k struct{ *tokenizer.Tokenizer }

func (t o200k) NewStreamDecoder() engine.StreamDecoder { return t.Tokenizer.NewStreamDecoder() }

// BenchmarkAdmission measures the work done in an admission slot for a
// typical request (a 2 KiB prompt of English-like text): strict decoding,
// checking, harmony rendering for chat, and tokenizing with o200k_harmony.
func BenchmarkAdmission(b *testing.B) {
	tk, err := tokenizer.Embedded(tokenizer.VocabO200kHarmony)
	if err != nil {
		b.Fatal(err)
	}
	e, err := engine.New(engine.Config{Model: &enginetest.Model{Ctx: 4096}, Tokenizer: o200k{tk}})
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Engine: e, Tokenizer: tk, Model: ModelInfo{ID: "m", Arch: "gpt-oss", VocabSize: tk.VocabSize()}})
	if err != nil {
		b.Fatal(err)
	}
	prompt := strings.Repeat("The quick brown fox jumps over the lazy dog, again and again. ", 34)[:2048]
	execute, _ := json.Marshal(map[string]any{"job_id": "j", "prompt": prompt, "max_tokens": 64, "temperature": 0.7, "stop": []string{"\n\n"}})
	chat, _ := json.Marshal(map[string]any{"messages": []map[string]string{{"role": "system", "content": "Be brief."},
		{"role": "user", "content": prompt}}, "max_tokens": 64, "stream": true})
	b.Run("execute", func(b *testing.B) {
		for b.Loop() {
			var body executeRequest
			if err := decodeStrict(execute, &body); err != nil {
				b.Fatal(err)
			}
			req, err := s.engineRequest(body)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.tokenize("prompt", len(req.Prompt), func() ([]int32, error) { return e.EncodePrompt(req.Prompt), nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("chat", func(b *testing.B) {
		for b.Loop() {
			var body chatRequest
			if err := decodeStrict(chat, &body); err != nil {
				b.Fatal(err)
			}
			if _, err := s.chatRequest(&body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
