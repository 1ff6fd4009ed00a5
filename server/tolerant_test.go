package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/internal/testutil"
)

// OpenAI request fields orcd does not know are accepted and listed in a
// header; moot ones are accepted silently; ones that would change the
// output are refused naming the field; the worker API stays strict.
func TestTolerantRequests(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	const msgs = `"messages":[{"role":"user","content":"hi","future":1}]`
	for _, c := range []struct {
		path, body, header string
	}{
		{"/v1/chat/completions", `{` + msgs + `,"max_tokens":2,"new_knob":{"a":[1]},"metadata":{"k":"v"},"service_tier":"auto","store":true,` +
			`"user":"u","prompt_cache_key":"p","safety_identifier":"s","stream_options":{"include_obfuscation":false},"parallel_tool_calls":true}`,
			"messages[0].future,new_knob"},
		{"/v1/completions", `{"prompt":"a","max_tokens":2,"metadata":{},"parallel_tool_calls":false}`, ""},
		{"/v1/completions", `{"prompt":"a","max_tokens":2,"zzz":null,"yyy":true}`, "zzz,yyy"},
		{"/v1/responses", `{"input":[{"role":"user","content":"hi","extra":1}],"max_output_tokens":2,"user":"u","new":1}`, "new,input[0].extra"},
		// Unimplemented fields whose values ask for nothing.
		{"/v1/chat/completions", `{` + msgs + `,"max_tokens":2,"logprobs":false,"top_logprobs":0,"logit_bias":null,"response_format":{"type":"text"},` +
			`"modalities":["text"],"audio":null,"functions":[],"prediction":{}}`, "messages[0].future"},
		{"/v1/completions", `{"prompt":"a","max_tokens":2,"echo":false,"best_of":1,"logprobs":null,"suffix":""}`, ""},
		{"/v1/responses", `{"input":"hi","max_output_tokens":2,"include":["reasoning.encrypted_content"],"truncation":"disabled","background":false,` +
			`"stream_options":{"include_obfuscation":true}}`, ""},
		// At most 16 named, across the body and the input items.
		{"/v1/responses", `{"input":[{"role":"user","content":"hi"` + manyFields("i", 10) + `}],"max_output_tokens":2` + manyFields("b", 10) + `}`,
			"b0,b1,b2,b3,b4,b5,b6,b7,b8,b9,input[0].i0,input[0].i1,input[0].i2,input[0].i3,input[0].i4,input[0].i5,+4 more"},
		{"/v1/completions", `{"prompt":"a","max_tokens":1` + manyFields("x", 1000) + `}`,
			"x0,x1,x2,x3,x4,x5,x6,x7,x8,x9,x10,x11,x12,x13,x14,x15,+984 more"},
	} {
		resp := ts.post(t, c.path, c.body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s %s: status %d", c.path, c.body, resp.StatusCode)
		}
		if got := resp.Header.Get(ignoredFieldsHeader); got != c.header {
			t.Errorf("%s %s: %s %q, want %q", c.path, c.body, ignoredFieldsHeader, got, c.header)
		}
	}

	for _, c := range []struct {
		path, body, param string
	}{
		{"/v1/chat/completions", `{` + msgs + `,"logit_bias":{"5":1}}`, "logit_bias"},
		{"/v1/chat/completions", `{` + msgs + `,"top_logprobs":3}`, "top_logprobs"},
		{"/v1/chat/completions", `{` + msgs + `,"logprobs":true,"top_logprobs":21}`, "top_logprobs"},
		{"/v1/chat/completions", `{` + msgs + `,"logprobs":true,"top_logprobs":-1}`, "top_logprobs"},
		{"/v1/chat/completions", `{` + msgs + `,"logprobs":1}`, "logprobs"},
		{"/v1/responses", `{"input":"hi","top_logprobs":2}`, "top_logprobs"},
		{"/v1/completions", `{"prompt":"a","echo":"yes"}`, "echo"},
		{"/v1/completions", `{"prompt":"a","suffix":"z"}`, "suffix"},
		{"/v1/completions", `{"prompt":"a","best_of":2}`, "best_of"},
		{"/v1/completions", `{"prompt":"a","logprobs":21}`, "logprobs"},
		{"/v1/completions", `{"prompt":"a","logprobs":true}`, "logprobs"},
		{"/v1/chat/completions", `{` + msgs + `,"modalities":["text","audio"]}`, "modalities"},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{}}}`, "response_format.json_schema.schema"},
		{"/v1/chat/completions", `{` + msgs + `,"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"object","properties":{"a":{"type":"integer","minimum":1}}}}}}`, "response_format.json_schema.schema"},
		{"/v1/chat/completions", `{` + msgs + `,"logit_bias":{"x":[1,{"a":1,"a":2}]}}`, "logit_bias.x[1].a"},
		{"/v1/responses", `{"input":"hi","include":["message.output_text.logprobs"]}`, "include"},
		{"/v1/responses", `{"input":"hi","truncation":"auto"}`, "truncation"},
		{"/v1/responses", `{"input":"hi","max_tool_calls":-1}`, "max_tool_calls"},
		{"/v1/chat/completions", `{` + msgs + `,"Temperature":1}`, "Temperature"},
		{"/v1/chat/completions", `{` + msgs + `,"temperature":5}`, "temperature"},
		{"/v1/chat/completions", `{"messages":[{"role":"wizard","content":"hi"}]}`, "messages[0].role"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, "messages[0].content[0].type"},
		{"/v1/chat/completions", `{` + msgs + `,"tool_choice":"required"}`, "tool_choice"},
		{"/v1/chat/completions", `{` + msgs + `,"tool_choice":{"type":"function","function":{"name":"f"}}}`, "tool_choice.function.name"},
		{"/v1/chat/completions", `{` + msgs + `,"tool_choice":"sometimes"}`, "tool_choice"},
		{"/v1/chat/completions", `{` + msgs + `,"tool_choice":{"type":"function","function":{"name":"a b"}}}`, "tool_choice.function.name"},
		{"/v1/chat/completions", `{` + msgs + `,"reasoning_effort":"max"}`, "reasoning_effort"},
		{"/v1/chat/completions", `{` + msgs + `,"n":9}`, "n"},
		{"/v1/completions", `{"prompt":"a","max_tokens":0}`, "max_tokens"},
		{"/v1/completions", `{"model":"other","prompt":"a"}`, "model"},
	} {
		status := http.StatusBadRequest
		if c.param == "model" {
			status = http.StatusNotFound
		}
		e := wantOpenAIError(t, ts.post(t, c.path, c.body), status, "invalid_request_error", strings.ToLower(map[int]string{400: codeInvalidRequest, 404: codeNotFound}[status]))
		if e.Param == nil || *e.Param != c.param {
			t.Errorf("%s %s: param %v, want %q (%s)", c.path, c.body, e.Param, c.param, e.Message)
		}
	}
	// Errors of rendering name their field too.
	hs := newTestServer(t, &enginetest.Model{}, "gpt-oss", engine.Config{}, nil)
	deep := strings.Repeat(`{"a":`, 70) + `1` + strings.Repeat(`}`, 70)
	e := wantOpenAIError(t, hs.post(t, "/v1/chat/completions", `{`+msgs+`,"tools":[{"type":"function","function":{"name":"f"}},`+
		`{"type":"function","function":{"name":"g","parameters":`+deep+`}}]}`), 400, "invalid_request_error", "invalid_request")
	if e.Param == nil || *e.Param != "tools[1].function.parameters" {
		t.Errorf("deep parameters: param %v (%s)", e.Param, e.Message)
	}
	// An error about the body as a whole names no field.
	if e := wantOpenAIError(t, ts.post(t, "/v1/completions", `{"prompt":`), 400, "invalid_request_error", "invalid_request"); e.Param != nil {
		t.Errorf("truncated body: param %q", *e.Param)
	}
	// The worker API refuses unknown fields.
	wantError(t, ts.post(t, "/execute", `{"job_id":"a","prompt":"hi","metadata":{}}`), http.StatusBadRequest, codeInvalidRequest)
}

