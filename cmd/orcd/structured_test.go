package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"orcd/backend/cuda"
	"orcd/internal/schematest"
)

// chatResult is what a chat completion answered, streamed or not.
type chatResult struct {
	content, reasoning []string // per choice
	calls              []map[string]string
	finish             []string
}

// postChat sends a chat completion and collects its choices.
func postChat(t *testing.T, uri, body string, stream bool) (int, chatResult, string) {
	t.Helper()
	if stream {
		body = strings.Replace(body, "{", `{"stream":true,`, 1)
	}
	resp, err := http.Post(uri+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r chatResult
	grow := func(i int) {
		for len(r.content) <= i {
			r.content, r.reasoning = append(r.content, ""), append(r.reasoning, "")
			r.calls, r.finish = append(r.calls, map[string]string{}), append(r.finish, "")
		}
	}
	type call struct {
		Index    *int
		Function struct{ Name, Arguments string }
	}
	type msg struct {
		Content          *string
		ReasoningContent *string `json:"reasoning_content"`
		ToolCalls        []call  `json:"tool_calls"`
	}
	type choice struct {
		Index        int
		Message      *msg
		Delta        *msg
		FinishReason *string `json:"finish_reason"`
	}
	take := func(c choice, names map[int]string) {
		grow(c.Index)
		m := c.Message
		if m == nil {
			m = c.Delta
		}
		if m != nil {
			if m.Content != nil {
				r.content[c.Index] += *m.Content
			}
			if m.ReasoningContent != nil {
				r.reasoning[c.Index] += *m.ReasoningContent
			}
			for k, tc := range m.ToolCalls {
				idx := k
				if tc.Index != nil {
					idx = *tc.Index
				}
				if tc.Function.Name != "" {
					names[c.Index*100+idx] = tc.Function.Name
				}
				r.calls[c.Index][names[c.Index*100+idx]] += tc.Function.Arguments
			}
		}
		if c.FinishReason != nil {
			r.finish[c.Index] = *c.FinishReason
		}
	}
	names := map[int]string{}
	if resp.StatusCode != 200 || !stream {
		b, _ := io.ReadAll(resp.Body)
		var out struct{ Choices []choice }
		json.Unmarshal(b, &out)
		for _, c := range out.Choices {
			take(c, names)
		}
		return resp.StatusCode, r, string(b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var raw bytes.Buffer
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		raw.WriteString(line + "\n")
		var ev struct{ Choices []choice }
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		for _, c := range ev.Choices {
			take(c, names)
		}
	}
	return resp.StatusCode, r, raw.String()
}

// testStructuredOutputs runs the structured-output checks over HTTP on a
// random-weight tiny gpt-oss served on device.
func testStructuredOutputs(t *testing.T, device, preset string) {
	path := synthTemp(t, preset, 0)
	w := startServe(t, "--model", path, "--device", device, "--ctx-size", "1024", "--max-active", "4")
	msgs := `"messages":[{"role":"user","content":"Describe a person."}]`

	// response_format json_schema: several schemas and seeds, streamed and
	// not, with n=2 (each choice constrained).
	// ORCD_STRUCTURED_SEEDS sets the seeds per schema (default 2; the
	// issue's acceptance run is 200).
	seeds := 2
	if n, err := strconv.Atoi(os.Getenv("ORCD_STRUCTURED_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	schemas := schematest.Schemas()
	for si, schema := range schemas {
		for seed := range seeds {
			stream := seed%2 == 1
			body := fmt.Sprintf(`{%s,"max_tokens":%d,"seed":%d,"n":2,"temperature":1,
				"response_format":{"type":"json_schema","json_schema":{"name":"s","strict":true,"schema":%s}}}`,
				msgs, 60+40*(seed%3), 1000*si+2*seed, schema)
			status, r, raw := postChat(t, w.uri, body, stream)
			if status != 200 || len(r.content) != 2 {
				t.Fatalf("schema %d seed %d: %d %s", si, seed, status, raw)
			}
			for i := range r.content {
				schematest.Check(t, schema, r.content[i])
				if r.finish[i] != "stop" {
					t.Errorf("schema %d seed %d choice %d: finish %q", si, seed, i, r.finish[i])
				}
			}
		}
	}

	// json_object.
	status, r, raw := postChat(t, w.uri, `{`+msgs+`,"max_tokens":50,"seed":3,"response_format":{"type":"json_object"}}`, false)
	if status != 200 {
		t.Fatalf("json_object: %d %s", status, raw)
	}
	schematest.Check(t, `{"type":"object"}`, r.content[0])

	// A forced tool call, named and required: the arguments validate.
	params := `{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}},"required":["city","unit"],"additionalProperties":false}`
	tools := `"tools":[{"type":"function","function":{"name":"get_weather","parameters":` + params + `}},
		{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{"tz":{"type":"string"}},"required":["tz"]}}}]`
	for i, choice := range []string{`{"type":"function","function":{"name":"get_weather"}}`, `"required"`} {
		for _, stream := range []bool{false, true} {
			body := fmt.Sprintf(`{%s,%s,"tool_choice":%s,"max_tokens":80,"seed":%d}`, msgs, tools, choice, i)
			status, r, raw := postChat(t, w.uri, body, stream)
			if status != 200 || len(r.calls[0]) != 1 || r.finish[0] != "tool_calls" {
				t.Fatalf("tool_choice %s: %d %+v %s", choice, status, r, raw)
			}
			for name, args := range r.calls[0] {
				switch name {
				case "get_weather":
					schematest.Check(t, params, args)
				case "get_time":
					schematest.Check(t, `{"type":"object","properties":{"tz":{"type":"string"}},"required":["tz"]}`, args)
				default:
					t.Fatalf("called %q", name)
				}
			}
		}
	}

	// A format with tools offered (auto): the answer or a call, either valid.
	for seed := range 6 {
		body := fmt.Sprintf(`{%s,%s,"max_tokens":120,"seed":%d,"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":%s}}}`,
			msgs, tools, seed, schemas[0])
		status, r, raw := postChat(t, w.uri, body, seed%2 == 1)
		switch {
		case status != 200:
			t.Fatalf("format and tools: %d %s", status, raw)
		case r.finish[0] == "tool_calls":
			for name, args := range r.calls[0] {
				if name == "get_weather" {
					schematest.Check(t, params, args)
				}
			}
		default:
			schematest.Check(t, schemas[0], r.content[0])
		}
	}

	// A tiny reasoning budget closes the reasoning: the answer arrives.
	status, r, raw = postChat(t, w.uri, `{`+msgs+`,"max_tokens":200,"seed":5,"max_reasoning_tokens":3,
		"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":`+schemas[0]+`}}}`, false)
	if status != 200 {
		t.Fatalf("budget: %d %s", status, raw)
	}
	schematest.Check(t, schemas[0], r.content[0])
	if n := len(strings.Fields(r.reasoning[0])); n > 3*4 {
		t.Errorf("reasoning of %d words under a budget of 3 tokens: %q", n, r.reasoning[0])
	}

	// text.format on /v1/responses.
	resp, err := http.Post(w.uri+"/v1/responses", "application/json", strings.NewReader(
		`{"input":"Describe a person.","max_output_tokens":80,"text":{"format":{"type":"json_schema","name":"p","schema":`+schemas[0]+`}}}`))
	if err != nil {
		t.Fatal(err)
	}
	var rr struct {
		Status string
		Output []struct {
			Type    string
			Content []struct{ Type, Text string }
		}
	}
	json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	var text string
	for _, o := range rr.Output {
		for _, c := range o.Content {
			if o.Type == "message" && c.Type == "output_text" {
				text += c.Text
			}
		}
	}
	if resp.StatusCode != 200 || rr.Status != "completed" {
		t.Fatalf("responses: %d %+v", resp.StatusCode, rr)
	}
	schematest.Check(t, schemas[0], text)

	// A schema keyword orcd cannot enforce: 400 naming the field and keyword.
	status, _, raw = postChat(t, w.uri, `{`+msgs+`,"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"string","pattern":"^a"}}}}`, false)
	if status != 400 || !strings.Contains(raw, `"param":"response_format.json_schema.schema"`) || !strings.Contains(raw, "pattern") {
		t.Errorf("bad schema: %d %s", status, raw)
	}
}

func TestServeStructuredOutputs(t *testing.T) {
	testStructuredOutputs(t, "cpu", "tiny-gpt-oss")
}

// TestServeStructuredOutputsCUDA runs the structured-output checks on the
// GPU machine: constrained rows are drawn on the host from logits read
// before the device sampler, free rows on the device.
func TestServeStructuredOutputsCUDA(t *testing.T) {
	if !cuda.Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	testStructuredOutputs(t, "cuda", "tiny-gpt-oss")
}

// TestServeStructuredOutputsQwen2 serves the tiny random-weight qwen2
// checkpoint (its Qwen2.5 template writes calls between <tool_call> tags):
// the answer is the JSON value, and a forced call comes back as a tool call
// whose arguments validate.
func TestServeStructuredOutputsQwen2(t *testing.T) {
	w := startServe(t, "--model", filepath.Join(hfFixtureDir, "tiny_qwen2"), "--ctx-size", "1024")
	schemas := schematest.Schemas()
	msgs := `"messages":[{"role":"user","content":"Describe a person."}]`
	for si, schema := range schemas[:8] {
		body := fmt.Sprintf(`{%s,"max_tokens":80,"seed":%d,"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":%s}}}`, msgs, si, schema)
		status, r, raw := postChat(t, w.uri, body, si%2 == 1)
		if status != 200 {
			t.Fatalf("schema %d: %d %s", si, status, raw)
		}
		schematest.Check(t, schema, r.content[0])
	}
	params := `{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city","days"],"additionalProperties":false}`
	for _, stream := range []bool{false, true} {
		body := `{` + msgs + `,"max_tokens":80,"tool_choice":"required","tools":[{"type":"function","function":{"name":"forecast","parameters":` + params + `}}]}`
		status, r, raw := postChat(t, w.uri, body, stream)
		if status != 200 || r.finish[0] != "tool_calls" || len(r.calls[0]) != 1 {
			t.Fatalf("forced call: %d %+v %s", status, r, raw)
		}
		schematest.Check(t, params, r.calls[0]["forecast"])
	}
}
