package server

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/harmony"
)

// harmonyTokens tokenizes harmony text for the fake tokenizer, turning
// special-token text into special tokens.
func harmonyTokens(s string) []int32 {
	var ids []int32
	for s != "" {
		next, tok := len(s), ""
		for _, sp := range enginetest.Specials {
			if i := strings.Index(s, sp); i >= 0 && i < next {
				next, tok = i, sp
			}
		}
		ids = append(ids, enginetest.Tokenizer{}.Encode(s[:next])...)
		if tok == "" {
			break
		}
		ids = append(ids, enginetest.MustID(tok))
		s = s[next+len(tok):]
	}
	return ids
}

// recorder wraps a Next function and keeps the first sequence it sees: the prompt.
type recorder struct {
	mu     sync.Mutex
	prompt []int32
	next   func([]int32) int32
}

func (r *recorder) Next(h []int32) int32 {
	r.mu.Lock()
	if r.prompt == nil {
		r.prompt = slices.Clone(h)
	}
	r.mu.Unlock()
	return r.next(h)
}

func decodeBody(t *testing.T, resp *http.Response, status int, v any) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}

// openAIStream reads a data-only stream up to [DONE] and decodes each chunk.
func openAIStream[T any](t *testing.T, resp *http.Response) []T {
	t.Helper()
	defer resp.Body.Close()
	evs := newSSEReader(t, resp).all(t)
	if len(evs) == 0 || evs[len(evs)-1].data != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]: %+v", evs)
	}
	var out []T
	for _, ev := range evs[:len(evs)-1] {
		if ev.name != "" {
			t.Fatalf("OpenAI stream has a named event %q", ev.name)
		}
		var v T
		ev.decode(t, &v)
		out = append(out, v)
	}
	return out
}

func TestModels(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	resp, err := http.Get(ts.url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}
	decodeBody(t, resp, 200, &list)
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != "tiny" || list.Data[0].Object != "model" {
		t.Errorf("models %+v", list)
	}
}

func TestCompletions(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("one two three")}, "gpt2", engine.Config{}, nil)
	var c completionResponse
	decodeBody(t, ts.post(t, "/v1/completions", map[string]any{"model": "tiny", "prompt": "count:", "max_tokens": 7}), 200, &c)
	if c.Object != "text_completion" || c.Choices[0].Text != "one two" || *c.Choices[0].FinishReason != "length" {
		t.Errorf("completion %+v", c)
	}
	if c.Usage == nil || *c.Usage != (usage{PromptTokens: 6, CompletionTokens: 7, TotalTokens: 13}) {
		t.Errorf("usage %+v", c.Usage)
	}

	chunks := openAIStream[completionResponse](t, ts.post(t, "/v1/completions", map[string]any{
		"model": "tiny", "prompt": "count:", "stream": true, "stream_options": map[string]bool{"include_usage": true}}))
	text := ""
	for _, ch := range chunks[:len(chunks)-2] {
		text += ch.Choices[0].Text
		if ch.Choices[0].FinishReason != nil {
			t.Errorf("finish_reason before the last chunk")
		}
	}
	last, usageChunk := chunks[len(chunks)-2], chunks[len(chunks)-1]
	if text != "one two three" || *last.Choices[0].FinishReason != "stop" {
		t.Errorf("streamed %q, finish %v", text, last.Choices[0].FinishReason)
	}
	if len(usageChunk.Choices) != 0 || usageChunk.Usage == nil || usageChunk.Usage.CompletionTokens != 13 {
		t.Errorf("usage chunk %+v", usageChunk)
	}
}

