package server

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/internal/testutil"
)

// Test-side shapes of responses with log probabilities (the handlers'
// choice types hold them as any).
type (
	chatLPChoice struct {
		Index        int           `json:"index"`
		Message      *chatOutMsg   `json:"message"`
		Delta        *chatOutMsg   `json:"delta"`
		Logprobs     *chatLogprobs `json:"logprobs"`
		FinishReason *string       `json:"finish_reason"`
	}
	completionLPChoice struct {
		Text         string              `json:"text"`
		Index        int                 `json:"index"`
		Logprobs     *completionLogprobs `json:"logprobs"`
		FinishReason *string             `json:"finish_reason"`
	}
)

// perByte is b as the fake tokenizer's decoder shows it: U+FFFD for each
// byte that is not part of a valid character.
func perByte(b []byte) string {
	var out strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		out.WriteRune(r) // RuneError for an invalid byte, n = 1
		b = b[n:]
	}
	return out.String()
}

// byteID is the fake tokenizer's id of a token: a byte or a special token.
func byteID(t *testing.T, text string, raw []int) int32 {
	t.Helper()
	if id, ok := (enginetest.Tokenizer{}).TokenID(text); ok {
		return id
	}
	if len(raw) != 1 {
		t.Fatalf("token %q has bytes %v, want one byte", text, raw)
	}
	return int32(raw[0])
}

// TestChatLogprobs checks chat log probabilities against a log-softmax of
// the fake model's logits computed here, for greedy decoding (the token is
// the most likely and its log probability the largest) and sampling at
// T = 0.8; the tokens' bytes make up the content; the streamed ones equal
// the others for a seeded request.
func TestChatLogprobs(t *testing.T) {
	m := &enginetest.Model{}
	ts := newTestServer(t, m, "gpt2", engine.Config{}, nil)
	prompt := enginetest.Tokenizer{}.Encode("User: Hi\nAssistant:")
	for _, temp := range []float64{0, 0.8} {
		body := map[string]any{"messages": []map[string]any{{"role": "user", "content": "Hi"}}, "max_tokens": 12,
			"temperature": temp, "seed": 7, "logprobs": true, "top_logprobs": 4}
		var c openAIResponse[chatLPChoice]
		decodeBody(t, ts.post(t, "/v1/chat/completions", body), 200, &c)
		ch := c.Choices[0]
		if ch.Logprobs == nil || ch.Logprobs.Refusal != nil || len(ch.Logprobs.Content) != c.Usage.CompletionTokens {
			t.Fatalf("T=%v: logprobs %+v for %d tokens", temp, ch.Logprobs, c.Usage.CompletionTokens)
		}
		var content []byte
		history := append([]int32(nil), prompt...)
		scale := max(temp, 1e-300)
		if temp == 0 {
			scale = 1
		}
		for i, e := range ch.Logprobs.Content {
			id := byteID(t, e.Token, e.Bytes)
			logits := m.Logits(history)
			if want := testutil.LogSoftmax(logits, id, scale); math.Abs(e.Logprob-want) > 1e-9 {
				t.Errorf("T=%v: token %d (%q): logprob %v, want %v", temp, i, e.Token, e.Logprob, want)
			}
			if len(e.TopLogprobs) != 4 {
				t.Fatalf("token %d: %d alternatives, want 4", i, len(e.TopLogprobs))
			}
			sum := 0.0
			for j, alt := range e.TopLogprobs {
				if want := testutil.LogSoftmax(logits, byteID(t, alt.Token, alt.Bytes), scale); math.Abs(alt.Logprob-want) > 1e-9 {
					t.Errorf("token %d, alternative %d: %+v, want %v", i, j, alt, want)
				}
				if j > 0 && alt.Logprob > e.TopLogprobs[j-1].Logprob {
					t.Errorf("token %d: alternatives out of order", i)
				}
				sum += math.Exp(alt.Logprob)
			}
			if sum > 1 {
				t.Errorf("token %d: alternatives hold %v", i, sum)
			}
			if temp == 0 && (e.TopLogprobs[0].Token != e.Token || e.TopLogprobs[0].Logprob != e.Logprob) {
				t.Errorf("greedy token %d: %+v is not the most likely %+v", i, e.chatTopLogprob, e.TopLogprobs[0])
			}
			for _, b := range e.Bytes {
				content = append(content, byte(b))
			}
			history = append(history, id)
		}
		if ch.Message.Content == nil || perByte(content) != *ch.Message.Content {
			t.Errorf("T=%v: the tokens' bytes %q are not the content %q", temp, content, *ch.Message.Content)
		}

		body["stream"] = true
		var streamed []chatTokenLogprob
		var text string
		for _, chunk := range openAIStream[openAIResponse[chatLPChoice]](t, ts.post(t, "/v1/chat/completions", body)) {
			if len(chunk.Choices) == 0 {
				continue
			}
			if lp := chunk.Choices[0].Logprobs; lp != nil {
				streamed = append(streamed, lp.Content...)
			}
			if d := chunk.Choices[0].Delta; d != nil && d.Content != nil {
				text += *d.Content
			}
		}
		if !reflect.DeepEqual(streamed, ch.Logprobs.Content) || text != *ch.Message.Content {
			t.Errorf("T=%v: streamed %q with %d logprobs, not streamed %q with %d", temp, text, len(streamed), *ch.Message.Content, len(ch.Logprobs.Content))
		}
	}

	// Without logprobs, none; top_logprobs 0 asks for none.
	var c openAIResponse[chatLPChoice]
	decodeBody(t, ts.post(t, "/v1/chat/completions", map[string]any{"messages": []map[string]any{{"role": "user", "content": "Hi"}},
		"max_tokens": 3, "top_logprobs": 0}), 200, &c)
	if c.Choices[0].Logprobs != nil {
		t.Errorf("logprobs not asked for: %+v", c.Choices[0].Logprobs)
	}
}

