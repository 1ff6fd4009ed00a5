package chat

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ardanlabs/jinja"

	"orcd/internal/testutil"
	"orcd/tokenizer"
)

const testdata = "../model/testdata"

// templateOf reads a fixture tokenizer's chat template (see
// tools/make_tokenizer_fixtures.py).
func templateOf(t *testing.T, fam string) *Template {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testdata, "hf_tok", fam, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ChatTemplate string `json:"chat_template"`
		BOS          any    `json:"bos_token"`
		EOS          any    `json:"eos_token"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	str := func(v any) string { s, _ := v.(string); return s }
	tmpl, err := Compile(cfg.ChatTemplate, str(cfg.BOS), str(cfg.EOS))
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

var weather = json.RawMessage(`{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & here.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}`)

// TestQwen2ByHand checks renderings of the Qwen2.5 template worked out by
// hand from its source: the default system prompt, a tool definition as
// json.dumps prints it (key order kept, no HTML escaping) and a tool call
// whose arguments print as a JSON object.
func TestQwen2ByHand(t *testing.T) {
	tmpl := templateOf(t, "qwen2")
	if !tmpl.TaggedToolCalls() || templateOf(t, "llama3").TaggedToolCalls() {
		t.Error("TaggedToolCalls: want true for Qwen2.5's template and false for Llama 3's")
	}
	got, err := tmpl.Render(Request{Messages: []Message{{Role: "user", Content: "Hi"}}, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	want := "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	got, err = tmpl.Render(Request{
		Messages: []Message{
			{Role: "system", Content: "S"}, {Role: "user", Content: "W?"},
			{Role: "assistant", ToolCalls: []ToolCall{{ID: "c1", Name: "get_weather", Arguments: `{"city": "Paris"}`}}},
			{Role: "tool", Content: "sunny", ToolCallID: "c1"},
		},
		Tools: []json.RawMessage{weather},
	})
	if err != nil {
		t.Fatal(err)
	}
	want = "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
		`{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & here.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}` +
		"\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\nW?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n" +
		"<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestIndentedJSON checks the tojson(indent=N) replacement against what
// Python's json.dumps(v, indent=4, ensure_ascii=False) prints (worked by
// hand): insertion order, no HTML escapes, empty containers inline.
func TestIndentedJSON(t *testing.T) {
	v, err := FromJSON(json.RawMessage(`{"b": 1, "a": [1, "x<y", 2.5, 1e-7, true, null], "c": {}, "d": "é\n"}`))
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := Compile(`{{ x | tojson(indent=4) }}|{{ x.a | tojson }}`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := tmpl.t.RenderValues(map[string]jinjaValue{"x": v, indentFunc: indentCallable})
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n    \"b\": 1,\n    \"a\": [\n        1,\n        \"x<y\",\n        2.5,\n        1e-07,\n        true,\n        null\n    ],\n    \"c\": {},\n    \"d\": \"é\\n\"\n}|[1, \"x<y\", 2.5, 1e-07, true, null]"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

// TestHFRenderings renders the conversations of
// testdata/hf/chat.json.gz (HF apply_chat_template on the GPU machine, see
// tools/hf_arch_fixtures.py) with the same templates and compares the text
// byte for byte and the token ids of orcd's tokenizer with HF's.
func TestHFRenderings(t *testing.T) {
	path := filepath.Join(testdata, "hf", "chat.json.gz")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("model/testdata/hf is missing (tools/hf_arch_fixtures.py makes it): %v", err)
	}
	var fx struct {
		Templates map[string][]struct {
			Conv struct {
				Messages []struct {
					Role       string `json:"role"`
					Content    string `json:"content"`
					ToolCallID string `json:"tool_call_id"`
					ToolCalls  []struct {
						ID       string `json:"id"`
						Function struct {
							Name      string          `json:"name"`
							Arguments json.RawMessage `json:"arguments"`
						} `json:"function"`
					} `json:"tool_calls"`
				} `json:"messages"`
				Tools []json.RawMessage `json:"tools"`
			} `json:"conv"`
			AddGenerationPrompt bool    `json:"add_generation_prompt"`
			Text                *string `json:"text"`
			IDs                 []int32 `json:"ids"`
		} `json:"templates"`
	}
	testutil.ReadGzipJSON(t, path, &fx)
	now := time.Date(2024, 7, 26, 0, 0, 0, 0, time.UTC)
	count := 0
	for fam, cases := range fx.Templates {
		tmpl := templateOf(t, fam)
		tok, err := tokenizer.Load(filepath.Join(testdata, "hf_tok", fam), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cases {
			if c.Text == nil {
				continue
			}
			r := Request{Tools: c.Conv.Tools, AddGenerationPrompt: c.AddGenerationPrompt, Now: now}
			for _, m := range c.Conv.Messages {
				msg := Message{Role: m.Role, Content: m.Content, ToolCallID: m.ToolCallID}
				for _, tc := range m.ToolCalls {
					msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: string(tc.Function.Arguments)})
				}
				r.Messages = append(r.Messages, msg)
			}
			got, err := tmpl.Render(r)
			if err != nil {
				t.Errorf("%s case %d: %v", fam, i, err)
				continue
			}
			if got != *c.Text {
				t.Errorf("%s case %d:\ngot  %q\nwant %q", fam, i, got, *c.Text)
				continue
			}
			ids := tok.EncodeSpecial(got)
			if len(ids) != len(c.IDs) {
				t.Errorf("%s case %d: %d tokens, HF %d", fam, i, len(ids), len(c.IDs))
				continue
			}
			for j := range ids {
				if ids[j] != c.IDs[j] {
					t.Errorf("%s case %d: token %d is %d, HF %d", fam, i, j, ids[j], c.IDs[j])
					break
				}
			}
			count++
		}
	}
	if count < 20 {
		t.Errorf("only %d renderings compared, want at least 20", count)
	}
	t.Logf("%d renderings byte-exact", count)
}

type jinjaValue = jinja.Value

var indentCallable = jinja.NewCallable(indentFunc, indentJSON)
