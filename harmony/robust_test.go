package harmony

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// Robustness cases for rendering and parsing, from the harmony reference
// and from failures reported against other gpt-oss servers.

// referenceFixture reads a rendering of openai/harmony's renderer
// (testdata/reference), trimmed at the end as harmony's own tests do.
func referenceFixture(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimRight(readFixture(t, "reference/"+name+".txt"), " \n\r\t")
}

// kitchensink is the schema of harmony's test_render_functions_with_parameters.
var kitchensink = Tool{Name: "kitchensink", Description: "A function with various complex schemas.", Parameters: json.RawMessage(`{
	"description": "params object",
	"type": "object",
	"properties": {
		"string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
		"string_nullable": {"type": "string", "nullable": true, "description": "A nullable string", "default": "the default"},
		"string_enum": {"type": "string", "enum": ["a", "b", "c"]},
		"oneof_string_or_number": {
			"oneOf": [
				{"type": "string", "default": "default_string_in_oneof"},
				{"type": "number", "description": "numbers can happen too"}
			],
			"description": "a oneof",
			"default": 20
		}
	}
}`)}

func TestRenderReference(t *testing.T) {
	const question = "What is the capital of the largest country in the world?"
	cases := []struct {
		fixture string
		conv    Conversation
		// skipSystem compares what follows the system message: the
		// reference case has none, Render always writes one.
		skipSystem bool
	}{
		{"render_functions_with_parameters", Conversation{ReasoningEffort: "high", Date: docsDate, Instructions: "Always respond in riddles",
			Tools: append(slices.Clone(docsTools), kitchensink), Messages: []Message{{Role: "user", Content: "What is the weather like in SF?"}}}, false},
		{"dropping_cot_by_default", Conversation{Messages: []Message{
			{Role: "user", Content: "What is 2 + 2?"},
			{Role: "assistant", Reasoning: "User asks: “What is 2 + 2?” Simple arithmetic. Provide answer.", Content: "2 + 2 equals 4."},
			{Role: "user", Content: "What about 9 / 2?"}}}, true},
	}
	// Reasoning effort as harmony renders it, with and without a developer
	// message; a zero date leaves the date line out, as harmony does
	// without a conversation start date.
	for _, effort := range []string{"low", "medium", "high"} {
		for _, instr := range []string{"Answer the user's questions like a robot.", ""} {
			name := "simple_convo_" + effort + "_effort"
			if instr == "" {
				name += "_no_instruction"
			}
			cases = append(cases, struct {
				fixture    string
				conv       Conversation
				skipSystem bool
			}{name, Conversation{ReasoningEffort: effort, Instructions: instr, Messages: []Message{{Role: "user", Content: question}}}, false})
		}
	}
	for _, c := range cases {
		p, err := Render(c.conv)
		if err != nil {
			t.Fatalf("%s: %v", c.fixture, err)
		}
		got := p.String()
		if c.skipSystem {
			_, got, _ = strings.Cut(got, TokenEnd)
		}
		if want := referenceFixture(t, c.fixture); got != want {
			t.Errorf("%s:\n got %q\nwant %q", c.fixture, got, want)
		}
	}
}

// Multi-turn conversations with tool results: the chain of thought of a
// turn still calling tools is sent back; once a turn has ended in a final
// answer its analysis is dropped, tool-call turns included (harmony's
// auto_drop_analysis, and the format's "Handling reasoning output in
// subsequent sampling").
func TestRenderMultiTurnTools(t *testing.T) {
	sys := func(tools bool) string {
		s := "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: medium\n\n" +
			"# Valid channels: analysis, commentary, final. Channel must be included for every message."
		if tools {
			s += "\nCalls to these tools must go to the commentary channel: 'functions'."
		}
		return s + "<|end|>"
	}
	dev := "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n// Weather now.\ntype get_weather = (_: {\nlocation: string,\n}) => any;\n\n} // namespace functions<|end|>"
	tools := []Tool{{Name: "get_weather", Description: "Weather now.", Parameters: json.RawMessage(`{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}`)}}
	call := Message{Role: "assistant", Reasoning: "Need weather.", ToolCalls: []ToolCall{{Name: "get_weather", Arguments: `{"location":"SF"}`}}}
	result := Message{Role: "tool", ToolName: "get_weather", Content: `{"temp":20}`}
	const (
		user1      = "<|start|>user<|message|>Weather in SF?<|end|>"
		analysis   = "<|start|>assistant<|channel|>analysis<|message|>Need weather.<|end|>"
		callMsg    = `<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"SF"}<|call|>`
		resultMsg  = `<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp":20}<|end|>`
		final1     = "<|start|>assistant<|channel|>final<|message|>20 degrees.<|end|>"
		user2      = "<|start|>user<|message|>And in LA?<|end|>"
		analysisLA = "<|start|>assistant<|channel|>analysis<|message|>Again.<|end|>"
		callLA     = `<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"LA"}<|call|>`
		resultLA   = `<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp":25}<|end|>`
		next       = "<|start|>assistant"
	)
	callLAMsg := Message{Role: "assistant", Reasoning: "Again.", ToolCalls: []ToolCall{{Name: "get_weather", Arguments: `{"location":"LA"}`}}}
	resultLAMsg := Message{Role: "tool", ToolName: "get_weather", Content: `{"temp":25}`}
	cases := []struct {
		name string
		msgs []Message
		want string
	}{
		{"ongoing tool turn keeps its analysis", []Message{{Role: "user", Content: "Weather in SF?"}, call, result},
			user1 + analysis + callMsg + resultMsg + next},
		{"finished turn drops it", []Message{{Role: "user", Content: "Weather in SF?"}, call, result,
			{Role: "assistant", Content: "20 degrees.", Reasoning: "Hot."}, {Role: "user", Content: "And in LA?"}},
			user1 + callMsg + resultMsg + final1 + user2 + next},
		{"second tool turn after a final keeps only its own", []Message{{Role: "user", Content: "Weather in SF?"}, call, result,
			{Role: "assistant", Content: "20 degrees."}, {Role: "user", Content: "And in LA?"}, callLAMsg, resultLAMsg},
			user1 + callMsg + resultMsg + final1 + user2 + analysisLA + callLA + resultLA + next},
		{"two calls in one turn", []Message{{Role: "user", Content: "Weather in SF?"},
			{Role: "assistant", Reasoning: "Need weather.", ToolCalls: []ToolCall{{Name: "get_weather", Arguments: `{"location":"SF"}`}, {Name: "get_weather", Arguments: `{"location":"LA"}`}}},
			result, resultLAMsg},
			user1 + analysis + callMsg + callLA + resultMsg + resultLA + next},
	}
	for _, c := range cases {
		p, err := Render(Conversation{Date: docsDate, Tools: tools, Messages: c.msgs})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, want := p.String(), sys(true)+dev+c.want; got != want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, want)
		}
	}
}

