package server

import (
	"fmt"

	"orcd/engine"
)

// checkChoices checks the chat fields that choose what the model may do:
// tool_choice (forced calls are refused until constrained decoding exists,
// see notSupportedYet) and reasoning_effort.
func checkChoices(body *chatRequest) error {
	tc, err := parseToolChoice("tool_choice", body.ToolChoice)
	if err != nil {
		return err
	}
	if err := notSupportedYet("tool_choice", tc, "", nil); err != nil {
		return err
	}
	return checkEffort("reasoning_effort", body.ReasoningEffort)
}

// checkEffort checks a reasoning effort; param names its field.
func checkEffort(param, effort string) error {
	switch effort {
	case "", "low", "medium", "high":
		return nil
	}
	return invalid(fmt.Sprintf("%s: %q is not low, medium or high", param, clip(effort)))
}

// oneToolCall keeps the first tool call of the output and ends generation
// when a second one begins (parallel_tool_calls false).
type oneToolCall struct {
	outputParser
	done bool // a second call began: everything after it is dropped
}

func (o *oneToolCall) token(tok engine.Token) ([]delta, bool) {
	if o.done {
		return nil, true
	}
	out, stop := o.keep(o.outputParser.token(tok))
	return out, stop || o.done
}

func (o *oneToolCall) finish() []delta {
	if o.done {
		return nil
	}
	out, _ := o.keep(o.outputParser.finish(), false)
	return out
}

func (o *oneToolCall) toolCalls() int { return min(o.outputParser.toolCalls(), 1) }

// keep returns the deltas before a second tool call.
func (o *oneToolCall) keep(ds []delta, stop bool) ([]delta, bool) {
	for i, d := range ds {
		if d.kind == deltaToolStart && d.toolIndex > 0 {
			o.done = true
			return ds[:i], true
		}
	}
	return ds, stop
}
