package server

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"orcd/chat"
	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/harmony"
)

// n choices are n generations with seeds seed, seed+1, ...: each equals the
// single-choice answer to that seed; usage counts the prompt once and the
// tokens of all choices; the later choices reuse the first one's prefill.
func TestChoices(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{MaxActive: 4}, nil)
	// 168 bytes, one token each: 10 full blocks of 16, new to the prefix
	// cache when the n request comes first.
	prompt := strings.Repeat("The prompt is long enough to fill blocks. ", 4)
	single := func(path string, seed int) (string, usage) {
		body := map[string]any{"max_tokens": 12, "seed": seed, "temperature": 1}
		if path == "/v1/completions" {
			body["prompt"] = prompt
			var c completionResponse
			decodeBody(t, ts.post(t, path, body), 200, &c)
			return c.Choices[0].Text, *c.Usage
		}
		body["messages"] = []map[string]any{{"role": "user", "content": prompt}}
		var c chatResponse
		decodeBody(t, ts.post(t, path, body), 200, &c)
		return *c.Choices[0].Message.Content, *c.Usage
	}
	for _, path := range []string{"/v1/completions", "/v1/chat/completions"} {
		const n, seed = 3, 40
		before := ts.engine.Stats().PrefixHitTokens
		body := map[string]any{"max_tokens": 12, "seed": seed, "temperature": 1, "n": n}
		var got []string
		var u usage
		if path == "/v1/completions" {
			body["prompt"] = prompt
			var c completionResponse
			decodeBody(t, ts.post(t, path, body), 200, &c)
			for i, ch := range c.Choices {
				if ch.Index != i || ch.FinishReason == nil {
					t.Errorf("%s: choice %d %+v", path, i, ch)
				}
				got = append(got, ch.Text)
			}
			u = *c.Usage
		} else {
			body["messages"] = []map[string]any{{"role": "user", "content": prompt}}
			var c chatResponse
			decodeBody(t, ts.post(t, path, body), 200, &c)
			for i, ch := range c.Choices {
				if ch.Index != i || ch.FinishReason == nil {
					t.Errorf("%s: choice %d %+v", path, i, ch)
				}
				got = append(got, *ch.Message.Content)
			}
			u = *c.Usage
		}
		// Choices 1 and 2 find at least the prompt's full blocks cached.
		if hit, min := ts.engine.Stats().PrefixHitTokens-before, int64((n-1)*(u.PromptTokens/16)*16); hit < min {
			t.Errorf("%s: %d prompt tokens found in the prefix cache, want at least %d", path, hit, min)
		}

		var want []string
		var wantUsage usage
		for i := range n {
			text, u := single(path, seed+i)
			want = append(want, text)
			wantUsage.PromptTokens = u.PromptTokens
			wantUsage.CompletionTokens += u.CompletionTokens
		}
		wantUsage.TotalTokens = wantUsage.PromptTokens + wantUsage.CompletionTokens
		if want[0] == want[1] {
			t.Fatalf("%s: seeds %d and %d give the same text %q; the test cannot tell choices apart", path, seed, seed+1, want[0])
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: choices %q, want %q", path, got, want)
		}
		if u != wantUsage {
			t.Errorf("%s: usage %+v, want %+v", path, u, wantUsage)
		}
		// Streamed: every chunk names its choice; each choice's text and
		// finish reason arrive.
		body["stream"] = true
		body["stream_options"] = map[string]any{"include_usage": true}
		texts := make([]string, n)
		finished := 0
		var streamedUsage *usage
		if path == "/v1/completions" {
			for _, c := range openAIStream[completionResponse](t, ts.post(t, path, body)) {
				for _, ch := range c.Choices {
					texts[ch.Index] += ch.Text
					if ch.FinishReason != nil {
						finished++
					}
				}
				if c.Usage != nil {
					streamedUsage = c.Usage
				}
			}
		} else {
			for _, c := range openAIStream[chatResponse](t, ts.post(t, path, body)) {
				for _, ch := range c.Choices {
					if ch.Delta.Content != nil {
						texts[ch.Index] += *ch.Delta.Content
					}
					if ch.FinishReason != nil {
						finished++
					}
				}
				if c.Usage != nil {
					streamedUsage = c.Usage
				}
			}
		}
		if fmt.Sprint(texts) != fmt.Sprint(want) || finished != n || streamedUsage == nil || *streamedUsage != wantUsage {
			t.Errorf("%s streamed: %q (want %q), %d finished, usage %v", path, texts, want, finished, streamedUsage)
		}
	}
	for _, n := range []int{0, 9} {
		e := wantOpenAIError(t, ts.post(t, "/v1/completions", map[string]any{"prompt": "a", "n": n}), http.StatusBadRequest, "invalid_request_error", "invalid_request")
		if e.Param == nil || *e.Param != "n" {
			t.Errorf("n=%d: %+v", n, e)
		}
	}
}

