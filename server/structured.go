package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"orcd/constrain"
	"orcd/engine"
	"orcd/grammar"
	"orcd/harmony"
)

// Structured output: response_format (chat) and text.format (responses),
// forced tool calls (tool_choice "required" or a named function) and
// strict function parameters become an engine constraint (package
// constrain) that masks the model's tokens.

// reasoningBudgets are the default most reasoning tokens before a
// structured answer is forced, by reasoning effort.
var reasoningBudgets = map[string]int{"low": 1024, "": 4096, "medium": 4096, "high": 16384}

// responseFormat is chat's response_format.
type responseFormat struct {
	Type       string `json:"type"`
	JSONSchema *struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Schema      json.RawMessage `json:"schema"`
		Strict      *bool           `json:"strict"`
	} `json:"json_schema"`
}

// parseFormat checks a response format, in the chat shape {type,
// json_schema: {name, schema, strict}}, and compiles it; nil for "text" or
// none. param names the field.
func parseFormat(param string, raw json.RawMessage) (*grammar.Grammar, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var f responseFormat
	if json.Unmarshal(raw, &f) != nil || f.Type == "" {
		return nil, invalid(param + `: expected an object with a type ("text", "json_schema" or "json_object")`)
	}
	switch f.Type {
	case "text":
		return nil, nil
	case "json_object":
		return grammar.JSONObject(), nil
	case "json_schema":
		if f.JSONSchema == nil {
			return nil, invalid(param + ".json_schema: missing")
		}
		if len(bytes.TrimSpace(f.JSONSchema.Schema)) == 0 {
			return nil, invalid(param + ".json_schema.schema: missing")
		}
		return compileSchema(param+".json_schema.schema", f.JSONSchema.Schema)
	}
	return nil, invalid(fmt.Sprintf("%s.type: %q is not text, json_schema or json_object", param, clip(f.Type)))
}

// promptFormat is the json_schema response format to describe in a
// harmony prompt (nil for other formats); the format was checked by
// parseFormat.
func promptFormat(raw json.RawMessage) *harmony.Format {
	var f responseFormat
	if json.Unmarshal(raw, &f) != nil || f.Type != "json_schema" || f.JSONSchema == nil || !json.Valid(f.JSONSchema.Schema) {
		return nil
	}
	name := f.JSONSchema.Name
	if name == "" {
		name = "response"
	}
	return &harmony.Format{Name: name, Description: f.JSONSchema.Description, Schema: f.JSONSchema.Schema}
}

// compileSchema compiles a JSON schema; param names its field, and the
// error the keyword and its place in the schema.
func compileSchema(param string, schema json.RawMessage) (*grammar.Grammar, error) {
	g, err := grammar.Compile(schema)
	var se *grammar.SchemaError
	if errors.As(err, &se) {
		return nil, invalid(param + ": " + se.Error())
	}
	return g, err
}

