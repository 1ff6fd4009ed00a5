package server

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/internal/schematest"
)

// clientDir holds the npm project that drives the server with the official
// openai package (installed by `npm ci` there; .ci/run does it).
const clientDir = "testdata/openai-client"

// nodeClient returns the node binary, skipping the test when node or the
// installed openai package is missing, unless ORCD_REQUIRE_OPENAI_CLIENT=1
// (set by CI) makes that a failure.
func nodeClient(t *testing.T) string {
	t.Helper()
	missing := func(why string) {
		if os.Getenv("ORCD_REQUIRE_OPENAI_CLIENT") == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed; the openai npm client test needs node 20+ and `npm ci` in server/" + clientDir)
	}
	if _, err := os.Stat(filepath.Join(clientDir, "node_modules", "openai", "package.json")); err != nil {
		missing("the openai npm package is not installed; run `npm ci` in server/" + clientDir)
	}
	return node
}

// clientResult is what client.mjs prints.
type clientResult struct {
	Models []string `json:"models"`
	Plain  struct {
		Object, Role, Finish string
		Content, Reasoning   *string
		Usage                usage
	} `json:"plain"`
	Streamed struct {
		Content, Reasoning, Finish string
		Usage                      *usage
		Chunks                     int
	} `json:"streamed"`
	Tool, ToolStreamed struct {
		Finish string
		Calls  []chatToolCall
	}
	N struct {
		Choices []struct {
			Index           int
			Content, Finish string
		}
		Usage usage
	}
	ToolChoiceNone struct {
		Finish, Content string
		Calls           []chatToolCall
	}
	Retrieved       string
	RetrieveMissing *struct {
		Status     int
		IsNotFound bool
	}
	Responses struct {
		Status, Text string
		Items        []clientItem
		Usage        responseUsage
	}
	ResponsesStreamed struct {
		Types                   []string
		Text, Reasoning, Status string
		Usage                   *responseUsage
	}
	ResponsesTool struct {
		Items, StreamedItems []clientItem
		Next                 string
	}
	Logprobs struct {
		Content, Streamed []chatTokenLogprob
		CompletionText    string
		Completion        *completionLogprobs
	}
	BadRequest *struct {
		Status     int
		Type       string
		IsAPIError bool
	} `json:"badRequest"`
}

// clientItem is a Responses output item as client.mjs prints it.
type clientItem struct {
	Type, Text, Name, Arguments, CallID string
}