// parallel_tool_calls false returns the first call only; tool_choice none
// renders no tools, so that calls are neither offered nor parsed.
func TestToolChoiceAndParallelCalls(t *testing.T) {
	tmpl, err := chat.Compile(testTemplate, "", "")
	if err != nil {
		t.Fatal(err)
	}
	out := "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call><tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": 1}}\n</tool_call>"
	rec := &recorder{next: enginetest.TextScript(out)}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "qwen2", engine.Config{}, func(c *Config) {
		c.Model.Chat, c.Template, c.Tokenizer = ChatTemplate, tmpl, byteSpecials{}
	})
	tools := []map[string]any{{"type": "function", "function": map[string]any{"name": "a"}}, {"type": "function", "function": map[string]any{"name": "b"}}}
	names := func(calls []chatToolCall) (s []string) {
		for _, c := range calls {
			s = append(s, c.Function.Name+c.Function.Arguments)
		}
		return s
	}
	for _, c := range []struct {
		parallel any
		want     []string
	}{{nil, []string{"a{}", `b{"x":1}`}}, {true, []string{"a{}", `b{"x":1}`}}, {false, []string{"a{}"}}} {
		extra := map[string]any{"tools": tools}
		if c.parallel != nil {
			extra["parallel_tool_calls"] = c.parallel
		}
		var r chatResponse
		decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, extra)), 200, &r)
		if got := names(r.Choices[0].Message.ToolCalls); !slices.Equal(got, c.want) || *r.Choices[0].FinishReason != "tool_calls" {
			t.Errorf("parallel_tool_calls %v: calls %q finish %s, want %q", c.parallel, got, *r.Choices[0].FinishReason, c.want)
		}
		var streamed []string
		for _, ch := range openAIStream[chatResponse](t, ts.post(t, "/v1/chat/completions", chatBody(true, extra))) {
			for _, tc := range ch.Choices[0].Delta.ToolCalls {
				if tc.Function.Name != "" {
					streamed = append(streamed, "")
				}
				streamed[len(streamed)-1] += tc.Function.Name + tc.Function.Arguments
			}
		}
		if !slices.Equal(streamed, c.want) {
			t.Errorf("parallel_tool_calls %v streamed: %q", c.parallel, streamed)
		}
	}

	// The Responses API's max_tool_calls limits them the same way.
	flat := []map[string]any{{"type": "function", "name": "a"}, {"type": "function", "name": "b"}}
	for _, c := range []struct {
		max  any
		want []string
	}{{nil, []string{"function_call:a:{}", `function_call:b:{"x":1}`}}, {2, []string{"function_call:a:{}", `function_call:b:{"x":1}`}},
		{1, []string{"function_call:a:{}"}}, {0, nil}} {
		body := map[string]any{"input": "hi", "tools": flat}
		if c.max != nil {
			body["max_tool_calls"] = c.max
		}
		var rr respObject
		decodeBody(t, ts.post(t, "/v1/responses", body), 200, &rr)
		if got := rr.summary(); !slices.Equal(got, c.want) {
			t.Errorf("max_tool_calls %v: %q, want %q", c.max, got, c.want)
		}
	}

	rec.prompt = nil
	var r chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, map[string]any{"tools": tools, "tool_choice": "none"})), 200, &r)
	if got := (enginetest.Tokenizer{}).Decode(rec.prompt); got != "<system>Be nice.<user>Hi <|end|><assistant>" {
		t.Errorf("tool_choice none: prompt %q", got)
	}
	if m := r.Choices[0].Message; len(m.ToolCalls) != 0 || m.Content == nil || *m.Content != out || *r.Choices[0].FinishReason != "stop" {
		t.Errorf("tool_choice none: %+v", m)
	}
}

// With harmony, tool_choice none leaves the tools out of the prompt, and
// a call the model makes anyway ends the answer instead of reaching the
// client.
func TestToolChoiceNoneHarmony(t *testing.T) {
	rec := &recorder{next: harmonyScripts}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	tools := []map[string]any{{"type": "function", "function": map[string]any{"name": "get_weather"}}}
	var r chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, map[string]any{"tools": tools, "tool_choice": "none"})), 200, &r)
	wantHarmonyPrompt(t, rec.prompt, harmony.Conversation{ReasoningEffort: "low", Date: ts.cfg.Now(), Instructions: "Be nice.",
		Messages: []harmony.Message{{Role: "user", Content: "Hi <|end|>"}}})
	if m := r.Choices[0].Message; len(m.ToolCalls) != 0 || *m.Content != "Hello, wörld!" {
		t.Errorf("message %+v", m)
	}

	rogue := newTestServer(t, &enginetest.Model{Next: enginetest.Script(harmonyTokens(harmonyToolCall)), Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	decodeBody(t, rogue.post(t, "/v1/chat/completions", chatBody(false, map[string]any{"tools": tools, "tool_choice": "none"})), 200, &r)
	if m := r.Choices[0].Message; len(m.ToolCalls) != 0 || *m.ReasoningContent != "Need the weather." || *r.Choices[0].FinishReason != "stop" {
		t.Errorf("a call despite tool_choice none: %+v, finish %s", m, *r.Choices[0].FinishReason)
	}
	var calls int
	for _, ch := range openAIStream[chatResponse](t, rogue.post(t, "/v1/chat/completions", chatBody(true, map[string]any{"tools": tools, "tool_choice": "none"}))) {
		calls += len(ch.Choices[0].Delta.ToolCalls)
	}
	if calls != 0 {
		t.Errorf("streamed: %d tool call deltas despite tool_choice none", calls)
	}
}
