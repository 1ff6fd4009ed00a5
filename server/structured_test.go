package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"orcd/chat"
	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/internal/schematest"
)

type structuredChoice struct {
	Message struct {
		Content   *string
		ToolCalls []struct {
			Function struct{ Name, Arguments string }
		} `json:"tool_calls"`
	}
	FinishReason string `json:"finish_reason"`
}

// TestStructuredOutputFakeModels: on the fake model's pseudo-random logits,
// harmony and plain chat answers follow their schema, n choices each, and
// a forced or strict call's arguments follow the function's.
func TestStructuredOutputFakeModels(t *testing.T) {
	schema := `{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string"}}},"required":["a","b"],"additionalProperties":false}`
	for _, arch := range []string{"gpt-oss", "gpt2"} {
		ts := newTestServer(t, &enginetest.Model{}, arch, engine.Config{MaxActive: 4, CtxSize: 512}, nil)
		for seed := range 4 {
			body := fmt.Sprintf(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":%d,"seed":%d,"n":2,
				"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}`, 30+20*seed, seed, schema)
			var out struct{ Choices []structuredChoice }
			decodeBody(t, ts.post(t, "/v1/chat/completions", body), http.StatusOK, &out)
			if len(out.Choices) != 2 {
				t.Fatalf("%s: %d choices", arch, len(out.Choices))
			}
			for _, c := range out.Choices {
				schematest.Check(t, schema, *c.Message.Content)
			}
		}
	}
	ts := newTestServer(t, &enginetest.Model{}, "gpt-oss", engine.Config{CtxSize: 512}, nil)
	tool := `{"type":"function","function":{"name":"f","strict":%s,"parameters":` + schema + `}}`
	for _, c := range []string{
		`"tool_choice":"required","tools":[` + fmt.Sprintf(tool, "false") + `]`,
		`"tool_choice":{"type":"function","function":{"name":"f"}},"tools":[` + fmt.Sprintf(tool, "true") + `]`,
	} {
		var out struct{ Choices []structuredChoice }
		decodeBody(t, ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":60,`+c+`}`), http.StatusOK, &out)
		ch := out.Choices[0]
		if len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "f" || ch.FinishReason != "tool_calls" {
			t.Fatalf("%s: %+v", c, ch)
		}
		schematest.Check(t, schema, ch.Message.ToolCalls[0].Function.Arguments)
	}
	// The responses form of a named tool choice, and text.format.
	var resp struct {
		Output []json.RawMessage
		Text   json.RawMessage
	}
	decodeBody(t, ts.post(t, "/v1/responses", `{"input":"hi","max_output_tokens":60,"tool_choice":{"type":"function","name":"f"},
		"tools":[{"type":"function","name":"f","parameters":`+schema+`}]}`), http.StatusOK, &resp)
	found := false
	for _, o := range resp.Output {
		var item struct{ Type, Name, Arguments string }
		json.Unmarshal(o, &item)
		if item.Type == "function_call" {
			found = true
			schematest.Check(t, schema, item.Arguments)
		}
	}
	if !found {
		t.Errorf("no function_call in %s", resp.Output)
	}
	decodeBody(t, ts.post(t, "/v1/responses", `{"input":"hi","max_output_tokens":60,"text":{"format":{"type":"json_object"}}}`), http.StatusOK, &resp)
	if string(resp.Text) != `{"format":{"type":"json_object"}}` {
		t.Errorf("text echoed as %s", resp.Text)
	}
}

// TestStructuredOutputTemplate: a template model's whole answer is the
// JSON value, and a forced call is written in its tagged format.
func TestStructuredOutputTemplate(t *testing.T) {
	tmpl, err := chat.Compile(testTemplate, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, &enginetest.Model{Ctx: 4096}, "qwen2", engine.Config{}, func(c *Config) {
		c.Model.Chat, c.Template, c.Tokenizer = ChatTemplate, tmpl, byteSpecials{}
	})
	schema := `{"type":"object","properties":{"x":{"type":"array","items":{"type":"number"}}},"required":["x"]}`
	for seed := range 5 {
		var out struct{ Choices []structuredChoice }
		decodeBody(t, ts.post(t, "/v1/chat/completions", fmt.Sprintf(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":40,"seed":%d,
			"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}`, seed, schema)), http.StatusOK, &out)
		if out.Choices[0].FinishReason != "stop" {
			t.Errorf("finish %q", out.Choices[0].FinishReason)
		}
		schematest.Check(t, schema, *out.Choices[0].Message.Content)
	}
	// A forced call is written between the template's <tool_call> tags.
	for _, choice := range []string{`"required"`, `{"type":"function","function":{"name":"f"}}`} {
		var out struct{ Choices []structuredChoice }
		decodeBody(t, ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":60,"tool_choice":`+choice+`,
			"tools":[{"type":"function","function":{"name":"f","parameters":`+schema+`}},{"type":"function","function":{"name":"g"}}]}`), http.StatusOK, &out)
		ch := out.Choices[0]
		if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 1 {
			t.Fatalf("tool_choice %s: %+v", choice, ch)
		}
		switch c := ch.Message.ToolCalls[0].Function; c.Name {
		case "f":
			schematest.Check(t, schema, c.Arguments)
		case "g":
			schematest.Check(t, `{"type":"object"}`, c.Arguments)
		default:
			t.Fatalf("called %q", c.Name)
		}
	}
}

// TestStructuredOutputErrors: what cannot be enforced is a 400 naming the
// field (and, in the message, the keyword).
func TestStructuredOutputErrors(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt-oss", engine.Config{CtxSize: 512}, nil)
	plain := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{CtxSize: 512}, nil)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, c := range []struct {
		ts                *testServer
		path, body, param string
		keyword           string
	}{
		{ts, "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"d":{"type":"string","format":"date"}}}}}}`, "response_format.json_schema.schema", `"format" at /properties/d`},
		{ts, "/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"xml"}}`, "response_format.type", ""},
		{ts, "/v1/chat/completions", `{` + msgs + `,"tools":[{"type":"function","function":{"name":"f","strict":true,"parameters":{"type":"object","properties":{"n":{"type":"integer","maximum":3}}}}}]}`, "tools[0].function.parameters", `"maximum"`},
		{ts, "/v1/chat/completions", `{` + msgs + `,"max_reasoning_tokens":-1,"response_format":{"type":"json_object"}}`, "max_reasoning_tokens", ""},
		{ts, "/v1/responses", `{"input":"hi","text":{"format":{"type":"json_schema","name":"x","schema":{"oneOf":[]}}}}`, "text.format.schema", `"oneOf"`},
		{ts, "/v1/responses", `{"input":"hi","tools":[{"type":"function","name":"f","strict":true,"parameters":{"type":"object","patternProperties":{}}}]}`, "tools[0].parameters", `"patternProperties"`},
		{plain, "/v1/chat/completions", `{` + msgs + `,"tool_choice":"required","tools":[{"type":"function","function":{"name":"f"}}]}`, "tool_choice", "harmony"},
	} {
		e := wantOpenAIError(t, c.ts.post(t, c.path, c.body), http.StatusBadRequest, "invalid_request_error", "invalid_request")
		if e.Param == nil || *e.Param != c.param || !strings.Contains(e.Message, c.keyword) {
			t.Errorf("%s: param %v, message %q; want %q and %q", c.body, e.Param, e.Message, c.param, c.keyword)
		}
	}
}

// TestStructuredOutputPrompt: a harmony prompt describes the json_schema
// format at the end of the developer message, as the harmony format asks.
func TestStructuredOutputPrompt(t *testing.T) {
	rec := &recorder{next: func([]int32) int32 { return '{' }}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 1024}, "gpt-oss", engine.Config{}, nil)
	resp := ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":30,
		"response_format":{"type":"json_schema","json_schema":{"name":"point","description":"A point.","schema":{"type": "object", "properties": {"x": {"type": "number"}}}}}}`)
	resp.Body.Close()
	want := "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Response Formats\n\n## point\n\n// A point.\n" +
		`{"type":"object","properties":{"x":{"type":"number"}}}<|end|>`
	if got := (enginetest.Tokenizer{}).Decode(rec.prompt); !strings.Contains(got, want) {
		t.Errorf("prompt %q lacks %q", got, want)
	}
}