func TestOpenAINodeClient(t *testing.T) {
	node := nodeClient(t)
	// Answer, or call the tool when the prompt defines tools and has no
	// tool result yet.
	ts := newTestServer(t, &enginetest.Model{Next: harmonyScripts, Ctx: 4096}, "gpt-oss", engine.Config{MaxActive: 2, MaxQueue: 4},
		func(c *Config) { c.APIKey, c.ResponsesStore = "test-key", 16 })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs")
	cmd.Dir = clientDir
	cmd.Env = append(os.Environ(), "ORCD_BASE_URL="+ts.url+"/v1", "ORCD_API_KEY=test-key", "ORCD_TOOLS=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client.mjs: %v\n%s", err, stderr.String())
	}
	var r clientResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %s: %v", out, err)
	}

	if len(r.Models) != 1 || r.Models[0] != "tiny" {
		t.Errorf("models %v", r.Models)
	}
	p := r.Plain
	if p.Object != "chat.completion" || p.Role != "assistant" || p.Content == nil || *p.Content != "Hello, wörld!" ||
		p.Reasoning == nil || *p.Reasoning != "User greets. Reply." || p.Finish != "stop" || p.Usage.CompletionTokens == 0 {
		t.Errorf("non-streaming: %+v", p)
	}
	s := r.Streamed
	if s.Content != "Hello, wörld!" || s.Reasoning != "User greets. Reply." || s.Finish != "stop" || s.Usage == nil || s.Chunks < 5 {
		t.Errorf("streaming: %+v", s)
	}
	for name, tc := range map[string]struct {
		Finish string
		Calls  []chatToolCall
	}{"tool call": r.Tool, "streamed tool call": r.ToolStreamed} {
		if tc.Finish != "tool_calls" || len(tc.Calls) != 1 || tc.Calls[0].Function.Name != "get_weather" ||
			tc.Calls[0].Function.Arguments != `{"location":"SF"}` || tc.Calls[0].ID == "" {
			t.Errorf("%s: %+v", name, tc)
		}
	}
	if len(r.N.Choices) != 2 || r.N.Usage.CompletionTokens != 2*p.Usage.CompletionTokens || r.N.Usage.PromptTokens != p.Usage.PromptTokens {
		t.Errorf("n=2: %+v", r.N)
	}
	for i, c := range r.N.Choices {
		if c.Index != i || c.Content != "Hello, wörld!" || c.Finish != "stop" {
			t.Errorf("n=2: choice %d %+v", i, c)
		}
	}
	if n := r.ToolChoiceNone; n.Finish != "stop" || n.Content != "Hello, wörld!" || len(n.Calls) != 0 {
		t.Errorf("tool_choice none: %+v", n)
	}
	if r.Retrieved != "tiny" || r.RetrieveMissing == nil || r.RetrieveMissing.Status != 404 || !r.RetrieveMissing.IsNotFound {
		t.Errorf("models.retrieve: %q %+v", r.Retrieved, r.RetrieveMissing)
	}
	answerItems := []clientItem{{Type: "reasoning", Text: "User greets. Reply."}, {Type: "message", Text: "Hello, wörld!"}}
	if x := r.Responses; x.Status != "completed" || x.Text != "Hello, wörld!" || !slices.Equal(x.Items, answerItems) ||
		x.Usage.OutputTokens != p.Usage.CompletionTokens || x.Usage.OutputTokensDetails.ReasoningTokens == 0 {
		t.Errorf("responses: %+v", x)
	}
	rs := r.ResponsesStreamed
	if rs.Text != "Hello, wörld!" || rs.Reasoning != "User greets. Reply." || rs.Status != "completed" || rs.Usage == nil ||
		len(rs.Types) < 10 || rs.Types[0] != "response.created" || rs.Types[len(rs.Types)-1] != "response.completed" {
		t.Errorf("responses streamed: %+v", rs)
	}
	rt := r.ResponsesTool
	for name, its := range map[string][]clientItem{"responses tool call": rt.Items, "streamed responses tool call": rt.StreamedItems} {
		if len(its) != 2 || its[1].Type != "function_call" || its[1].Name != "get_weather" || its[1].Arguments != `{"location":"SF"}` || its[1].CallID == "" {
			t.Errorf("%s: %+v", name, its)
		}
	}
	if rt.Next != "Hello, wörld!" {
		t.Errorf("responses after the tool result: %q", rt.Next)
	}
	// The scripted model makes every token certain.
	lp := r.Logprobs
	var content []byte
	for _, e := range lp.Content {
		for _, b := range e.Bytes {
			content = append(content, byte(b))
		}
		if e.Logprob != 0 || len(e.TopLogprobs) != 1 {
			t.Errorf("logprobs entry %+v", e)
		}
	}
	if string(content) != "Hello, wörld!" || !slices.EqualFunc(lp.Content, lp.Streamed, func(a, b chatTokenLogprob) bool {
		return a.Token == b.Token && a.Logprob == b.Logprob && slices.Equal(a.Bytes, b.Bytes)
	}) {
		t.Errorf("chat logprobs: content bytes %q, %d entries, %d streamed", content, len(lp.Content), len(lp.Streamed))
	}
	if c := lp.Completion; !strings.HasPrefix(lp.CompletionText, "Hello") || c == nil || len(c.Tokens) < 5 ||
		strings.Join(c.Tokens[:5], "") != "Hello" || c.TokenLogprobs[0] != nil || c.TokenLogprobs[1] == nil || c.TextOffset[4] != 4 {
		t.Errorf("completion logprobs: %q %+v", lp.CompletionText, c)
	}
	if b := r.BadRequest; b == nil || b.Status != 400 || !b.IsAPIError || b.Type != "invalid_request_error" {
		t.Errorf("bad request: %+v", b)
	}
}

// TestOpenAINodeClientStructured drives structured output through the
// openai package against the fake model's pseudo-random logits: every
// answer and forced call validates against its schema.
func TestOpenAINodeClientStructured(t *testing.T) {
	node := nodeClient(t)
	ts := newTestServer(t, &enginetest.Model{Ctx: 4096}, "gpt-oss", engine.Config{MaxActive: 2, MaxQueue: 4}, nil)
	schema := `{"type":"object","properties":{"name":{"type":"string"},"tags":{"type":"array","items":{"enum":["a","b"]}},"n":{"type":["integer","null"]}},"required":["name","tags","n"],"additionalProperties":false}`
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs")
	cmd.Dir = clientDir
	cmd.Env = append(os.Environ(), "ORCD_BASE_URL="+ts.url+"/v1", "ORCD_STRUCTURED=1", "ORCD_SCHEMA="+schema)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client.mjs: %v\n%s", err, stderr.String())
	}
	var r struct {
		Structured struct {
			Chat, ChatStreamed, Responses string
			Required, Named               struct {
				Finish string
				Calls  []chatToolCall
			}
		}
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %s: %v", out, err)
	}
	st := r.Structured
	for _, answer := range []string{st.Chat, st.ChatStreamed, st.Responses} {
		schematest.Check(t, schema, answer)
	}
	for _, c := range []struct {
		Finish string
		Calls  []chatToolCall
	}{st.Required, st.Named} {
		if c.Finish != "tool_calls" || len(c.Calls) != 1 || c.Calls[0].Function.Name != "answer" {
			t.Fatalf("forced call: %+v", c)
		}
		schematest.Check(t, schema, c.Calls[0].Function.Arguments)
	}
}