// Every unknown route and wrong method is answered in the API's JSON error
// shape; /v1/models/{id} serves the model.
func TestRoutes(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	get := func(path string) *http.Response {
		resp, err := http.Get(ts.url + path)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for _, p := range []string{"/v1/nothing", "/v1/models/", "/v1/chat/completions/x", "/v1/responses/resp_unknown"} {
		wantOpenAIError(t, get(p), http.StatusNotFound, "invalid_request_error", "not_found")
	}
	wantError(t, get("/nothing"), http.StatusNotFound, codeNotFound)
	for _, p := range []string{"/v1/chat/completions", "/v1/responses", "/v1/completions"} {
		wantOpenAIError(t, get(p), http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed")
	}
	wantOpenAIError(t, ts.post(t, "/v1/models/tiny", `{}`), http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed")
	wantError(t, get("/execute"), http.StatusMethodNotAllowed, codeMethodNotAllowed)

	var m modelObject
	decodeBody(t, get("/v1/models/tiny"), http.StatusOK, &m)
	if m.ID != "tiny" || m.Object != "model" || m.OwnedBy != "orcd" {
		t.Errorf("model %+v", m)
	}
	e := wantOpenAIError(t, get("/v1/models/gpt-5"), http.StatusNotFound, "invalid_request_error", "not_found")
	if e.Param == nil || *e.Param != "model" {
		t.Errorf("unknown model: param %v", e.Param)
	}
	wantOpenAIError(t, get("/v1/models/org/tiny"), http.StatusNotFound, "invalid_request_error", "not_found")
}

// manyFields is n unknown fields, `,"prefix0":0,...`.
func manyFields(prefix string, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"%s%d":0`, prefix, i)
	}
	return b.String()
}

// A browser client may read the header of ignored fields.
func TestIgnoredFieldsHeaderExposed(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.AllowedOrigins = []string{"*"} })
	req, _ := http.NewRequest("POST", ts.url+"/v1/completions", strings.NewReader(`{"prompt":"a","max_tokens":1,"odd":1}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", "https://app.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get(ignoredFieldsHeader) != "odd" || !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), ignoredFieldsHeader) {
		t.Errorf("headers %v", resp.Header)
	}
}

// A moot field is logged at debug level once, however many requests carry
// it; unknown fields are not logged.
func TestMootFieldsLoggedOnce(t *testing.T) {
	var logs testutil.SyncBuffer
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	for range 3 {
		resp := ts.post(t, "/v1/completions", `{"prompt":"a","max_tokens":1,"metadata":{"k":"v"},"user":"u","odd":1,"suffix":null}`)
		resp.Body.Close()
	}
	for field, want := range map[string]int{"metadata": 1, "suffix": 1, "odd": 0} {
		if n := strings.Count(logs.String(), "accepted and ignored: it does not change the output (logged once)\" field="+field+"\n"); n != want {
			t.Errorf("%s logged %d times, want %d:\n%s", field, n, want, logs.String())
		}
	}
}