// TestChatLogprobsHarmony: for gpt-oss the log probabilities cover the
// final channel's content only, not the reasoning, the headers or control
// tokens (here <|reserved_0|> inside the content), streamed or not.
func TestChatLogprobsHarmony(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.Script(harmonyTokens(harmonyAnswer)), Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	for _, stream := range []bool{false, true} {
		body := chatBody(stream, map[string]any{"logprobs": true, "top_logprobs": 2})
		var got []chatTokenLogprob
		if stream {
			for _, chunk := range openAIStream[openAIResponse[chatLPChoice]](t, ts.post(t, "/v1/chat/completions", body)) {
				if len(chunk.Choices) > 0 && chunk.Choices[0].Logprobs != nil {
					got = append(got, chunk.Choices[0].Logprobs.Content...)
				}
			}
		} else {
			var c openAIResponse[chatLPChoice]
			decodeBody(t, ts.post(t, "/v1/chat/completions", body), 200, &c)
			got = c.Choices[0].Logprobs.Content
		}
		var b []byte
		for _, e := range got {
			for _, v := range e.Bytes {
				b = append(b, byte(v))
			}
			// The scripted model makes each token certain: the only
			// alternative is the token itself.
			if e.Logprob != 0 || len(e.TopLogprobs) != 1 || e.TopLogprobs[0].Token != e.Token {
				t.Errorf("stream=%v: %+v", stream, e)
			}
		}
		if string(b) != "Hello, wörld!" {
			t.Errorf("stream=%v: logprobs of %q, want the content's tokens", stream, b)
		}
	}
}

