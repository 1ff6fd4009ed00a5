// Package constrain makes the engine's per-request constraints for
// structured output: grammar masks (package grammar) over a tokenizer's
// vocabulary, laid into the harmony message format for gpt-oss (free
// reasoning, then a forced final or tool-call header and constrained JSON)
// or over the whole completion for other models.
package constrain

import (
	"errors"
	"fmt"
	"strings"

	"orcd/engine"
	"orcd/grammar"
	"orcd/harmony"
)

// Tokenizer is what constraints need from a tokenizer.
type Tokenizer interface {
	Encode(text string) []int32
	TokenID(name string) (int32, bool)
	TokenText(id int32) string
	IsSpecial(id int32) bool
	IsEOG(id int32) bool
	VocabSize() int
}

// Vocab is a tokenizer's vocabulary prepared for masks. Build it once per
// tokenizer; it is safe for concurrent use.
type Vocab struct {
	tk     Tokenizer
	trie   *grammar.Vocab
	tokens [][]byte // the bytes of each non-special token
	// text allows every non-special token (free harmony content);
	// eog allows the end-of-generation tokens.
	text, eog []uint64
	special   map[int32]string // harmony's special tokens, when the vocabulary has them
	ids       map[string]int32
}

// NewVocab builds the vocabulary trie of tk (a few hundred milliseconds
// for a 200k vocabulary).
func NewVocab(tk Tokenizer) *Vocab {
	n := tk.VocabSize()
	v := &Vocab{tk: tk, tokens: make([][]byte, n), text: make([]uint64, (n+63)/64), eog: make([]uint64, (n+63)/64),
		special: map[int32]string{}, ids: map[string]int32{}}
	for id := range int32(n) {
		if tk.IsEOG(id) {
			v.eog[id/64] |= 1 << (id % 64)
		}
		if tk.IsSpecial(id) {
			continue
		}
		v.tokens[id] = []byte(tk.TokenText(id))
		if len(v.tokens[id]) > 0 {
			v.text[id/64] |= 1 << (id % 64)
		}
	}
	for _, name := range harmony.SpecialTokens {
		if id, ok := tk.TokenID(name); ok {
			v.special[id], v.ids[name] = name, id
		}
	}
	v.trie = grammar.NewVocab(v.tokens)
	return v
}

// Spec is what a request constrains.
type Spec struct {
	// Answer is the grammar of the final answer (response_format); nil
	// leaves it free.
	Answer *grammar.Grammar
	// Call, when not empty, are the functions one of which must be called
	// (tool_choice "required" or a named function).
	Call []string
	// Offer, with Answer, are the functions the model may call instead of
	// answering (tool_choice "auto").
	Offer []string
	// Args are the argument grammars by function name: of the functions in
	// Call and of strict ones, whose arguments are constrained whenever
	// they are called (harmony models only).
	Args map[string]*grammar.Grammar
	// Reasoning is the most reasoning tokens before the answer is forced
	// (harmony); it is capped so the answer fits the token budget.
	Reasoning int
}

// active reports whether s constrains anything.
func (s *Spec) active() bool { return s.Answer != nil || len(s.Call) > 0 || len(s.Args) > 0 }

// Format is how a model lays out its answer.
type Format int

// The formats.
const (
	// Plain output is the answer itself; the model cannot call tools.
	Plain Format = iota
	// Tagged output writes a tool call as <tool_call>\n{"name":...,
	// "arguments":...}\n</tool_call> (Qwen2.5's and the Hermes templates).
	Tagged
	// Harmony is gpt-oss's message format.
	Harmony
)