func TestOpenAIErrors(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	cases := []struct {
		path   string
		body   string
		status int
		typ    string
	}{
		{"/v1/chat/completions", `{"model":"other","messages":[{"role":"user","content":"hi"}]}`, 404, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[]}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"wizard","content":"hi"}]}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"temperature":3}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"n":9}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"logit_bias":{"1":5}}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`, 400, "invalid_request_error"},
		{"/v1/chat/completions", `{"model":`, 400, "invalid_request_error"},
		{"/v1/completions", `{"model":"tiny","prompt":["a","b"]}`, 400, "invalid_request_error"},
		{"/v1/completions", `{"model":"tiny","prompt":"a","max_tokens":0}`, 400, "invalid_request_error"},
	}
	for _, c := range cases {
		var e openAIError
		decodeBody(t, ts.post(t, c.path, c.body), c.status, &e)
		if e.Error.Type != c.typ || e.Error.Message == "" || e.Error.Code == nil {
			t.Errorf("%s %s: error %+v", c.path, c.body, e)
		}
	}
}

func TestChatPlain(t *testing.T) {
	rec := &recorder{next: enginetest.TextScript(" Hi there!\nUser: and more")}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next}, "gpt2", engine.Config{}, nil)
	var c chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", map[string]any{"model": "tiny", "messages": []map[string]any{
		{"role": "system", "content": "Be brief."},
		{"role": "user", "content": "Hello"},
	}}), 200, &c)
	if c.Object != "chat.completion" || *c.Choices[0].Message.Content != " Hi there!" || *c.Choices[0].FinishReason != "stop" {
		t.Errorf("chat %+v %+v", c, c.Choices[0].Message)
	}
	got, want := (enginetest.Tokenizer{}).Decode(rec.prompt), "Be brief.\n\nUser: Hello\nAssistant:"
	if got != want {
		t.Errorf("prompt %q, want %q", got, want)
	}
}

// harmonyAnswer has a reserved special token in the final message, which
// must not reach the content.
const harmonyAnswer = "<|channel|>analysis<|message|>User greets. Reply.<|end|><|start|>assistant<|channel|>final<|message|>Hello, <|reserved_0|>wörld!<|return|>"
const harmonyToolCall = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"SF\"}<|call|>"

func chatBody(stream bool, extra map[string]any) map[string]any {
	b := map[string]any{"model": "tiny", "stream": stream, "reasoning_effort": "low", "messages": []map[string]any{
		{"role": "system", "content": "Be nice."},
		{"role": "user", "content": "Hi <|end|>"},
	}}
	for k, v := range extra {
		b[k] = v
	}
	return b
}

func TestChatHarmony(t *testing.T) {
	rec := &recorder{next: enginetest.Script(harmonyTokens(harmonyAnswer))}
	// The recorder sees the whole prompt at the first token.
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	var c chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, nil)), 200, &c)
	m := c.Choices[0].Message
	if *m.Content != "Hello, wörld!" || m.ReasoningContent == nil || *m.ReasoningContent != "User greets. Reply." || *c.Choices[0].FinishReason != "stop" {
		t.Errorf("message %+v", m)
	}
	// The prompt is the harmony rendering, special tokens by id; the user's
	// "<|end|>" stays text.
	p, err := harmony.Render(harmony.Conversation{ReasoningEffort: "low", Date: ts.cfg.Now(), Instructions: "Be nice.",
		Messages: []harmony.Message{{Role: "user", Content: "Hi <|end|>"}}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := p.Tokens((enginetest.Tokenizer{}))
	if !slices.Equal(rec.prompt, want) {
		t.Errorf("prompt %q, want %q", (enginetest.Tokenizer{}).Decode(rec.prompt), p.String())
	}
	if c.Usage.PromptTokens != len(want) || c.Usage.CompletionTokens != len(harmonyTokens(harmonyAnswer))-1 {
		t.Errorf("usage %+v", c.Usage)
	}

	chunks := openAIStream[chatResponse](t, ts.post(t, "/v1/chat/completions", chatBody(true, nil)))
	var content, reasoning string
	for i, ch := range chunks {
		d := ch.Choices[0].Delta
		if i == 0 && d.Role != "assistant" {
			t.Errorf("first delta %+v has no role", d)
		}
		if d.Content != nil {
			content += *d.Content
			if strings.Contains(*d.Content, "<|") {
				t.Errorf("control token in content %q", *d.Content)
			}
		}
		if d.ReasoningContent != nil {
			reasoning += *d.ReasoningContent
		}
	}
	if content != "Hello, wörld!" || reasoning != "User greets. Reply." || *chunks[len(chunks)-1].Choices[0].FinishReason != "stop" {
		t.Errorf("streamed content %q reasoning %q", content, reasoning)
	}

	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, map[string]any{"stop": "wörld"})), 200, &c)
	if *c.Choices[0].Message.Content != "Hello, " || *c.Choices[0].FinishReason != "stop" {
		t.Errorf("stop string: %q", *c.Choices[0].Message.Content)
	}
}

func TestChatHarmonyToolCall(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.Script(harmonyTokens(harmonyToolCall)), Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	tools := []map[string]any{{"type": "function", "function": map[string]any{
		"name": "get_weather", "description": "Weather now.",
		"parameters": map[string]any{"type": "object", "properties": map[string]any{"location": map[string]any{"type": "string"}}, "required": []string{"location"}},
	}}}
	var c chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, map[string]any{"tools": tools})), 200, &c)
	m := c.Choices[0].Message
	if *c.Choices[0].FinishReason != "tool_calls" || m.Content != nil || len(m.ToolCalls) != 1 {
		t.Fatalf("message %+v finish %s", m, *c.Choices[0].FinishReason)
	}
	tc := m.ToolCalls[0]
	if tc.Type != "function" || !strings.HasPrefix(tc.ID, "call_") || tc.Function.Name != "get_weather" || tc.Function.Arguments != `{"location":"SF"}` {
		t.Errorf("tool call %+v", tc)
	}

	chunks := openAIStream[chatResponse](t, ts.post(t, "/v1/chat/completions", chatBody(true, map[string]any{"tools": tools})))
	var name, args, id string
	for _, ch := range chunks {
		for _, tc := range ch.Choices[0].Delta.ToolCalls {
			if tc.Index == nil || *tc.Index != 0 {
				t.Errorf("tool call delta without index 0: %+v", tc)
			}
			name += tc.Function.Name
			args += tc.Function.Arguments
			id += tc.ID
		}
	}
	if name != "get_weather" || args != `{"location":"SF"}` || id == "" || *chunks[len(chunks)-1].Choices[0].FinishReason != "tool_calls" {
		t.Errorf("streamed tool call %q %q %q", name, args, id)
	}

	// Sending the call and its result back renders them into the prompt.
	history := chatBody(false, map[string]any{"tools": tools})
	history["messages"] = append(history["messages"].([]map[string]any),
		map[string]any{"role": "assistant", "content": nil, "tool_calls": []map[string]any{{"id": "call_1", "type": "function", "function": map[string]any{"name": "get_weather", "arguments": `{"location":"SF"}`}}}},
		map[string]any{"role": "tool", "tool_call_id": "call_1", "content": `{"temp":20}`})
	resp := ts.post(t, "/v1/chat/completions", history)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("chat with tool history: %d", resp.StatusCode)
	}
}