// Parsing output that departs from the happy path. Nothing from an
// analysis message may reach the content, whatever the chunking.
func TestParserRobustness(t *testing.T) {
	cases := []struct {
		name   string
		output string
		want   parsed
	}{
		{"several commentary messages before the final",
			"<|channel|>analysis<|message|>Plan.<|end|><|start|>assistant<|channel|>commentary<|message|>Step 1. <|end|>" +
				"<|start|>assistant<|channel|>commentary<|message|>Step 2. <|end|><|start|>assistant<|channel|>analysis<|message|>More.<|end|>" +
				"<|start|>assistant<|channel|>final<|message|>Done.<|return|>",
			parsed{reasoning: "Plan.More.", content: "Step 1. Step 2. Done.", stop: TokenReturn}},
		{"preamble, call, more analysis in one output",
			`<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>`,
			parsed{content: "Checking.", calls: []ToolCall{{Name: "f", Arguments: "{}"}}, stop: TokenCall}},
		{"a second <|channel|> in the header", "<|channel|>analysis<|channel|>final<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"<|constrain|> on an analysis header", "<|channel|>analysis <|constrain|>json<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"<|end|> inside a header", "<|channel|>analysis<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{content: "ok", stop: TokenReturn}},
		{"junk after the channel name", "<|channel|>analysis junk<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"an unknown channel is not shown", "<|channel|>thoughts<|message|>secret<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"the next header without <|start|>", "<|channel|>analysis<|message|>secret<|end|><|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"text between messages", "<|channel|>analysis<|message|>secret<|end|>stray<|start|>assistant<|channel|>final<|message|>ok<|return|>",
			parsed{reasoning: "secret", content: "ok", stop: TokenReturn}},
		{"a stream cut in the middle of a call's arguments", `<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"loc`,
			parsed{reasoning: "secret", calls: []ToolCall{{Name: "get_weather", Arguments: `{"loc`}}}},
		{"a stream cut in a call's header", `<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>commentary to=functions.get_wea`,
			parsed{reasoning: "secret"}},
		{"a stream cut in the analysis", `<|channel|>analysis<|message|>sec`, parsed{reasoning: "sec"}},
		{"a call's recipient in the role after several messages", `<|channel|>analysis<|message|>a<|end|><|start|>assistant to=functions.f<|channel|>commentary json<|message|>{"x":1}<|call|>`,
			parsed{reasoning: "a", calls: []ToolCall{{Name: "f", Arguments: `{"x":1}`}}, stop: TokenCall}},
		{"output after <|return|> is ignored", "<|channel|>final<|message|>ok<|return|><|start|>assistant<|channel|>final<|message|>more",
			parsed{content: "ok", stop: TokenReturn}},
	}
	for _, c := range cases {
		for _, n := range []int{1, 3, 1 << 20} {
			got := parse(t, c.output, n)
			if got.reasoning != c.want.reasoning || got.content != c.want.content || got.stop != c.want.stop || !slices.Equal(got.calls, c.want.calls) {
				t.Errorf("%s, chunks of %d:\n got %+v\nwant %+v", c.name, n, got, c.want)
			}
			if strings.Contains(got.content, "secret") {
				t.Errorf("%s: analysis text reached the content: %q", c.name, got.content)
			}
		}
	}
}