// New returns a constraint factory for a request, or nil when spec
// constrains nothing.
func (v *Vocab) New(spec Spec, format Format) (func() engine.Constraint, error) {
	if !spec.active() {
		return nil, nil
	}
	if format != Harmony {
		// Calls are not followed in other formats (strict arguments stay
		// free); a forced one is written whole.
		switch {
		case len(spec.Call) > 0 && format == Tagged:
			args := make([]*grammar.Grammar, len(spec.Call))
			for i, name := range spec.Call {
				if args[i] = spec.Args[name]; args[i] == nil {
					return nil, fmt.Errorf("no argument grammar for %q", name)
				}
			}
			g, err := grammar.ToolCall(spec.Call, args)
			if err != nil {
				return nil, err
			}
			return func() engine.Constraint {
				c := v.plain(g)
				c.queue, c.suffix = v.tk.Encode("<tool_call>\n"), v.tk.Encode("\n</tool_call>")
				return c
			}, nil
		case len(spec.Call) > 0:
			return nil, errors.New("forcing a tool call needs a model that writes calls (harmony, or <tool_call> tags)")
		case spec.Answer == nil:
			return nil, nil
		}
		return func() engine.Constraint { return v.plain(spec.Answer) }, nil
	}
	for _, name := range harmony.SpecialTokens {
		if _, ok := v.ids[name]; !ok {
			return nil, fmt.Errorf("the vocabulary has no %s token", name)
		}
	}
	for _, name := range append(spec.Call, spec.Offer...) {
		if spec.Args[name] == nil {
			return nil, fmt.Errorf("no argument grammar for %q", name)
		}
	}
	return func() engine.Constraint { return v.harmony(spec) }, nil
}

// jsonPhase constrains tokens to a grammar, then to an end token.
type jsonPhase struct {
	v   *Vocab
	m   *grammar.Matcher
	end []uint64 // the end tokens allowed once the value is complete
	buf []uint64
}

func (p *jsonPhase) next(remaining int) ([]uint64, int32) {
	// After this token, remaining-1 are left, one of them for the end
	// token: the value must be able to end in remaining-2 bytes (a
	// byte-sized token each).
	if remaining <= 1 && p.m.CanEnd() {
		return p.end, -1
	}
	mask := p.v.trie.Mask(p.m, remaining-2)
	if !p.m.CanEnd() {
		return mask, -1
	}
	p.buf = append(p.buf[:0], mask...)
	for i, w := range p.end {
		p.buf[i] |= w
	}
	return p.buf, -1
}