// TestCompletionLogprobs checks /v1/completions with logprobs and echo:
// the prompt's tokens come first (the first with null), every number
// matches a log-softmax of the fake model's logits computed here, the top
// maps hold the k most likely and the token itself, the offsets walk the
// text; streamed equals not streamed; n = 2 echoes the prompt in both.
func TestCompletionLogprobs(t *testing.T) {
	m := &enginetest.Model{}
	ts := newTestServer(t, m, "gpt2", engine.Config{MaxActive: 2, MaxQueue: 2}, nil)
	const prompt = "The fox"
	body := map[string]any{"prompt": prompt, "max_tokens": 10, "seed": 3, "temperature": 0.9, "logprobs": 3, "echo": true, "n": 2}
	var c openAIResponse[completionLPChoice]
	decodeBody(t, ts.post(t, "/v1/completions", body), 200, &c)
	if len(c.Choices) != 2 {
		t.Fatalf("%d choices", len(c.Choices))
	}
	for _, ch := range c.Choices {
		lp := ch.Logprobs
		if !strings.HasPrefix(ch.Text, prompt) || lp == nil {
			t.Fatalf("choice %d: text %q, logprobs %v", ch.Index, ch.Text, lp)
		}
		n := len(lp.Tokens)
		if len(lp.TokenLogprobs) != n || len(lp.TopLogprobs) != n || len(lp.TextOffset) != n || n <= len(prompt) {
			t.Fatalf("choice %d: lists of %d, %d, %d, %d", ch.Index, n, len(lp.TokenLogprobs), len(lp.TopLogprobs), len(lp.TextOffset))
		}
		if lp.TokenLogprobs[0] != nil || lp.TopLogprobs[0] != nil {
			t.Errorf("choice %d: the first prompt token has %v, %v", ch.Index, lp.TokenLogprobs[0], lp.TopLogprobs[0])
		}
		var history []int32
		offset := 0
		for i, tok := range lp.Tokens {
			id := enginetest.Tokenizer{}.Encode(tok)
			if len(id) != 1 && tok != "\uFFFD" {
				t.Fatalf("token %d %q", i, tok)
			}
			if lp.TextOffset[i] != offset {
				t.Errorf("choice %d, token %d: offset %d, want %d", ch.Index, i, lp.TextOffset[i], offset)
			}
			offset += utf8.RuneCountInString(tok)
			if i < len(prompt) && tok != prompt[i:i+1] {
				t.Errorf("choice %d: echoed token %d is %q, the prompt has %q", ch.Index, i, tok, prompt[i:i+1])
			}
			if i > 0 && tok != "\uFFFD" {
				// The prompt's tokens are scored at T = 0.9 too.
				logits := m.Logits(history)
				if want := testutil.LogSoftmax(logits, id[0], 0.9); lp.TokenLogprobs[i] == nil || math.Abs(*lp.TokenLogprobs[i]-want) > 1e-9 {
					t.Errorf("choice %d, token %d (%q): %v, want %v", ch.Index, i, tok, lp.TokenLogprobs[i], want)
				}
				top := lp.TopLogprobs[i]
				// 3 alternatives and the token; texts of bytes above 127
				// are all U+FFFD and share a key.
				if len(top) == 0 || len(top) > 4 || top[tok] != *lp.TokenLogprobs[i] {
					t.Errorf("choice %d, token %d: top %v", ch.Index, i, top)
				}
				for alt, v := range top {
					if a := (enginetest.Tokenizer{}).Encode(alt); len(a) == 1 && math.Abs(v-testutil.LogSoftmax(logits, a[0], 0.9)) > 1e-9 {
						t.Errorf("choice %d, token %d: alternative %q %v", ch.Index, i, alt, v)
					}
				}
			}
			if tok == "\uFFFD" {
				break // a byte above 127: its id is not in the text; stop checking this choice
			}
			history = append(history, id[0])
		}
	}
	if !reflect.DeepEqual(c.Choices[0].Logprobs.Tokens[:len(prompt)], c.Choices[1].Logprobs.Tokens[:len(prompt)]) ||
		!reflect.DeepEqual(c.Choices[0].Logprobs.TokenLogprobs[:len(prompt)], c.Choices[1].Logprobs.TokenLogprobs[:len(prompt)]) {
		t.Error("the two choices echo different prompt log probabilities")
	}

	// Streamed: the chunks of each choice put together give the same.
	body["stream"] = true
	text := make([]string, 2)
	parts := []*completionLogprobs{newCompletionLogprobs(), newCompletionLogprobs()}
	for _, chunk := range openAIStream[openAIResponse[completionLPChoice]](t, ts.post(t, "/v1/completions", body)) {
		for _, ch := range chunk.Choices {
			text[ch.Index] += ch.Text
			if p := ch.Logprobs; p != nil {
				q := parts[ch.Index]
				q.Tokens, q.TokenLogprobs = append(q.Tokens, p.Tokens...), append(q.TokenLogprobs, p.TokenLogprobs...)
				q.TopLogprobs, q.TextOffset = append(q.TopLogprobs, p.TopLogprobs...), append(q.TextOffset, p.TextOffset...)
			}
		}
	}
	for i, ch := range c.Choices {
		if text[i] != ch.Text || !reflect.DeepEqual(parts[i], ch.Logprobs) {
			t.Errorf("choice %d streamed: %q %+v\nnot streamed: %q %+v", i, text[i], parts[i], ch.Text, ch.Logprobs)
		}
	}

	// echo alone: the prompt's text, no log probabilities; logprobs alone:
	// no prompt.
	decodeBody(t, ts.post(t, "/v1/completions", map[string]any{"prompt": prompt, "max_tokens": 2, "echo": true}), 200, &c)
	if !strings.HasPrefix(c.Choices[0].Text, prompt) || c.Choices[0].Logprobs != nil {
		t.Errorf("echo alone: %+v", c.Choices[0])
	}
	decodeBody(t, ts.post(t, "/v1/completions", map[string]any{"prompt": prompt, "max_tokens": 2, "logprobs": 0}), 200, &c)
	if lp := c.Choices[0].Logprobs; lp == nil || len(lp.Tokens) != c.Usage.CompletionTokens || lp.TextOffset[0] != 0 || len(lp.TopLogprobs[0]) != 1 {
		t.Errorf("logprobs 0 without echo: %+v", lp)
	}
}

// TestCompletionEchoAfterBOS: a prompt prefix the engine adds (BOS) is not
// echoed, and the first echoed token, predicted from it, has a log
// probability.
func TestCompletionEchoAfterBOS(t *testing.T) {
	m := &enginetest.Model{}
	bos := enginetest.MustID("<|endoftext|>")
	ts := newTestServer(t, m, "gpt2", engine.Config{PromptPrefix: []int32{bos}}, nil)
	var c openAIResponse[completionLPChoice]
	decodeBody(t, ts.post(t, "/v1/completions", map[string]any{"prompt": "ab", "max_tokens": 1, "logprobs": 1, "echo": true}), 200, &c)
	lp := c.Choices[0].Logprobs
	if lp == nil || len(lp.Tokens) != 3 || lp.Tokens[0] != "a" || lp.Tokens[1] != "b" || !strings.HasPrefix(c.Choices[0].Text, "ab") {
		t.Fatalf("echo after BOS: %q %+v", c.Choices[0].Text, lp)
	}
	if want := testutil.LogSoftmax(m.Logits([]int32{bos}), 'a', 1); lp.TokenLogprobs[0] == nil || math.Abs(*lp.TokenLogprobs[0]-want) > 1e-9 {
		t.Errorf("first echoed token: %v, want %v", lp.TokenLogprobs[0], want)
	}
}
