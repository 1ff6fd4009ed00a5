package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"orcd/internal/testutil"
)

// hfFixtureDir is where tools/hf_arch_fixtures.py's checkpoints go.
const hfFixtureDir = "../../model/testdata/hf"

// TestServeHFCheckpoints serves the tiny gpt-oss and qwen2 checkpoint
// directories (HF layout, their own tokenizer.json) and chats with each in
// its own format: harmony for gpt-oss, the Jinja template of
// tokenizer_config.json for qwen2, whose prompt must be the tokens HF's
// apply_chat_template gives for the same conversation (chat.json.gz).
func TestServeHFCheckpoints(t *testing.T) {
	if _, err := os.Stat(hfFixtureDir); err != nil {
		t.Fatalf("model/testdata/hf is missing (tools/hf_arch_fixtures.py makes it): %v", err)
	}
	var chat struct {
		Templates map[string][]struct {
			Conv struct {
				Messages []map[string]any `json:"messages"`
				Tools    []any            `json:"tools"`
			} `json:"conv"`
			AddGenerationPrompt bool    `json:"add_generation_prompt"`
			IDs                 []int32 `json:"ids"`
		} `json:"templates"`
	}
	testutil.ReadGzipJSON(t, filepath.Join(hfFixtureDir, "chat.json.gz"), &chat)
	for _, c := range []struct {
		dir       string
		harmony   bool
		tokenizer string
	}{{"tiny_gptoss", true, "hf-json"}, {"tiny_qwen2", false, "hf-json"}} {
		t.Run(c.dir, func(t *testing.T) {
			w := startServe(t, "--model", filepath.Join(hfFixtureDir, c.dir), "--ctx-size", "512")
			code, health := getJSON(t, "GET", w.uri+"/health")
			if code != 200 || health["tokenizer_kind"] != c.tokenizer {
				t.Errorf("health %d %v", code, health)
			}
			convs := chat.Templates["qwen2"]
			for i, conv := range convs {
				if !conv.AddGenerationPrompt || len(conv.IDs)+4 > 512 || (c.harmony && len(conv.Conv.Tools) > 0) {
					continue
				}
				// The API sends tool call arguments as JSON text; HF's
				// templates take them as objects.
				for _, m := range conv.Conv.Messages {
					calls, _ := m["tool_calls"].([]any)
					for _, call := range calls {
						fn := call.(map[string]any)["function"].(map[string]any)
						args, _ := json.Marshal(fn["arguments"])
						fn["arguments"] = string(args)
					}
				}
				body, _ := json.Marshal(map[string]any{"model": c.dir, "messages": conv.Conv.Messages, "tools": conv.Conv.Tools,
					"max_tokens": 4, "temperature": 0})
				resp, err := http.Post(w.uri+"/v1/chat/completions", "application/json", bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				var out struct {
					Choices []struct {
						FinishReason string `json:"finish_reason"`
					} `json:"choices"`
					Usage struct {
						PromptTokens int `json:"prompt_tokens"`
					} `json:"usage"`
				}
				err = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || len(out.Choices) != 1 || out.Choices[0].FinishReason == "" {
					t.Fatalf("conversation %d: status %d, %+v, %v", i, resp.StatusCode, out, err)
				}
				if !c.harmony && out.Usage.PromptTokens != len(conv.IDs) {
					t.Errorf("conversation %d: %d prompt tokens, HF's template gives %d", i, out.Usage.PromptTokens, len(conv.IDs))
				}
				if c.harmony && out.Usage.PromptTokens == 0 {
					t.Errorf("conversation %d: no prompt tokens", i)
				}
			}
		})
	}
}
