package main

import (
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"

	"orcd/internal/testutil"
)

// TestServeLogprobsMatchModel serves a tiny GPT-2 on the cpu backend and
// asks /v1/completions for a greedy continuation with echo and logprobs;
// it then loads the same file here, runs the prompt and the continuation
// through model.Forward, and checks every reported number against a
// log-softmax of those logits computed in this test: the echoed prompt
// tokens (the first without one), the generated tokens (each the argmax)
// and their alternatives. The server runs exact cpu arithmetic, as the test
// does, so the numbers agree to rounding (measured: within 1e-12).
func TestServeLogprobsMatchModel(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	w := startServe(t, "--model", path, "--ctx-size", "128", "--cpu-precision", "exact")
	const prompt, maxTokens, k = "The quick brown fox jumps", 6, 5
	resp, err := http.Post(w.uri+"/v1/completions", "application/json", strings.NewReader(
		`{"prompt":"`+prompt+`","max_tokens":6,"temperature":0,"logprobs":5,"echo":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Choices []struct {
			Text     string
			Logprobs struct {
				Tokens        []string             `json:"tokens"`
				TokenLogprobs []*float64           `json:"token_logprobs"`
				TopLogprobs   []map[string]float64 `json:"top_logprobs"`
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 || len(body.Choices) != 1 {
		t.Fatalf("status %d, %v, %+v", resp.StatusCode, err, body)
	}
	got := body.Choices[0].Logprobs

	m, tok := loadCPU(t, path)
	var ids []int32
	if tok.AddBOS() && tok.BOS() >= 0 {
		ids = append(ids, tok.BOS())
	}
	skip := len(ids) // the BOS is not echoed
	ids = append(ids, tok.Encode(prompt)...)
	c, err := m.NewCache(128)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	vocab := m.Config().VocabSize
	all, err := m.Forward(c, ids, true)
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][]float32, len(ids)) // rows[i] predicts token i+1
	for i := range rows {
		rows[i] = append([]float32(nil), all[i*vocab:(i+1)*vocab]...)
	}
	for range maxTokens {
		last := rows[len(rows)-1]
		next := int32(0)
		for i, v := range last {
			if v > last[next] {
				next = int32(i)
			}
		}
		ids = append(ids, next)
		out, err := m.Forward(c, []int32{next}, false)
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, append([]float32(nil), out...))
	}
	text := func(id int32) string { return strings.ToValidUTF8(tok.TokenText(id), "\uFFFD") }

	want := ids[skip:]
	if len(got.Tokens) != len(want) || len(got.TokenLogprobs) != len(want) || len(got.TopLogprobs) != len(want) {
		t.Fatalf("%d tokens %q, want %d", len(got.Tokens), got.Tokens, len(want))
	}
	for i, id := range want {
		pos := skip + i // the token's position in ids
		if got.Tokens[i] != text(id) {
			t.Errorf("token %d: %q, want %q", i, got.Tokens[i], text(id))
		}
		if pos == 0 {
			if got.TokenLogprobs[i] != nil || got.TopLogprobs[i] != nil {
				t.Errorf("the first token has %v %v", got.TokenLogprobs[i], got.TopLogprobs[i])
			}
			continue
		}
		ref := func(id int32) float64 { return testutil.LogSoftmax(rows[pos-1], id, 1) }
		if got.TokenLogprobs[i] == nil || math.Abs(*got.TokenLogprobs[i]-ref(id)) > 1e-6 {
			t.Errorf("token %d (%q): logprob %v, want %.6f", i, got.Tokens[i], got.TokenLogprobs[i], ref(id))
		}
		if len(got.TopLogprobs[i]) < 1 || len(got.TopLogprobs[i]) > k+1 {
			t.Errorf("token %d: %d alternatives", i, len(got.TopLogprobs[i]))
		}
		sum := 0.0
		for alt, v := range got.TopLogprobs[i] {
			sum += math.Exp(v)
			if ids := tok.Encode(alt); len(ids) == 1 && math.Abs(v-ref(ids[0])) > 1e-6 {
				t.Errorf("token %d: alternative %q %v, want %.6f", i, alt, v, ref(ids[0]))
			}
		}
		if sum > 1+1e-9 {
			t.Errorf("token %d: alternatives hold %v", i, sum)
		}
	}
	if body.Choices[0].Text != prompt+tok.Decode(ids[len(ids)-maxTokens:]) {
		t.Errorf("text %q", body.Choices[0].Text)
	}
}
