package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// The OpenAI endpoints accept request fields they do not know, as the
// OpenAI API's clients expect (they send new optional fields freely), while
// the worker API (/execute) stays strict. Keys that match a field but for
// case, and duplicate keys, are rejected everywhere.

// mootFields are OpenAI request fields, by API path, that cannot change
// what orcd generates: they are accepted and ignored, logged once each at
// debug level.
var mootFields = map[string]bool{
	"store":                              true, // chat: orcd keeps no chat completions
	"metadata":                           true,
	"service_tier":                       true,
	"user":                               true,
	"prompt_cache_key":                   true, // the prefix cache needs no key
	"safety_identifier":                  true,
	"stream_options.include_obfuscation": true,
	"parallel_tool_calls":                true, // completions: no tools
}

// unimplementedFields are OpenAI request fields that would change the
// output but that orcd does not implement: a request with one gets a 400
// naming it rather than an answer that silently ignores it, unless the
// value asks for nothing (see asksNothing). A field that becomes a request
// struct's field is no longer unknown and never gets here.
var unimplementedFields = map[string]string{
	"logit_bias":         "logit biases are not supported",
	"top_logprobs":       "log probabilities are supported on chat and completions only",
	"suffix":             "insertion (suffix) is not supported",
	"best_of":            "best_of is not supported; use n",
	"prediction":         "predicted outputs are not supported",
	"audio":              "audio output is not supported",
	"modalities":         "only text output is supported",
	"web_search_options": "web search is not supported",
	"functions":          "the deprecated functions field is not supported; use tools",
	"function_call":      "the deprecated function_call field is not supported; use tool_choice",
	"background":         "background responses are not supported",
	"conversation":       "conversations are not supported; use previous_response_id",
	"prompt":             "prompt templates are not supported",
	"include":            "only reasoning.encrypted_content may be included (and is not produced)",
	"truncation":         "only truncation \"disabled\" is supported",
}

// asksNothing reports whether the value of an unimplemented field asks for
// nothing beyond what orcd does anyway: null, false, an empty string,
// array or object, or the field's default (clients send these freely).
func asksNothing(path string, raw json.RawMessage) bool {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case string:
		return x == "" || path == "truncation" && x == "disabled"
	case float64:
		return path == "best_of" && x == 1 || path == "top_logprobs" && x == 0
	case []any:
		if len(x) == 1 {
			return path == "modalities" && x[0] == "text" || path == "include" && x[0] == "reasoning.encrypted_content"
		}
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

// tolerance collects the unknown fields of one OpenAI request body.
type tolerance struct {
	ignored []string // unknown to orcd: reported in ignoredFieldsHeader
	moot    []string // mootFields
}

// ignoredFieldsHeader lists the unknown fields a request carried, which
// were ignored, as vLLM warns of them.
const ignoredFieldsHeader = "X-Orcd-Ignored-Fields"

// field takes one unknown field, by its API path, and its value.
func (t *tolerance) field(path string, raw json.RawMessage) error {
	if why, ok := unimplementedFields[path]; ok {
		if !asksNothing(path, raw) {
			return invalid(path + ": " + why)
		}
		t.moot = append(t.moot, path)
		return nil
	}
	if mootFields[path] {
		t.moot = append(t.moot, path)
	} else {
		t.ignored = append(t.ignored, path)
	}
	return nil
}

// maxIgnoredNamed bounds the fields ignoredFieldsHeader names, so that a
// body of many unknown fields cannot make a huge header.
const maxIgnoredNamed = 16

// report adds the ignored fields to their header (at most maxIgnoredNamed
// named, then "+N more") and logs the moot ones.
func (s *Server) report(w http.ResponseWriter, t *tolerance) {
	s.logMoot(t)
	if len(t.ignored) == 0 {
		return
	}
	var named []string
	more := 0
	if prev := w.Header().Get(ignoredFieldsHeader); prev != "" {
		named = strings.Split(prev, ",")
		last := named[len(named)-1]
		if n, ok := strings.CutSuffix(strings.TrimPrefix(last, "+"), " more"); ok && last[0] == '+' {
			more, _ = strconv.Atoi(n)
			named = named[:len(named)-1]
		}
	}
	named = append(named, t.ignored...)
	if len(named) > maxIgnoredNamed {
		more += len(named) - maxIgnoredNamed
		named = named[:maxIgnoredNamed]
	}
	if more > 0 {
		named = append(named, fmt.Sprintf("+%d more", more))
	}
	w.Header().Set(ignoredFieldsHeader, strings.Join(named, ","))
}

// logMoot logs the moot fields of a request, each field name once in the
// server's life.
func (s *Server) logMoot(t *tolerance) {
	for _, f := range t.moot {
		if _, seen := s.mootLogged.LoadOrStore(f, true); !seen {
			s.log.Debug("request field accepted and ignored: it does not change the output (logged once)", "field", f)
		}
	}
}

// tolerant marks the request bodies of the OpenAI endpoints, which are
// decoded with a tolerance.
type tolerant interface{ tolerant() }

func (commonFields) tolerant() {}

// paramPath matches an API path at the start of an error message
// ("messages[0].content: ..."): the message names the offending field.
var paramPath = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+|\[[0-9]+\]|\["[^"]*"\])*: `)

// paramOf returns the request field an error message names, or nil. Every
// validation error names its field this way.
func paramOf(message string) *string {
	m := paramPath.FindString(message)
	if m == "" || strings.HasPrefix(m, "body:") {
		return nil
	}
	p := strings.TrimSuffix(m, ": ")
	return &p
}

// toolChoice is a checked tool_choice.
type toolChoice struct {
	none bool // "none": no call
	// forced names the forced function ("" for "required"); set only when
	// a call is forced.
	forced *string
}

// parseToolChoice checks a tool_choice: "auto", "none", "required", or a
// named function, {"type":"function","function":{"name":...}} (chat) or
// {"type":"function","name":...} (responses). param names the field.
func parseToolChoice(param string, raw json.RawMessage) (toolChoice, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return toolChoice{}, nil
	}
	var mode string
	if json.Unmarshal(raw, &mode) == nil {
		switch mode {
		case "auto":
			return toolChoice{}, nil
		case "none":
			return toolChoice{none: true}, nil
		case "required":
			return toolChoice{forced: new(string)}, nil
		}
		return toolChoice{}, invalid(fmt.Sprintf("%s: %q is not auto, none, required or a function", param, clip(mode)))
	}
	var named struct {
		Type     string `json:"type"`
		Name     string `json:"name"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" {
		return toolChoice{}, invalid(param + `: expected "auto", "none", "required" or {"type":"function",...}`)
	}
	name := named.Function.Name
	field := param + ".function.name"
	if name == "" {
		name, field = named.Name, param+".name"
	}
	if err := checkName(field, name); err != nil {
		return toolChoice{}, err
	}
	return toolChoice{forced: &name}, nil
}