// constraint builds the request's constraint from its format, tool
// choice, strict tools and reasoning budget; nil when nothing is
// constrained.
func (s *Server) constraint(body *chatRequest, maxTokens int) (func() engine.Constraint, error) {
	answer, err := parseFormat("response_format", body.ResponseFormat)
	if err != nil {
		return nil, err
	}
	tc, err := parseToolChoice("tool_choice", body.ToolChoice)
	if err != nil {
		return nil, err
	}
	spec := constrain.Spec{Answer: answer, Args: map[string]*grammar.Grammar{}}
	if !tc.none {
		for i, t := range body.Tools {
			strict := t.Function.Strict != nil && *t.Function.Strict
			forced := tc.forced != nil && (*tc.forced == "" || *tc.forced == t.Function.Name)
			// With a format, the model chooses between the answer and a
			// call of any tool (auto), so every tool's arguments are
			// constrained: a schema the grammar cannot take is then any
			// object unless the function is strict.
			offered := answer != nil && tc.forced == nil
			if !strict && !forced && !offered {
				continue
			}
			g := grammar.JSONObject()
			if params := bytes.TrimSpace(t.Function.Parameters); len(params) > 0 && string(params) != "null" {
				pg, err := compileSchema(fmt.Sprintf("tools[%d].function.parameters", i), params)
				switch {
				case err == nil:
					g = pg
				case strict || forced:
					return nil, err
				}
			}
			spec.Args[t.Function.Name] = g
			switch {
			case forced:
				spec.Call = append(spec.Call, t.Function.Name)
			case offered:
				spec.Offer = append(spec.Offer, t.Function.Name)
			}
		}
		if tc.forced != nil && len(spec.Call) == 0 {
			if *tc.forced == "" {
				return nil, invalid("tool_choice: \"required\" needs tools")
			}
			return nil, invalid(fmt.Sprintf("tool_choice.function.name: %q is not among the tools", clip(*tc.forced)))
		}
	}
	spec.Reasoning = reasoningBudgets[body.ReasoningEffort]
	if m := body.MaxReasoningTokens; m != nil {
		if *m < 0 {
			return nil, invalid(fmt.Sprintf("max_reasoning_tokens: %d is negative", *m))
		}
		spec.Reasoning = *m
	}
	spec.Reasoning = min(spec.Reasoning, maxTokens)
	if spec.Answer == nil && len(spec.Call) == 0 && len(spec.Args) == 0 {
		return nil, nil
	}
	if s.specials == nil && spec.Answer == nil && len(spec.Call) == 0 {
		return nil, nil // strict arguments are followed on harmony models only
	}
	v, err := s.constraintVocab()
	if err != nil {
		return nil, err
	}
	format := constrain.Plain
	switch {
	case s.specials != nil:
		format = constrain.Harmony
	case s.cfg.Model.Chat == ChatTemplate && s.cfg.Template.TaggedToolCalls():
		format = constrain.Tagged
	}
	newC, err := v.New(spec, format)
	if err != nil {
		param := "response_format"
		if len(spec.Call) > 0 {
			param = "tool_choice"
		}
		return nil, invalid(param + ": " + err.Error())
	}
	return newC, nil
}

// constraintVocab returns the vocabulary prepared for masks, built at the
// first constrained request.
func (s *Server) constraintVocab() (*constrain.Vocab, error) {
	tk, ok := s.cfg.Tokenizer.(constrain.Tokenizer)
	if !ok {
		return nil, invalid("response_format: structured output needs a tokenizer that lists its tokens")
	}
	s.vocabOnce.Do(func() { s.vocab = constrain.NewVocab(tk) })
	return s.vocab, nil
}

// formatAsChat turns a responses text.format ({type, name, schema,
// strict}, flat) into the chat response_format shape.
func formatAsChat(format json.RawMessage) (json.RawMessage, error) {
	format = bytes.TrimSpace(format)
	if len(format) == 0 || string(format) == "null" {
		return nil, nil
	}
	var f struct {
		Type   string          `json:"type"`
		Name   string          `json:"name"`
		Schema json.RawMessage `json:"schema"`
		Strict *bool           `json:"strict"`
	}
	if json.Unmarshal(format, &f) != nil {
		return nil, invalid(`text.format: expected an object with a type ("text", "json_schema" or "json_object")`)
	}
	if f.Type != "json_schema" {
		return format, nil
	}
	type schema struct {
		Name   string          `json:"name"`
		Schema json.RawMessage `json:"schema,omitempty"`
		Strict *bool           `json:"strict,omitempty"`
	}
	return json.Marshal(struct {
		Type       string `json:"type"`
		JSONSchema schema `json:"json_schema"`
	}{f.Type, schema{f.Name, f.Schema, f.Strict}})
}

// formatPath renames a response_format error's field to text.format's.
func formatPath(field string) string {
	rest, _ := strings.CutPrefix(field, "response_format")
	return "text.format" + strings.Replace(rest, ".json_schema", "", 1)
}
