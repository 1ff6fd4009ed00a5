package engine_test

import (
	"slices"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// EncodePrompt gives the tokens Submit makes of a text prompt: the prefix,
// then one token per byte with the fake tokenizer.
func TestEncodePrompt(t *testing.T) {
	bos := enginetest.MustID("<|endoftext|>")
	e := newEngine(t, &enginetest.Model{}, engine.Config{PromptPrefix: []int32{bos}})
	if got := e.EncodePrompt("ab"); !slices.Equal(got, []int32{bos, 'a', 'b'}) {
		t.Errorf("EncodePrompt(ab) = %v", got)
	}
	if got := e.EncodePrompt(""); got != nil {
		t.Errorf("EncodePrompt of empty text = %v, want nil", got)
	}
	req := request("", 1)
	req.Tokens = e.EncodePrompt("abc")
	j, err := e.Submit(req)
	if err != nil || j.PromptTokens() != 4 {
		t.Fatalf("Submit of pre-encoded tokens: %v", err)
	}
	j.Run(t.Context(), func(engine.Token) bool { return false })
}