// accept reports whether id ended the value.
func (p *jsonPhase) accept(id int32) (bool, error) {
	if engine.Allowed(p.end, id) && p.m.CanEnd() {
		return true, nil
	}
	b := p.v.tokens[id]
	if len(b) == 0 || !p.m.Advance(b) {
		return false, fmt.Errorf("token %d (%q) breaks the grammar", id, clip(p.v.tk.TokenText(id)))
	}
	return false, nil
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// plainConstraint constrains a whole completion, ended by any
// end-of-generation token; for a tagged call, the tags around the value
// are forced.
type plainConstraint struct {
	json   jsonPhase
	queue  []int32 // tokens to force
	suffix []int32 // forced once the value is complete
	done   bool
}

func (v *Vocab) plain(g *grammar.Grammar) *plainConstraint {
	return &plainConstraint{json: jsonPhase{v: v, m: g.NewMatcher(), end: v.eog}}
}

func (c *plainConstraint) Next(remaining int) ([]uint64, int32) {
	switch {
	case len(c.queue) > 0:
		return nil, c.queue[0]
	case c.done:
		return c.json.end, -1
	}
	return c.json.next(remaining - len(c.suffix))
}

func (c *plainConstraint) Accept(id int32) error {
	switch {
	case len(c.queue) > 0:
		if id != c.queue[0] {
			return fmt.Errorf("token %d where %d was forced", id, c.queue[0])
		}
		c.queue = c.queue[1:]
		return nil
	case c.done:
		return nil
	}
	end, err := c.json.accept(id)
	switch {
	case err != nil:
	case end:
		c.done = true
	case c.suffix != nil && c.json.m.Done():
		c.done, c.queue = true, c.suffix
	}
	return err
}

// The phases of a harmony constraint.
const (
	phStart  = iota // before the first token: reasoning or not
	phReason        // free analysis text, until <|end|> or the budget
	phHeader        // choosing the answer's header: final, or a call
	phJSON          // the answer's or the call's JSON
	phFree          // free output, watched for calls of strict functions
	phDone
)

// harmonyConstraint lays the answer into harmony:
//
//	<|channel|>analysis<|message|>(free)<|end|><|start|>assistant<|channel|>final<|message|>(json)<|return|>
//	... <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>(json)<|call|>
//
// with every token outside (free) and (json) forced, except the header's
// choice when there is one: among the functions of a required call, or
// between the final answer and the functions offered beside a format. With
// only strict functions to enforce, output stays free and a call's
// arguments are constrained when it begins.
type harmonyConstraint struct {
	v        *Vocab
	spec     Spec
	phase    int
	queue    []int32 // tokens to force, then phase becomes next
	next     int
	reasoned int
	options  []string // headers to choose from, after <|channel|>
	header   *grammar.Matcher
	chosen   []byte // the header's bytes so far
	json     jsonPhase
	reserve  int // tokens the header and the shortest answer need
	analysis int // tokens of the analysis message's header
	limit    int // the most reasoning tokens
	parser   *harmony.Parser
	textEnd  []uint64
}

func (v *Vocab) harmony(spec Spec) *harmonyConstraint {
	c := &harmonyConstraint{v: v, spec: spec}
	if spec.Answer == nil && len(spec.Call) == 0 {
		c.phase, c.parser = phFree, harmony.NewParser()
		return c
	}
	calls := spec.Call
	if len(calls) == 0 {
		c.options, calls = []string{"final"}, spec.Offer
	}
	for _, name := range calls {
		c.options = append(c.options, "commentary to=functions."+name+" ")
	}
	// The reserve covers whichever header the model chooses: the longest,
	// and the longest shortest value.
	longest, need := 0, 0
	for _, o := range c.options {
		longest = max(longest, len(o))
	}
	if len(spec.Call) == 0 {
		need = spec.Answer.NewMatcher().MinBytes()
	}
	for _, name := range calls {
		need = max(need, spec.Args[name].NewMatcher().MinBytes())
	}
	// <|end|><|start|>assistant<|channel|> header <|constrain|>json<|message|> value end,
	// the header's bytes bounding its tokens.
	c.reserve = 1 + 1 + len(v.tk.Encode("assistant")) + 1 + longest + 2 + len(v.tk.Encode("json")) + need + 1
	c.analysis = 2 + len(v.tk.Encode("analysis"))
	c.textEnd = append([]uint64(nil), v.text...)
	end := v.ids[harmony.TokenEnd]
	c.textEnd[end/64] |= 1 << (end % 64)
	c.phase = phStart
	return c
}

// start begins the output: with the analysis message if the budget allows
// some reasoning, else with the answer's header.
func (c *harmonyConstraint) start(total int) {
	c.phase = phReason // until the forced tokens end
	c.limit = min(c.spec.Reasoning, max(0, (total-c.reserve-c.analysis)/2))
	if c.limit <= 0 {
		c.openHeader(false)
		return
	}
	c.force(phReason, c.special(harmony.TokenChannel), c.v.tk.Encode("analysis"), c.special(harmony.TokenMessage))
}

func (c *harmonyConstraint) special(name string) []int32 { return []int32{c.v.ids[name]} }

// force queues tokens, after which the phase becomes next.
func (c *harmonyConstraint) force(next int, parts ...[]int32) {
	for _, p := range parts {
		c.queue = append(c.queue, p...)
	}
	c.next = next
}

// openHeader forces the start of the answer's header (after the analysis
// message when afterReasoning), then the choice of header.
func (c *harmonyConstraint) openHeader(afterReasoning bool) {
	var parts [][]int32
	if afterReasoning {
		parts = append(parts, c.special(harmony.TokenStart), c.v.tk.Encode("assistant"))
	}
	parts = append(parts, c.special(harmony.TokenChannel))
	if len(c.options) == 1 {
		parts = append(parts, c.v.tk.Encode(c.options[0]))
		c.force(phHeader, parts...)
		c.queue = append(c.queue, c.afterHeader(c.options[0])...)
		return
	}
	g, _ := grammar.Literals(c.options) // fails only without options
	c.header = g.NewMatcher()
	c.force(phHeader, parts...)
}

// afterHeader returns the tokens that close the header chosen and
// prepares the JSON that follows.
func (c *harmonyConstraint) afterHeader(option string) []int32 {
	c.next = phJSON
	if option == "final" {
		c.json = jsonPhase{v: c.v, m: c.spec.Answer.NewMatcher(), end: c.endMask(harmony.TokenReturn)}
		return c.special(harmony.TokenMessage)
	}
	name := strings.TrimSuffix(strings.TrimPrefix(option, "commentary to=functions."), " ")
	c.json = jsonPhase{v: c.v, m: c.spec.Args[name].NewMatcher(), end: c.endMask(harmony.TokenCall)}
	out := c.special(harmony.TokenConstrain)
	out = append(out, c.v.tk.Encode("json")...)
	return append(out, c.v.ids[harmony.TokenMessage])
}

func (c *harmonyConstraint) endMask(name string) []uint64 {
	m := make([]uint64, len(c.v.text))
	id := c.v.ids[name]
	m[id/64] |= 1 << (id % 64)
	return m
}

func (c *harmonyConstraint) Next(remaining int) ([]uint64, int32) {
	if c.phase == phStart {
		c.start(remaining)
	}
	if len(c.queue) > 0 {
		return nil, c.queue[0]
	}
	switch c.phase {
	case phReason:
		if c.reasoned >= c.limit || remaining <= c.reserve {
			return nil, c.v.ids[harmony.TokenEnd]
		}
		return c.textEnd, -1
	case phHeader:
		return c.v.trie.Mask(c.header, -1), -1
	case phJSON:
		return c.json.next(remaining)
	}
	return nil, -1
}

func (c *harmonyConstraint) Accept(id int32) error {
	if len(c.queue) > 0 {
		if id != c.queue[0] {
			return fmt.Errorf("token %d where %d was forced", id, c.queue[0])
		}
		c.queue = c.queue[1:]
		if len(c.queue) == 0 {
			c.phase = c.next
		}
		return nil
	}
	switch c.phase {
	case phReason:
		if id == c.v.ids[harmony.TokenEnd] {
			c.openHeader(true)
			return nil
		}
		if !engine.Allowed(c.v.text, id) {
			return fmt.Errorf("special token %d in the analysis", id)
		}
		c.reasoned++
	case phHeader:
		if b := c.v.tokens[id]; len(b) == 0 || !c.header.Advance(b) {
			return fmt.Errorf("token %d breaks the header", id)
		}
		c.chosen = append(c.chosen, c.v.tokens[id]...)
		// No option is a prefix of another, so a complete one is chosen.
		if c.header.CanEnd() {
			c.queue = c.afterHeader(string(c.chosen))
		}
	case phJSON:
		end, err := c.json.accept(id)
		if end {
			c.phase = phDone
		}
		return err
	case phFree:
		var evs []harmony.Event
		if name, ok := c.v.special[id]; ok {
			evs = c.parser.Special(name)
		} else {
			evs = c.parser.Text(string(c.v.tokens[id]))
		}
		for _, ev := range evs {
			if g := c.spec.Args[ev.ToolName]; ev.Kind == harmony.ToolCallStart && g != nil {
				c.phase = phJSON
				c.json = jsonPhase{v: c.v, m: g.NewMatcher(), end: c.endMask(harmony.TokenCall)}
			}
		}
	}
	return nil
}
