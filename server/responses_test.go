package server

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"orcd/chat"
	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/harmony"
)

// wantHarmonyPrompt checks that prompt is conv rendered as harmony, special
// tokens by id.
func wantHarmonyPrompt(t *testing.T, prompt []int32, conv harmony.Conversation) {
	t.Helper()
	p, err := harmony.Render(conv)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := p.Tokens(enginetest.Tokenizer{})
	if !slices.Equal(prompt, want) {
		t.Errorf("prompt %q\nwant   %q", (enginetest.Tokenizer{}).Decode(prompt), p.String())
	}
}

// respObject is a response as a client reads it.
type respObject struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Status            string `json:"status"`
	IncompleteDetails *struct {
		Reason string `json:"reason"`
	} `json:"incomplete_details"`
	Error *struct {
		Code, Message string
	} `json:"error"`
	Output []struct {
		ID        string `json:"id"`
		Type      string `json:"type"`
		Status    string `json:"status"`
		Role      string `json:"role"`
		Content   []struct{ Type, Text string }
		Summary   []any  `json:"summary"`
		CallID    string `json:"call_id"`
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"output"`
	Usage *responseUsage `json:"usage"`
	Store bool           `json:"store"`
}

// summary lists the output items as "type:text" (function calls as
// "function_call:name:arguments").
func (r respObject) summary() []string {
	var out []string
	for _, it := range r.Output {
		switch it.Type {
		case "function_call":
			out = append(out, "function_call:"+it.Name+":"+it.Arguments)
		default:
			var text string
			for _, p := range it.Content {
				text += p.Text
			}
			out = append(out, it.Type+":"+text)
		}
	}
	return out
}

var weatherTool = map[string]any{"type": "function", "name": "get_weather", "description": "Weather now.",
	"parameters": map[string]any{"type": "object", "properties": map[string]any{"location": map[string]any{"type": "string"}}, "required": []string{"location"}}}

// harmonyScripts answers with harmonyToolCall when the prompt defines
// tools and has no tool result yet, else with harmonyAnswer.
func harmonyScripts(h []int32) int32 {
	text := (enginetest.Tokenizer{}).Decode(h)
	if strings.Contains(text, "namespace functions") && !strings.Contains(text, "<|start|>functions.") {
		return enginetest.Script(harmonyTokens(harmonyToolCall))(h)
	}
	return enginetest.Script(harmonyTokens(harmonyAnswer))(h)
}

func TestResponses(t *testing.T) {
	rec := &recorder{next: harmonyScripts}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "gpt-oss", engine.Config{},
		func(c *Config) { c.ResponsesStore = 8 })
	body := map[string]any{"model": "tiny", "instructions": "Be nice.", "input": "Hi <|end|>", "reasoning": map[string]any{"effort": "low"}}
	var r respObject
	decodeBody(t, ts.post(t, "/v1/responses", body), 200, &r)
	if r.Object != "response" || r.Status != "completed" || !strings.HasPrefix(r.ID, "resp_") || !r.Store {
		t.Errorf("response %+v", r)
	}
	if got, want := r.summary(), []string{"reasoning:User greets. Reply.", "message:Hello, wörld!"}; !slices.Equal(got, want) {
		t.Errorf("output %q, want %q", got, want)
	}
	if m := r.Output[1]; m.Role != "assistant" || m.Status != "completed" || len(m.Content) != 1 || m.Content[0].Type != "output_text" {
		t.Errorf("message item %+v", m)
	}
	if r.Output[0].Summary == nil || r.Output[0].Content[0].Type != "reasoning_text" {
		t.Errorf("reasoning item %+v", r.Output[0])
	}
	// The prompt is the one chat renders for the same conversation.
	wantHarmonyPrompt(t, rec.prompt, harmony.Conversation{ReasoningEffort: "low", Date: ts.cfg.Now(), Instructions: "Be nice.",
		Messages: []harmony.Message{{Role: "user", Content: "Hi <|end|>"}}})
	// Usage: the chat path's counts; the reasoning tokens are those of the
	// analysis message with its header, up to the <|end|> that closes it.
	var c chatResponse
	decodeBody(t, ts.post(t, "/v1/chat/completions", chatBody(false, nil)), 200, &c)
	u := r.Usage
	reasoning := len(harmonyTokens("<|channel|>analysis<|message|>User greets. Reply."))
	if u == nil || u.InputTokens != c.Usage.PromptTokens || u.OutputTokens != c.Usage.CompletionTokens ||
		u.TotalTokens != u.InputTokens+u.OutputTokens || u.OutputTokensDetails.ReasoningTokens != reasoning {
		t.Errorf("usage %+v, want input %d output %d reasoning %d", u, c.Usage.PromptTokens, c.Usage.CompletionTokens, reasoning)
	}

	// The same response, streamed.
	body["stream"] = true
	evs, final := responseEvents(t, ts.post(t, "/v1/responses", body))
	wantEvents := []string{"response.created", "response.in_progress",
		"response.output_item.added", "response.content_part.added", "response.reasoning_text.delta*", "response.reasoning_text.done",
		"response.content_part.done", "response.output_item.done",
		"response.output_item.added", "response.content_part.added", "response.output_text.delta*", "response.output_text.done",
		"response.content_part.done", "response.output_item.done", "response.completed"}
	checkEventOrder(t, evs, wantEvents)
	if got := final.summary(); !slices.Equal(got, r.summary()) || final.Usage == nil || *final.Usage != *r.Usage {
		t.Errorf("streamed final %q %+v", got, final.Usage)
	}
	var text, thought string
	for _, ev := range evs {
		switch ev["type"] {
		case "response.output_text.delta":
			text += ev["delta"].(string)
		case "response.reasoning_text.delta":
			thought += ev["delta"].(string)
		}
	}
	if text != "Hello, wörld!" || thought != "User greets. Reply." {
		t.Errorf("streamed text %q reasoning %q", text, thought)
	}

	// Cut short: incomplete.
	cut := len(harmonyTokens("<|channel|>analysis<|message|>User"))
	decodeBody(t, ts.post(t, "/v1/responses", map[string]any{"input": "Hi", "max_output_tokens": cut}), 200, &r)
	if r.Status != "incomplete" || r.IncompleteDetails == nil || r.IncompleteDetails.Reason != "max_output_tokens" || r.Usage.OutputTokens != cut ||
		!slices.Equal(r.summary(), []string{"reasoning:User"}) || r.Output[0].Status != "incomplete" {
		t.Errorf("incomplete: %+v %q", r, r.summary())
	}
	evs, _ = responseEvents(t, ts.post(t, "/v1/responses", map[string]any{"input": "Hi", "max_output_tokens": cut, "stream": true}))
	if last := evs[len(evs)-1]["type"]; last != "response.incomplete" {
		t.Errorf("cut stream ends with %v", last)
	}
}

// responseEvents reads a Responses stream: named events whose data's type
// is the name, numbered from 0; it returns them and the final response.
func responseEvents(t *testing.T, resp *http.Response) ([]map[string]any, respObject) {
	t.Helper()
	defer resp.Body.Close()
	var out []map[string]any
	var final respObject
	for i, ev := range newSSEReader(t, resp).all(t) {
		var m map[string]any
		ev.decode(t, &m)
		if m["type"] != ev.name || m["sequence_number"] != float64(i) {
			t.Fatalf("event %d: name %q, data type %v, sequence_number %v", i, ev.name, m["type"], m["sequence_number"])
		}
		if r, ok := m["response"]; ok {
			b, _ := json.Marshal(r)
			final = respObject{}
			json.Unmarshal(b, &final)
		}
		out = append(out, m)
	}
	return out, final
}

// checkEventOrder matches event types against want, where "x*" is one or
// more events of type x.
func checkEventOrder(t *testing.T, evs []map[string]any, want []string) {
	t.Helper()
	var got []string
	for _, ev := range evs {
		typ := ev["type"].(string)
		if n := len(got); n > 0 && (got[n-1] == typ || got[n-1] == typ+"*") {
			got[n-1] = typ + "*"
			continue
		}
		got = append(got, typ)
	}
	// A single delta is still "x*".
	for i, w := range want {
		if i < len(got) && strings.HasSuffix(w, "*") && got[i] == strings.TrimSuffix(w, "*") {
			got[i] = w
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("events\n%q\nwant\n%q", got, want)
	}
}

func TestResponsesToolCall(t *testing.T) {
	rec := &recorder{next: harmonyScripts}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "gpt-oss", engine.Config{},
		func(c *Config) { c.ResponsesStore = 2 })
	tools := []map[string]any{weatherTool}
	var r respObject
	decodeBody(t, ts.post(t, "/v1/responses", map[string]any{"input": "Weather in SF?", "tools": tools}), 200, &r)
	if got, want := r.summary(), []string{"reasoning:Need the weather.", `function_call:get_weather:{"location":"SF"}`}; !slices.Equal(got, want) {
		t.Fatalf("output %q, want %q", got, want)
	}
	call := r.Output[1]
	if !strings.HasPrefix(call.CallID, "call_") || !strings.HasPrefix(call.ID, "fc_") || call.Status != "completed" {
		t.Errorf("call %+v", call)
	}

	evs, final := responseEvents(t, ts.post(t, "/v1/responses", map[string]any{"input": "Weather in SF?", "tools": tools, "stream": true}))
	checkEventOrder(t, evs, []string{"response.created", "response.in_progress",
		"response.output_item.added", "response.content_part.added", "response.reasoning_text.delta*", "response.reasoning_text.done",
		"response.content_part.done", "response.output_item.done",
		"response.output_item.added", "response.function_call_arguments.delta*", "response.function_call_arguments.done",
		"response.output_item.done", "response.completed"})
	var args string
	for _, ev := range evs {
		if ev["type"] == "response.function_call_arguments.delta" {
			args += ev["delta"].(string)
		}
	}
	if args != `{"location":"SF"}` || !slices.Equal(final.summary(), r.summary()) {
		t.Errorf("streamed arguments %q, final %q", args, final.summary())
	}

	// The result goes back by previous_response_id: the prompt carries the
	// whole conversation, as chat renders it.
	rec.mu.Lock()
	rec.prompt = nil
	rec.mu.Unlock()
	var r2 respObject
	decodeBody(t, ts.post(t, "/v1/responses", map[string]any{"previous_response_id": r.ID, "tools": tools,
		"input": []map[string]any{{"type": "function_call_output", "call_id": call.CallID, "output": `{"temp":20}`}}}), 200, &r2)
	if got := r2.summary(); !slices.Equal(got, []string{"reasoning:User greets. Reply.", "message:Hello, wörld!"}) {
		t.Errorf("second turn %q", got)
	}
	conv := harmony.Conversation{Date: ts.cfg.Now(),
		Tools: []harmony.Tool{{Name: "get_weather", Description: "Weather now.",
			Parameters: json.RawMessage(`{"properties":{"location":{"type":"string"}},"required":["location"],"type":"object"}`)}},
		Messages: []harmony.Message{{Role: "user", Content: "Weather in SF?"},
			{Role: "assistant", Reasoning: "Need the weather.", ToolCalls: []harmony.ToolCall{{Name: "get_weather", Arguments: `{"location":"SF"}`}}},
			{Role: "tool", ToolName: "get_weather", Content: `{"temp":20}`}}}
	rec.mu.Lock()
	wantHarmonyPrompt(t, rec.prompt, conv)
	rec.mu.Unlock()

	// The same conversation sent as items gives the same prompt.
	rec.mu.Lock()
	rec.prompt = nil
	rec.mu.Unlock()
	resp := ts.post(t, "/v1/responses", map[string]any{"tools": tools, "store": false, "input": []map[string]any{
		{"role": "user", "content": []map[string]any{{"type": "input_text", "text": "Weather in SF?"}}},
		{"type": "reasoning", "id": "rs_1", "summary": []any{}, "content": []map[string]any{{"type": "reasoning_text", "text": "Need the weather."}}},
		{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": `{"location":"SF"}`},
		{"type": "function_call_output", "call_id": "c1", "output": `{"temp":20}`},
	}})
	var r3 respObject
	decodeBody(t, resp, 200, &r3)
	rec.mu.Lock()
	wantHarmonyPrompt(t, rec.prompt, conv)
	rec.mu.Unlock()

	// store false keeps nothing; the store keeps the 2 most recently used
	// (r2, r), so one more stored response drops r.
	var r4 respObject
	decodeBody(t, ts.post(t, "/v1/responses", map[string]any{"input": "Hi"}), 200, &r4)
	for _, id := range []string{r3.ID, r.ID} {
		e := wantOpenAIError(t, ts.post(t, "/v1/responses", map[string]any{"previous_response_id": id, "input": "again"}),
			http.StatusNotFound, "invalid_request_error", "not_found")
		if e.Param == nil || *e.Param != "previous_response_id" {
			t.Errorf("param %v", e.Param)
		}
	}
	got, err := http.Get(ts.url + "/v1/responses/" + r2.ID)
	if err != nil {
		t.Fatal(err)
	}
	var stored respObject
	decodeBody(t, got, 200, &stored)
	if stored.ID != r2.ID || !slices.Equal(stored.summary(), r2.summary()) {
		t.Errorf("stored %+v", stored)
	}
	// Deleted, it is gone.
	del := func() *http.Response {
		req, _ := http.NewRequest(http.MethodDelete, ts.url+"/v1/responses/"+r2.ID, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var deleted struct {
		ID, Object string
		Deleted    bool
	}
	decodeBody(t, del(), 200, &deleted)
	if deleted.ID != r2.ID || deleted.Object != "response.deleted" || !deleted.Deleted {
		t.Errorf("delete: %+v", deleted)
	}
	wantOpenAIError(t, del(), http.StatusNotFound, "invalid_request_error", "not_found")
}

func TestResponsesErrors(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: harmonyScripts, Ctx: 1024}, "gpt-oss", engine.Config{}, nil)
	for _, c := range []struct {
		body, param string
	}{
		{`{"input":"hi","text":{"format":{"type":"json_schema","name":"x","schema":{"type":"string","pattern":"a"}}}}`, "text.format.schema"},
		{`{"input":"hi","text":{"format":{"type":"yaml"}}}`, "text.format.type"},
		{`{"input":"hi","tool_choice":"required"}`, "tool_choice"},
		{`{"input":"hi","tool_choice":{"type":"function","name":"get_weather"}}`, "tool_choice.name"},
		{`{"input":"hi","tools":[{"type":"web_search"}]}`, "tools[0].type"},
		{`{"input":"hi","tools":[{"type":"function","name":"a.b"}]}`, "tools[0].name"},
		{`{"input":"hi","max_output_tokens":0}`, "max_output_tokens"},
		{`{"input":"hi","reasoning":{"effort":"extreme"}}`, "reasoning.effort"},
		{`{"input":""}`, "input"},
		{`{"input":[]}`, "input"},
		{`{"input":7}`, "input"},
		{`{"input":[{"type":"image"}]}`, "input[0].type"},
		{`{"input":[{"role":"tool","content":"x"}]}`, "input[0].role"},
		{`{"input":[{"role":"user","content":[{"type":"input_image"}]}]}`, "input[0].content[0].type"},
		{`{"input":[{"role":"user","content":"hi","Role":"x"}]}`, "input[0].Role"},
		{`{"input":[{"type":"function_call","name":"f","arguments":"{}"}]}`, "input[0].call_id"},
		{`{"input":[{"type":"function_call_output","call_id":"nope","output":"x"}]}`, "input[0].call_id"},
		{`{"input":"hi","temperature":-1}`, "temperature"},
		{`{"input":"hi","background":true}`, "background"},
		{`{"input":"hi","tools":[{"type":"function","name":"f","parameters":` + strings.Repeat(`{"a":`, 70) + `1` + strings.Repeat(`}`, 70) + `}]}`, "tools[0].parameters"},
		{`{"input":"` + strings.Repeat("long ", 1000) + `"}`, "input"},
	} {
		resp := ts.post(t, "/v1/responses", c.body)
		status := http.StatusBadRequest
		e := wantOpenAIError(t, resp, status, "invalid_request_error", "invalid_request")
		if e.Param == nil || *e.Param != c.param {
			t.Errorf("%s: param %v, want %q (%s)", c.body, e.Param, c.param, e.Message)
		}
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// A response that fails mid-stream ends with response.failed; one that
// fails before streaming is an error object.
func TestResponsesFailed(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Delay: 5 * time.Millisecond}, "gpt2", engine.Config{Timeout: 50 * time.Millisecond}, nil)
	evs, final := responseEvents(t, ts.post(t, "/v1/responses", map[string]any{"input": "Hi", "stream": true, "max_output_tokens": 1000}))
	if last := evs[len(evs)-1]["type"]; last != "response.failed" || final.Status != "failed" || final.Error == nil ||
		final.Error.Code != "inference_timeout" || final.Error.Message == "" {
		t.Errorf("last event %v, response %+v", last, final)
	}
	wantOpenAIError(t, ts.post(t, "/v1/responses", map[string]any{"input": "Hi", "max_output_tokens": 1000}),
		http.StatusGatewayTimeout, "timeout", "inference_timeout")
}

// On a template model, a response renders its input and tools as the
// equivalent chat request does (tools printed as JSON, keys in chat's
// order), and the template's tagged tool calls become function_call items.
func TestResponsesTemplate(t *testing.T) {
	tmpl, err := chat.Compile(`{%- for t in tools %}{{ t | tojson }}{% endfor %}`+
		`{%- for m in messages %}<{{ m.role }}>{{ m.content }}{% for c in m.tool_calls %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{% endfor %}`+
		`{%- if add_generation_prompt %}<assistant>{% endif %}`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	out := "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>"
	rec := &recorder{next: enginetest.TextScript(out)}
	ts := newTestServer(t, &enginetest.Model{Next: rec.Next, Ctx: 4096}, "qwen2", engine.Config{}, func(c *Config) {
		c.Model.Chat, c.Template, c.Tokenizer = ChatTemplate, tmpl, byteSpecials{}
	})
	// The chat request as clients write it, keys in this order.
	const params = `{"type":"object","properties":{"location":{"type":"string"}}}`
	decodeBody(t, ts.post(t, "/v1/chat/completions", `{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather?"}],`+
		`"tools":[{"type":"function","function":{"name":"get_weather","description":"Now.","parameters":`+params+`}}]}`), 200, &chatResponse{})
	chatPrompt := rec.prompt
	rec.prompt = nil
	var r respObject
	decodeBody(t, ts.post(t, "/v1/responses", map[string]any{"instructions": "Be brief.", "input": "Weather?",
		"tools": []map[string]any{{"type": "function", "name": "get_weather", "description": "Now.", "parameters": json.RawMessage(params)}}}), 200, &r)
	if !slices.Equal(rec.prompt, chatPrompt) {
		t.Errorf("responses prompt %q\nchat prompt      %q", (enginetest.Tokenizer{}).Decode(rec.prompt), (enginetest.Tokenizer{}).Decode(chatPrompt))
	}
	if got := r.summary(); !slices.Equal(got, []string{"message:Checking.\n", `function_call:get_weather:{"location":"Paris"}`}) {
		t.Errorf("output %q", got)
	}
}

