package constrain

import (
	"encoding/json"
	"math/bits"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"orcd/engine"
	"orcd/grammar"
	"orcd/harmony"
	"orcd/internal/schematest"
	"orcd/internal/testutil"
	"orcd/tokenizer"
)

var (
	vocabOnce sync.Once
	o200k     *Vocab
	o200kTok  *tokenizer.Tokenizer
)

func testVocab(t testing.TB) (*Vocab, *tokenizer.Tokenizer) {
	t.Helper()
	vocabOnce.Do(func() {
		tk, err := tokenizer.FromHFJSONBytes(testutil.ReadGzip(t, "../tokenizer/testdata/o200k_harmony.tokenizer.json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		o200kTok, o200k = tk, NewVocab(tk)
	})
	if o200k == nil {
		t.Fatal("no vocabulary")
	}
	return o200k, o200kTok
}

// run drives c like the engine with a random model: a random allowed
// token each step (any token when free), until an end-of-generation token
// or maxTokens.
func run(t testing.TB, c engine.Constraint, tk *tokenizer.Tokenizer, rng *rand.Rand, maxTokens int) []int32 {
	t.Helper()
	var out []int32
	for len(out) < maxTokens {
		mask, forced := c.Next(maxTokens - len(out))
		id := forced
		if id < 0 {
			id = pick(mask, tk.VocabSize(), rng)
		}
		if err := c.Accept(id); err != nil {
			t.Fatalf("after %q: %v", tk.Decode(out), err)
		}
		out = append(out, id)
		if tk.IsEOG(id) {
			break
		}
	}
	return out
}

// pick draws a random allowed id (any id of n when mask is nil).
func pick(mask []uint64, n int, rng *rand.Rand) int32 {
	if mask == nil {
		return int32(rng.IntN(n))
	}
	count := 0
	for _, w := range mask {
		count += bits.OnesCount64(w)
	}
	if count == 0 {
		panic("empty mask")
	}
	k := rng.IntN(count)
	for i, w := range mask {
		if c := bits.OnesCount64(w); k >= c {
			k -= c
			continue
		}
		for ; ; w &= w - 1 {
			if k == 0 {
				return int32(i*64 + bits.TrailingZeros64(w))
			}
			k--
		}
	}
	panic("unreachable")
}

// parse splits harmony output into its final content, reasoning and calls.
func parse(tk *tokenizer.Tokenizer, ids []int32) (content, reasoning string, calls map[string]string, stop string) {
	p := harmony.NewParser()
	var c, r strings.Builder
	calls = map[string]string{}
	names := map[int]string{}
	for _, id := range ids {
		var evs []harmony.Event
		if tk.IsSpecial(id) {
			evs = p.Special(tk.TokenText(id))
		} else {
			evs = p.Text(tk.TokenText(id))
		}
		for _, ev := range evs {
			switch ev.Kind {
			case harmony.Content:
				c.WriteString(ev.Text)
			case harmony.Reasoning:
				r.WriteString(ev.Text)
			case harmony.ToolCallStart:
				names[ev.ToolIndex] = ev.ToolName
				calls[ev.ToolName] += ""
			case harmony.ToolCallArgs:
				calls[names[ev.ToolIndex]] += ev.Text
			}
		}
	}
	return c.String(), r.String(), calls, p.Stop()
}

const weather = `{"type":"object","properties":{"location":{"type":"string"},"unit":{"enum":["c","f"]},"days":{"type":"integer"}},"required":["location","unit"],"additionalProperties":false}`

func TestHarmonyAnswer(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	g, err := grammar.Compile([]byte(weather))
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(20) {
		budget := []int{0, 5, 40}[seed%3]
		newC, err := v.New(Spec{Answer: g, Reasoning: budget}, Harmony)
		if err != nil {
			t.Fatal(err)
		}
		maxTokens := 30 + int(seed)*5
		ids := run(t, newC(), tk, rand.New(rand.NewPCG(seed, 7)), maxTokens)
		content, reasoning, calls, stop := parse(tk, ids)
		if stop != harmony.TokenReturn || len(calls) != 0 {
			t.Fatalf("seed %d: stop %q, calls %v: %q", seed, stop, calls, tk.Decode(ids))
		}
		schematest.Check(t, weather, content)
		if n := len(tk.Encode(reasoning)); budget == 0 && reasoning != "" || n > budget+8 {
			t.Errorf("seed %d: reasoning of about %d tokens over a budget of %d", seed, n, budget)
		}
	}
}

func TestHarmonyForcedCall(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	g, _ := grammar.Compile([]byte(weather))
	schemas := map[string]string{"get_weather": weather, "get_time": `{"type":"object"}`, "get": `{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}`}
	args := map[string]*grammar.Grammar{"get_weather": g, "get_time": grammar.JSONObject()}
	args["get"], _ = grammar.Compile([]byte(schemas["get"]))
	for seed := range uint64(20) {
		call := []string{"get_weather", "get_time", "get"}
		if seed%2 == 0 {
			call = call[seed%3 : seed%3+1]
		}
		newC, err := v.New(Spec{Call: call, Args: args, Reasoning: 10}, Harmony)
		if err != nil {
			t.Fatal(err)
		}
		ids := run(t, newC(), tk, rand.New(rand.NewPCG(seed, 8)), 80)
		_, _, calls, stop := parse(tk, ids)
		if stop != harmony.TokenCall || len(calls) != 1 {
			t.Fatalf("seed %d: stop %q, calls %v: %q", seed, stop, calls, tk.Decode(ids))
		}
		for name, a := range calls {
			if !strings.Contains(strings.Join(call, ","), name) {
				t.Fatalf("called %q, not one of %v", name, call)
			}
			schematest.Check(t, schemas[name], a)
		}
	}
}

// TestHarmonyStrictFree: with only strict functions, output is free until
// a call of one begins; its arguments then follow the schema.
func TestHarmonyStrictFree(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	g, _ := grammar.Compile([]byte(weather))
	newC, err := v.New(Spec{Args: map[string]*grammar.Grammar{"get_weather": g}}, Harmony)
	if err != nil {
		t.Fatal(err)
	}
	c := newC()
	// The model opens a call itself.
	prefix := "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
	for _, id := range tk.EncodeSpecial(prefix) {
		if mask, forced := c.Next(100); mask != nil || forced >= 0 {
			t.Fatalf("constrained before the call: forced %d", forced)
		}
		if err := c.Accept(id); err != nil {
			t.Fatal(err)
		}
	}
	ids := append(tk.EncodeSpecial(prefix), run(t, c, tk, rand.New(rand.NewPCG(1, 1)), 60)...)
	_, _, calls, stop := parse(tk, ids)
	if stop != harmony.TokenCall {
		t.Fatalf("stop %q: %q", stop, tk.Decode(ids))
	}
	schematest.Check(t, weather, calls["get_weather"])
}

func TestPlain(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	for seed := range uint64(10) {
		newC, err := v.New(Spec{Answer: grammar.JSONObject()}, Plain)
		if err != nil {
			t.Fatal(err)
		}
		ids := run(t, newC(), tk, rand.New(rand.NewPCG(seed, 9)), 20+int(seed))
		if !tk.IsEOG(ids[len(ids)-1]) {
			t.Fatalf("no end: %q", tk.Decode(ids))
		}
		schematest.Check(t, `{"type":"object"}`, tk.Decode(ids[:len(ids)-1]))
	}
	if _, err := v.New(Spec{Call: []string{"f"}, Args: map[string]*grammar.Grammar{"f": grammar.JSONObject()}}, Plain); err == nil {
		t.Error("a forced call on a non-harmony model was accepted")
	}
	if c, err := v.New(Spec{Args: map[string]*grammar.Grammar{"f": grammar.JSONObject()}}, Plain); c != nil || err != nil {
		t.Errorf("strict tools on a non-harmony model: %v, %v; want no constraint", c != nil, err)
	}
}

// TestHarmonyAnswerSchemas: for every schema of grammar's test set and 200
// seeds, a random model's final answer under the constraint parses and
// validates, whatever the token budget.
func TestHarmonyAnswerSchemas(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	for si, schema := range schematest.Schemas() {
		g, err := grammar.Compile([]byte(schema))
		if err != nil {
			t.Fatal(err)
		}
		min := g.NewMatcher().MinBytes()
		for seed := range uint64(200) {
			rng := rand.New(rand.NewPCG(seed, uint64(si)))
			newC, err := v.New(Spec{Answer: g, Reasoning: rng.IntN(20)}, Harmony)
			if err != nil {
				t.Fatal(err)
			}
			// From the tightest budget that fits the shortest answer up.
			maxTokens := min + 12 + rng.IntN(60)
			ids := run(t, newC(), tk, rng, maxTokens)
			content, _, _, stop := parse(tk, ids)
			if stop != harmony.TokenReturn {
				t.Fatalf("schema %d seed %d: no end in %d tokens: %q", si, seed, maxTokens, tk.Decode(ids))
			}
			schematest.Check(t, schema, content)
		}
	}
}

// BenchmarkConstraintToken is the constraint's cost per token (Next and
// Accept, masks cached) over a whole constrained answer on the o200k
// vocabulary: the tokens of the answer are replayed.
func BenchmarkConstraintToken(b *testing.B) {
	v, tk := testVocab(b)
	g, _ := grammar.Compile([]byte(weather))
	newC, _ := v.New(Spec{Answer: g, Reasoning: 8}, Harmony)
	ids := run(b, newC(), tk, rand.New(rand.NewPCG(1, 1)), 120)
	b.ResetTimer()
	n := 0
	for b.Loop() {
		c := newC()
		for i, id := range ids {
			c.Next(120 - i)
			if err := c.Accept(id); err != nil {
				b.Fatal(err)
			}
		}
		n += len(ids)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/token")
}

// TestHarmonyAnswerOrCall: with a format and tools offered, the model
// chooses after its reasoning between the final answer and a call; either
// validates.
func TestHarmonyAnswerOrCall(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	answer, _ := grammar.Compile([]byte(weather))
	timeSchema := `{"type":"object","properties":{"tz":{"type":"string"}},"required":["tz"],"additionalProperties":false}`
	tg, _ := grammar.Compile([]byte(timeSchema))
	spec := Spec{Answer: answer, Offer: []string{"get_time", "get_any"}, Reasoning: 6,
		Args: map[string]*grammar.Grammar{"get_time": tg, "get_any": grammar.JSONObject()}}
	newC, err := v.New(spec, Harmony)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for seed := range uint64(60) {
		ids := run(t, newC(), tk, rand.New(rand.NewPCG(seed, 11)), 90)
		content, _, calls, stop := parse(tk, ids)
		switch stop {
		case harmony.TokenReturn:
			seen["final"] = true
			schematest.Check(t, weather, content)
		case harmony.TokenCall:
			for name, args := range calls {
				seen[name] = true
				schematest.Check(t, map[string]string{"get_time": timeSchema, "get_any": `{"type":"object"}`}[name], args)
			}
		default:
			t.Fatalf("seed %d: no end: %q", seed, tk.Decode(ids))
		}
	}
	if len(seen) != 3 {
		t.Errorf("60 random runs chose only %v", seen)
	}
}

// TestTaggedCall: a forced call in the tagged format is the tags around
// {"name","arguments"}, the arguments valid for the function named, then
// the end.
func TestTaggedCall(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, tk := testVocab(t)
	g, _ := grammar.Compile([]byte(weather))
	newC, err := v.New(Spec{Call: []string{"get_weather", "noop"}, Args: map[string]*grammar.Grammar{"get_weather": g, "noop": grammar.JSONObject()}}, Tagged)
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(20) {
		ids := run(t, newC(), tk, rand.New(rand.NewPCG(seed, 12)), 40+int(seed))
		if !tk.IsEOG(ids[len(ids)-1]) {
			t.Fatalf("seed %d: no end: %q", seed, tk.Decode(ids))
		}
		text := tk.Decode(ids[:len(ids)-1])
		body, ok := strings.CutPrefix(text, "<tool_call>\n")
		body, ok2 := strings.CutSuffix(body, "\n</tool_call>")
		if !ok || !ok2 {
			t.Fatalf("seed %d: %q", seed, text)
		}
		var call struct {
			Name      string
			Arguments json.RawMessage
		}
		if err := json.Unmarshal([]byte(body), &call); err != nil {
			t.Fatalf("seed %d: %q: %v", seed, body, err)
		}
		schematest.Check(t, map[string]string{"get_weather": weather, "noop": `{"type":"object"}`}[call.Name], string(call.Arguments))
	}
}
