package server

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"orcd/engine"
	"orcd/engine/enginetest"
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
	BadRequest *struct {
		Status     int
		Type       string
		IsAPIError bool
	} `json:"badRequest"`
}

func TestOpenAINodeClient(t *testing.T) {
	node := nodeClient(t)
	answer := harmonyTokens(harmonyAnswer)
	call := harmonyTokens(harmonyToolCall)
	// Answer, or call the tool when the prompt defines tools.
	next := func(h []int32) int32 {
		b := make([]byte, 0, len(h))
		for _, id := range h {
			if id < 256 {
				b = append(b, byte(id))
			}
		}
		if strings.Contains(string(b), "namespace functions") {
			return enginetest.Script(call)(h)
		}
		return enginetest.Script(answer)(h)
	}
	ts := newTestServer(t, &enginetest.Model{Next: next, Ctx: 4096}, "gpt-oss", engine.Config{MaxActive: 2, MaxQueue: 4},
		func(c *Config) { c.APIKey = "test-key" })

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
	if b := r.BadRequest; b == nil || b.Status != 400 || !b.IsAPIError || b.Type != "invalid_request_error" {
		t.Errorf("bad request: %+v", b)
	}
}