// A random-weight gpt-oss model emits special tokens anywhere: every
// response is still well formed, streamed or not, and the streamed deltas
// add up to the final items.
func TestResponsesRandomHarmony(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Ctx: 4096}, "gpt-oss", engine.Config{MaxActive: 4}, func(c *Config) { c.ResponsesStore = 4 })
	for range 12 {
		// Responses have no seed: each run samples anew from the fake
		// model's pseudo-random logits.
		body := map[string]any{"input": "Hi", "max_output_tokens": 200, "temperature": 1.5, "stream": true,
			"tools": []map[string]any{weatherTool}}
		evs, final := responseEvents(t, ts.post(t, "/v1/responses", body))
		if final.Status != "completed" && final.Status != "incomplete" {
			t.Fatalf("status %q", final.Status)
		}
		texts := map[string]string{}
		for _, ev := range evs {
			if d, ok := ev["delta"].(string); ok {
				texts[ev["item_id"].(string)] += d
			}
		}
		for _, it := range final.Output {
			got := it.Arguments
			for _, p := range it.Content {
				got += p.Text
			}
			if got != texts[it.ID] {
				t.Errorf("item %s (%s): final %q, deltas %q", it.ID, it.Type, got, texts[it.ID])
			}
			for _, sp := range enginetest.Specials {
				if strings.Contains(got, sp) {
					t.Errorf("control token %s in %s: %q", sp, it.Type, got)
				}
			}
		}
		if u := final.Usage; u == nil || u.OutputTokensDetails.ReasoningTokens > u.OutputTokens {
			t.Errorf("usage %+v", u)
		}
	}
}
