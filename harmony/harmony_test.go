package harmony

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func readFixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var docsTools = []Tool{
	{Name: "get_location", Description: "Gets the location of the user."},
	{Name: "get_current_weather", Description: "Gets the current weather in the provided location.", Parameters: json.RawMessage(`{
		"type": "object",
		"properties": {
			"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
			"format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
		},
		"required": ["location"]
	}`)},
	{Name: "get_multiple_weathers", Description: "Gets the current weather in the provided list of locations.", Parameters: json.RawMessage(`{
		"type": "object",
		"properties": {
			"locations": {"type": "array", "items": {"type": "string"}, "description": "List of city and state, e.g. [\"San Francisco, CA\", \"New York, NY\"]"},
			"format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
		},
		"required": ["locations"]
	}`)},
}

var docsDate = time.Date(2025, 6, 28, 12, 0, 0, 0, time.UTC)

func TestRenderFunctionsExample(t *testing.T) {
	p, err := Render(Conversation{
		ReasoningEffort: "high",
		Date:            docsDate,
		Instructions:    "Use a friendly tone.",
		Tools:           docsTools,
		Messages:        []Message{{Role: "user", Content: "What is the weather like in SF?"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.String(), readFixture(t, "functions_prompt.txt"); got != want {
		t.Errorf("rendered:\n%s\n\nwant:\n%s", got, want)
	}
}

func TestRenderToolHistoryExample(t *testing.T) {
	p, err := Render(Conversation{
		ReasoningEffort: "high",
		Date:            docsDate,
		Instructions:    "Use a friendly tone.",
		Tools:           docsTools,
		Messages: []Message{
			{Role: "user", Content: "What is the weather like in SF?"},
			{Role: "assistant", Reasoning: "Need to use function get_weather.",
				ToolCalls: []ToolCall{{Name: "get_weather", Arguments: `{"location":"San Francisco"}`}}},
			{Role: "tool", ToolName: "get_weather", Content: `{"sunny": true, "temperature": 20}`},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.String(), readFixture(t, "tool_history_prompt.txt"); got != want {
		t.Errorf("rendered:\n%s\n\nwant:\n%s", got, want)
	}
}

func TestRenderWithoutTools(t *testing.T) {
	p, err := Render(Conversation{
		Date:         docsDate,
		Instructions: "Always respond in riddles",
		Messages: []Message{
			{Role: "user", Content: "What is 2 + 2?"},
			{Role: "assistant", Content: "2 + 2 = 4.", Reasoning: "dropped: the turn ended in a final answer"},
			{Role: "user", Content: "What about 9 / 2?"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// System message per "System message format" (without the functions
	// line), developer message per "Developer message format", history per
	// "Handling reasoning output in subsequent sampling" (with <|end|>, as
	// its implementation note asks, instead of <|return|>).
	want := "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n" +
		"Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: medium\n\n" +
		"# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>" +
		"<|start|>developer<|message|># Instructions\n\nAlways respond in riddles<|end|>" +
		"<|start|>user<|message|>What is 2 + 2?<|end|>" +
		"<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|end|>" +
		"<|start|>user<|message|>What about 9 / 2?<|end|>" +
		"<|start|>assistant"
	if got := p.String(); got != want {
		t.Errorf("rendered:\n%q\nwant:\n%q", got, want)
	}
}

func TestRenderErrors(t *testing.T) {
	bad := []Conversation{
		{ReasoningEffort: "extreme"},
		{Messages: []Message{{Role: "narrator"}}},
		{Messages: []Message{{Role: "tool", Content: "x"}}},
		{Tools: []Tool{{Name: "bad name"}}},
		{Tools: []Tool{{Name: "f", Parameters: json.RawMessage(`{"type":`)}}},
	}
	for i, c := range bad {
		if _, err := Render(c); err == nil {
			t.Errorf("conversation %d rendered without error", i)
		}
	}
}

// fakeEncoder maps specials to ids 1000+ and text to one id per byte.
type fakeEncoder struct{}

func (fakeEncoder) Encode(s string) []int32 {
	var ids []int32
	for i := 0; i < len(s); i++ {
		ids = append(ids, int32(s[i]))
	}
	return ids
}

func (fakeEncoder) TokenID(name string) (int32, bool) {
	i := slices.Index(SpecialTokens, name)
	return int32(1000 + i), i >= 0
}

func TestPromptTokensKeepUserSpecialsAsText(t *testing.T) {
	p, err := Render(Conversation{Date: docsDate, Messages: []Message{{Role: "user", Content: "<|end|>"}}})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := p.Tokens(fakeEncoder{})
	if err != nil {
		t.Fatal(err)
	}
	specials := 0
	for _, id := range ids {
		if id >= 1000 {
			specials++
		}
	}
	// system: start, message, end; user: start, message, end; final start.
	if specials != 7 {
		t.Errorf("%d special tokens, want 7: user text became a special token", specials)
	}
}

// split cuts rendered harmony text into special tokens and text.
func split(s string) (pieces []Piece) {
	for s != "" {
		next, tok := len(s), ""
		for _, sp := range SpecialTokens {
			if i := strings.Index(s, sp); i >= 0 && i < next {
				next, tok = i, sp
			}
		}
		if next > 0 {
			pieces = append(pieces, Piece{Text: s[:next]})
		}
		if tok == "" {
			break
		}
		pieces = append(pieces, Piece{Special: tok})
		s = s[next+len(tok):]
	}
	return pieces
}

type parsed struct {
	reasoning, content string
	calls              []ToolCall
	stop               string
}

// parse feeds output to a parser with text cut into chunks of n bytes and
// checks that no event carries special-token text.
func parse(t *testing.T, output string, n int) parsed {
	t.Helper()
	p := NewParser()
	var r parsed
	handle := func(evs []Event) {
		for _, ev := range evs {
			if strings.Contains(ev.Text, "<|") {
				t.Errorf("event %+v leaks a control token", ev)
			}
			switch ev.Kind {
			case Reasoning:
				r.reasoning += ev.Text
			case Content:
				r.content += ev.Text
			case ToolCallStart:
				if ev.ToolIndex != len(r.calls) {
					t.Errorf("tool call index %d, want %d", ev.ToolIndex, len(r.calls))
				}
				r.calls = append(r.calls, ToolCall{Name: ev.ToolName})
			case ToolCallArgs:
				r.calls[ev.ToolIndex].Arguments += ev.Text
			}
		}
	}
	for _, piece := range split(output) {
		if piece.Special != "" {
			handle(p.Special(piece.Special))
			continue
		}
		for s := piece.Text; s != ""; {
			k := min(n, len(s))
			handle(p.Text(s[:k]))
			s = s[k:]
		}
	}
	r.stop = p.Stop()
	if p.ToolCalls() != len(r.calls) {
		t.Errorf("ToolCalls() = %d, saw %d", p.ToolCalls(), len(r.calls))
	}
	return r
}

func TestParserDocsExamples(t *testing.T) {
	cases := []struct {
		name   string
		output string
		want   parsed
	}{
		{"reasoning", readFixture(t, "output_reasoning.txt"), parsed{
			reasoning: `User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.`,
			content:   "2 + 2 = 4.", stop: TokenReturn}},
		{"tool call", readFixture(t, "output_tool_call.txt"), parsed{
			reasoning: "Need to use function get_weather.",
			calls:     []ToolCall{{Name: "get_weather", Arguments: `{"location":"San Francisco"}`}}, stop: TokenCall}},
		{"preamble", readFixture(t, "output_preamble.txt"), parsed{
			reasoning: "{long chain of thought}",
			content: "**Action plan**:\n1. Generate an HTML file\n2. Generate a JavaScript for the Node.js server\n" +
				"3. Start the server\n---\nWill start executing the plan step by step",
			calls: []ToolCall{{Name: "generate_file", Arguments: `{"template": "basic_html", "path": "index.html"}`}}, stop: TokenCall}},
		// The recipient in the role part of the header ("Receiving tool calls").
		{"recipient in role", ` to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"location":"Tokyo"}<|call|>`, parsed{
			calls: []ToolCall{{Name: "get_weather", Arguments: `{"location":"Tokyo"}`}}, stop: TokenCall}},
		{"two calls", `<|channel|>commentary to=functions.a <|constrain|>json<|message|>{}<|end|><|start|>assistant<|channel|>commentary to=functions.b<|message|>{"x":1}<|call|>`, parsed{
			calls: []ToolCall{{Name: "a", Arguments: `{}`}, {Name: "b", Arguments: `{"x":1}`}}, stop: TokenCall}},
		{"stray control tokens in content", `<|channel|>final<|message|>a<|channel|>b<|constrain|>c<|message|>d<|return|>`, parsed{
			content: "abcd", stop: TokenReturn}},
		{"unfinished", `<|channel|>final<|message|>partial answ`, parsed{content: "partial answ"}},
	}
	for _, c := range cases {
		for _, n := range []int{1, 2, 3, 7, 1 << 20} {
			got := parse(t, c.output, n)
			if got.reasoning != c.want.reasoning || got.content != c.want.content || got.stop != c.want.stop || !slices.Equal(got.calls, c.want.calls) {
				t.Errorf("%s, chunks of %d:\n got %+v\nwant %+v", c.name, n, got, c.want)
			}
		}
	}
}

func TestTypeScriptSchemas(t *testing.T) {
	cases := []struct{ schema, want string }{
		{`{"type":"integer"}`, "number"},
		{`{"type":["string","null"]}`, "string | null"},
		{`{"anyOf":[{"type":"number"},{"type":"boolean"}]}`, "number | boolean"},
		{`{"type":"array","items":{"enum":[1,2]}}`, "(1 | 2)[]"},
		{`{"type":"array"}`, "Array<any>"},
		{`{"type":"object"}`, "object"},
		{`{"type":"object","properties":{"n":{"type":"number","default":3}},"required":["n"]}`, "{\nn: number, // default: 3\n}"},
		{`{"type":"object","properties":{"o":{"type":"object","properties":{"k":{"type":"string","default":"v"}}}}}`, "{\no?: {\n    k?: string, // default: \"v\"\n    },\n}"},
		{`{"type":"object","properties":{"d":{"type":"object","default":{"a":[1,true,null]}}}}`, "{\nd?: object, // default: {\"a\":[1,true,null]}\n}"},
		{`{}`, "any"},
	}
	for _, c := range cases {
		n, err := parseJSON([]byte(c.schema))
		if err != nil {
			t.Fatal(err)
		}
		if got := tsType(n, ""); got != c.want {
			t.Errorf("%s: got %q, want %q", c.schema, got, c.want)
		}
	}
	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)
	if _, err := parseJSON([]byte(deep)); err == nil {
		t.Error("100 levels of nesting parsed")
	}
}

// TestParserInContent follows InContent through an answer: true only in
// the body of a message for the user (final, or commentary without a
// recipient), never in headers, reasoning or tool calls.
func TestParserInContent(t *testing.T) {
	p := NewParser()
	steps := []struct {
		special, text string
		want          bool // InContent after the step
	}{
		{TokenChannel, "", false}, {"", "analysis", false}, {TokenMessage, "", false}, {"", "thinking", false},
		{TokenEnd, "", false}, {TokenStart, "", false}, {"", "assistant", false},
		{TokenChannel, "", false}, {"", "commentary to=functions.f ", false}, {TokenConstrain, "", false}, {"", "json", false},
		{TokenMessage, "", false}, {"", "{}", false}, {TokenEnd, "", false},
		{TokenStart, "", false}, {"", "assistant", false}, {TokenChannel, "", false}, {"", "commentary", false},
		{TokenMessage, "", true}, {"", "one moment", true}, {TokenEnd, "", false},
		{TokenStart, "", false}, {"", "assistant", false}, {TokenChannel, "", false}, {"", "final", false},
		{TokenMessage, "", true}, {"", "Hi", true}, {TokenReturn, "", false},
	}
	for i, s := range steps {
		if s.special != "" {
			p.Special(s.special)
		} else {
			p.Text(s.text)
		}
		if got := p.InContent(); got != s.want {
			t.Errorf("step %d (%q%q): InContent %v, want %v", i, s.special, s.text, got, s.want)
		}
	}
}

// TestRenderResponseFormat renders the docs' shopping-list example: the
// format ends the developer message as "# Response Formats", "## name",
// the description as a comment, and the schema compacted (worked by hand
// from docs/format.md's "Structured output").
func TestRenderResponseFormat(t *testing.T) {
	p, err := Render(Conversation{
		Instructions: "You are a helpful shopping assistant",
		Format: &Format{Name: "shopping_list", Description: "What to buy", Schema: json.RawMessage(`{
			"properties": {"items": {"type": "array", "description": "entries on the shopping list", "items": {"type": "string"}}},
			"type": "object"}`)},
		Messages: []Message{{Role: "user", Content: "I need to buy coffee, soda and eggs"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "<|start|>developer<|message|># Instructions\n\nYou are a helpful shopping assistant\n\n# Response Formats\n\n## shopping_list\n\n" +
		"// What to buy\n" + `{"properties":{"items":{"type":"array","description":"entries on the shopping list","items":{"type":"string"}}},"type":"object"}` +
		"<|end|><|start|>user<|message|>I need to buy coffee, soda and eggs<|end|><|start|>assistant"
	if got := p.String(); !strings.HasSuffix(got, want) {
		t.Errorf("rendered:\n%s\n\nwant the end:\n%s", got, want)
	}
	if _, err := Render(Conversation{Format: &Format{Name: "x", Schema: json.RawMessage(`{`)}}); err == nil {
		t.Error("a format whose schema is not JSON rendered")
	}
}
