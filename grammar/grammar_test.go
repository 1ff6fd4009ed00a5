package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	mbits "math/bits"
	"math/rand/v2"
	"sync"
	"testing"

	"orcd/internal/schematest"
	"orcd/internal/testutil"
	"orcd/tokenizer"
)

// testSchemas are the schemas the random walks cover (shared with the
// tests of constrain and cmd/orcd).
var testSchemas = schematest.Schemas()

// byteWalk draws random allowed bytes until the value may end and a coin
// says so, finishing once budget bytes are near.
func byteWalk(t testing.TB, g *Grammar, rng *rand.Rand, budget int) []byte {
	m := g.NewMatcher()
	var out []byte
	for {
		if m.CanEnd() && (rng.IntN(8) == 0 || m.MinBytes() == 0 && len(out) >= budget) {
			return out
		}
		finish := len(out)+m.MinBytes() >= budget
		d := m.MinBytes()
		var allowed []byte
		for c := 0; c < 256; c++ {
			n := m.Clone()
			if n.Advance([]byte{byte(c)}) && (!finish || n.MinBytes() == d-1) {
				allowed = append(allowed, byte(c))
			}
		}
		if len(allowed) == 0 {
			if !m.CanEnd() {
				t.Fatalf("stuck after %q", out)
			}
			return out
		}
		c := allowed[rng.IntN(len(allowed))]
		// Favour structure over long strings.
		for _, p := range []byte{'"', '}', ']', ','} {
			if bytes.IndexByte(allowed, p) >= 0 && rng.IntN(4) == 0 {
				c = p
			}
		}
		if !m.Advance([]byte{c}) {
			t.Fatal("allowed byte refused")
		}
		out = append(out, c)
		if len(out) > 4*budget+100 {
			t.Fatalf("no end after %q", out)
		}
	}
}

func TestRandomByteWalks(t *testing.T) {
	for _, schema := range testSchemas {
		g, err := Compile([]byte(schema))
		if err != nil {
			t.Fatalf("%s: %v", schema, err)
		}
		for seed := range uint64(60) {
			rng := rand.New(rand.NewPCG(seed, 1))
			out := byteWalk(t, g, rng, 20+int(seed)*3)
			schematest.Check(t, schema, string(out))
		}
	}
}

func TestJSONObject(t *testing.T) {
	for seed := range uint64(100) {
		out := byteWalk(t, JSONObject(), rand.New(rand.NewPCG(seed, 2)), 60)
		schematest.Check(t, `{"type":"object"}`, string(out))
	}
}

// Hand-worked cases: canonical order, required properties, no
// whitespace, JSON number syntax.
func TestAcceptReject(t *testing.T) {
	cases := []struct {
		schema, in string
		complete   bool // accepted in full and complete
		prefix     bool // accepted as a prefix
	}{
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":1}`, true, true},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":-12,"b":"x\u00e9\n"}`, true, true},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"b":"x"}`, false, false},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":1`, false, true},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{ "a":1}`, false, false},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":01}`, false, false},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":1.5}`, false, false},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}},"required":["a"]}`, `{"a":1,}`, false, false},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}}}`, `{}`, true, true},
		{`{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"}}}`, `{"b":""}`, true, true},
		{`{"type":"number"}`, `-0.5e+10`, true, true},
		{`{"type":"number"}`, `1.`, false, true},
		{`{"type":"number"}`, `.5`, false, false},
		{`{"type":"number"}`, `1234567890123456`, false, false}, // 16 integer digits
		{`{"type":"string"}`, "\"a\x01\"", false, false},
		{`{"type":"string"}`, "\"\xc3\xa9\"", true, true},
		{`{"type":"string"}`, "\"\xc3\"", false, false},
		{`{"type":"string"}`, "\"\xed\xa0\x80\"", false, false}, // a UTF-16 surrogate in UTF-8
		{`{"type":"string"}`, `"\x"`, false, false},
		{`{"enum":["a","ab"]}`, `"a"`, true, true},
		{`{"enum":["a","ab"]}`, `"ab"`, true, true},
		{`{"enum":["a","ab"]}`, `"b"`, false, false},
		{`{"enum":[1,12]}`, `1`, true, true},
		{`{"enum":[1,12]}`, `12`, true, true},
		{`{"enum":[1,12]}`, `123`, false, false},
		{`{"type":"array","items":{"type":"boolean"}}`, `[true,false]`, true, true},
		{`{"type":"array","items":{"type":"boolean"}}`, `[true,]`, false, false},
		{`{"type":"array","items":{"type":"boolean"}}`, `[]`, true, true},
		{`{"type":"object"}`, `{"x":[1,{"y":null}],"z":"w"}`, true, true},
		{`{"type":"object"}`, `[]`, false, false},
		{`{"anyOf":[{"type":"string"},{"type":"null"}]}`, `null`, true, true},
		{`{"anyOf":[{"type":"string"},{"type":"null"}]}`, `nul`, false, true},
	}
	for _, c := range cases {
		g, err := Compile([]byte(c.schema))
		if err != nil {
			t.Fatalf("%s: %v", c.schema, err)
		}
		m := g.NewMatcher()
		ok := m.Advance([]byte(c.in))
		if ok != c.prefix || (ok && m.CanEnd() != c.complete) {
			t.Errorf("%s on %q: accepted %v complete %v, want %v %v", c.schema, c.in, ok, ok && m.CanEnd(), c.prefix, c.complete)
		}
	}
}

func TestMinBytes(t *testing.T) {
	cases := []struct {
		schema, prefix string
		want           int
	}{
		{`{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}`, ``, len(`{"a":0}`)},
		{`{"type":"object","properties":{"a":{"type":"integer"},"bb":{"type":"string"}},"required":["a","bb"]}`, `{"a":5`, len(`,"bb":""}`)},
		{`{"type":"object","properties":{"a":{"type":"integer"},"bb":{"type":"string"}},"required":["bb"]}`, `{"`, len(`bb":""}`)},
		{`{"type":"object","properties":{"a":{"type":"integer"},"bb":{"type":"string"}},"required":["bb"]}`, `{"a`, len(`":0,"bb":""}`)},
		{`{"type":"array","items":{"type":"string"}}`, `["ab\u00`, len(`00"]`)},
		{`{"enum":["xyz","xy1234"]}`, `"xy`, len(`z"`)},
		{`{"type":"object"}`, `{"k":`, len(`0}`)},
		{`{"$defs":{"n":{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["next"]}},"$ref":"#/$defs/n"}`, `{"next":{"next":`, len(`null}}`)},
	}
	for _, c := range cases {
		g, err := Compile([]byte(c.schema))
		if err != nil {
			t.Fatal(err)
		}
		m := g.NewMatcher()
		if !m.Advance([]byte(c.prefix)) {
			t.Fatalf("%s refuses %q", c.schema, c.prefix)
		}
		if got := m.MinBytes(); got != c.want {
			t.Errorf("%s after %q: MinBytes %d, want %d", c.schema, c.prefix, got, c.want)
		}
	}
}

func TestSchemaErrors(t *testing.T) {
	cases := []struct{ schema, path, keyword string }{
		{`{"type":"string","pattern":"^a"}`, "", "pattern"},
		{`{"type":"object","properties":{"a":{"type":"integer","minimum":3}}}`, "/properties/a", "minimum"},
		{`{"type":"array","items":{"oneOf":[{"type":"string"}]}}`, "/items", "oneOf"},
		{`{"$ref":"#/$defs/missing"}`, "", "$ref"},
		{`{"type":"object","properties":{"a":{}},"required":["b"]}`, "", "required"},
		{`{"type":"object","additionalProperties":{"type":"string"}}`, "", "additionalProperties"},
		{`{"type":"strin"}`, "", "type"},
		{`{"$defs":{"x":{"type":"string","format":"date-time"}},"$ref":"#/$defs/x"}`, "/$defs/x", "format"},
		{`{"enum":[]}`, "", "enum"},
	}
	for _, c := range cases {
		_, err := Compile([]byte(c.schema))
		var se *SchemaError
		if !errors.As(err, &se) || se.Path != c.path || se.Keyword != c.keyword {
			t.Errorf("%s: error %v, want keyword %q at %q", c.schema, err, c.keyword, c.path)
		}
	}
	for _, bad := range []string{`[`, `3`, `{"type":"object","properties":{"a":{"$ref":"#"}},"required":["a"]}`} {
		if _, err := Compile([]byte(bad)); err == nil {
			t.Errorf("%s compiled", bad)
		}
	}
}

var (
	o200kOnce   sync.Once
	o200kVocab  *Vocab
	o200kTokens [][]byte
)

// o200k is the o200k_harmony vocabulary (201,088 ids) as a Vocab, and
// its tokens' bytes.
func o200k(t testing.TB) (*Vocab, [][]byte) {
	o200kOnce.Do(func() {
		tk, err := tokenizer.FromHFJSONBytes(testutil.ReadGzip(t, "../tokenizer/testdata/o200k_harmony.tokenizer.json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		o200kTokens = tokenBytesOf(tk)
		o200kVocab = NewVocab(o200kTokens)
	})
	if o200kVocab == nil {
		t.Fatal("no vocabulary")
	}
	return o200kVocab, o200kTokens
}

// tokenBytesOf lists a tokenizer's tokens' bytes, special tokens empty.
func tokenBytesOf(tk *tokenizer.Tokenizer) [][]byte {
	out := make([][]byte, tk.VocabSize())
	for id := range out {
		if !tk.IsSpecial(int32(id)) {
			out[id] = []byte(tk.TokenText(int32(id)))
		}
	}
	return out
}

// allowedIDs returns the allowed ids of mask.
func allowedIDs(mask []uint64) []int32 {
	var ids []int32
	for w, bits := range mask {
		for ; bits != 0; bits &= bits - 1 {
			ids = append(ids, int32(w*64+mbits.TrailingZeros64(bits)))
		}
	}
	return ids
}

// TestTokenWalks draws random allowed tokens of the o200k vocabulary and
// checks each mask against the matcher token by token.
func TestTokenWalks(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, toks := o200k(t)
	for si, schema := range testSchemas {
		g, err := Compile([]byte(schema))
		if err != nil {
			t.Fatal(err)
		}
		for seed := range uint64(4) {
			rng := rand.New(rand.NewPCG(seed, uint64(si)))
			budget := g.NewMatcher().MinBytes() + 1 + rng.IntN(40)
			m := g.NewMatcher()
			var out []byte
			for n := 0; ; n++ {
				if m.CanEnd() && rng.IntN(4) == 0 {
					break
				}
				left := budget - n
				limit := max(0, left-1)
				ids := allowedIDs(v.Mask(m, limit))
				if len(ids) == 0 {
					if !m.CanEnd() {
						t.Fatalf("%s: no token allowed after %q", schema, out)
					}
					break
				}
				// Spot-check the mask: an allowed token advances, a
				// random refused one does not.
				id := ids[rng.IntN(len(ids))]
				if a := m.Clone(); !a.Advance(toks[id]) || a.MinBytes() > limit {
					t.Fatalf("%s: mask allows %q after %q but the matcher refuses it or cannot end within %d bytes", schema, toks[id], out, limit)
				}
				if r := int32(rng.IntN(len(toks))); len(toks[r]) > 0 && v.Mask(m, -1)[r/64]&(1<<(r%64)) == 0 && m.Clone().Advance(toks[r]) {
					t.Fatalf("%s: mask refuses %q after %q but the matcher takes it", schema, toks[r], out)
				}
				m.Advance(toks[id])
				out = append(out, toks[id]...)
				if n > budget {
					t.Fatalf("%s: no end in %d tokens: %q", schema, n, out)
				}
			}
			if n := len(out); n > 0 && !m.CanEnd() {
				t.Fatalf("ended incomplete: %q", out)
			}
			schematest.Check(t, schema, string(out))
		}
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range testSchemas {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"$ref":"#"}`))
	f.Add([]byte(`{"anyOf":[{"$ref":"#"},{"type":"null"}]}`))
	f.Add([]byte(`{"anyOf":[{"$ref":"#/$defs/a"},{"type":"null"}],"$defs":{"a":{"anyOf":[{"$ref":"#"}]}}}`))
	f.Add([]byte(`{"anyOf":[{"$ref":"#/$defs/a"}],"$defs":{"a":{"$ref":"#/$defs/a"}}}`))
	f.Fuzz(func(t *testing.T, schema []byte) {
		g, err := Compile(schema)
		if err != nil {
			return
		}
		rng := rand.New(rand.NewPCG(1, 2))
		out := byteWalk(t, g, rng, 40)
		if !json.Valid(out) {
			t.Fatalf("schema %s: invalid JSON %q", schema, out)
		}
	})
}

func FuzzMatcher(f *testing.F) {
	f.Add(0, []byte(`{"name":"x","age":3}`))
	f.Add(14, []byte(`{"value":1,"next":null}`))
	f.Add(16, []byte(`{"a":[1,"b",{"c":null}]}`))
	f.Fuzz(func(t *testing.T, which int, in []byte) {
		if which < 0 {
			which = -which
		}
		schema := testSchemas[which%len(testSchemas)]
		g, err := Compile([]byte(schema))
		if err != nil {
			t.Fatal(err)
		}
		m := g.NewMatcher()
		if m.Advance(in) && m.CanEnd() {
			schematest.Check(t, schema, string(in))
		}
	})
}

// TestMaskMatchesMatcher compares masks with the matcher token by token
// over the whole o200k vocabulary, for states of several kinds and limits.
func TestMaskMatchesMatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the o200k vocabulary")
	}
	v, toks := o200k(t)
	for _, c := range []struct {
		schema, prefix string
		limit          int
	}{
		{testSchemas[0], `{"name":"Al`, -1},
		{testSchemas[0], `{"name":"Al`, 9},
		{testSchemas[0], `{"name":"Al`, 11},
		{testSchemas[0], `{"name":"\u00`, -1},
		{testSchemas[0], "{\"name\":\"\xe2\x82", -1},
		{testSchemas[18], `{"opt1":"x",`, 20},
		{testSchemas[1], `{"a":12`, -1},
		{testSchemas[15], `{"root":{"name":"a","children":[`, -1},
		{`{"type":"object"}`, `{"k":[1,"v`, 6},
		{testSchemas[12], ``, -1},
	} {
		g, err := Compile([]byte(c.schema))
		if err != nil {
			t.Fatal(err)
		}
		m := g.NewMatcher()
		if !m.Advance([]byte(c.prefix)) {
			t.Fatalf("prefix %q refused", c.prefix)
		}
		mask := v.Mask(m, c.limit)
		for id, b := range toks {
			n := m.Clone()
			want := len(b) > 0 && n.Advance(b) && (c.limit < 0 || n.MinBytes() <= c.limit || n.MinBytes() < m.MinBytes())
			if got := mask[id/64]&(1<<(id%64)) != 0; got != want {
				t.Fatalf("%s after %q, limit %d: token %d %q allowed %v, matcher says %v", c.schema, c.prefix, c.limit, id, b, got, want)
			}
		}
	}
}

// TestToolCall: the call object names one function and carries its
// arguments; another function's arguments are refused (worked by hand).
func TestToolCall(t *testing.T) {
	a, _ := Compile([]byte(`{"type":"object","properties":{"x":{"type":"integer"}},"required":["x"],"additionalProperties":false}`))
	g, err := ToolCall([]string{"f", "g"}, []*Grammar{a, JSONObject()})
	if err != nil {
		t.Fatal(err)
	}
	for in, ok := range map[string]bool{
		`{"name":"f","arguments":{"x":1}}`:  true,
		`{"name":"g","arguments":{"y":[]}}`: true,
		`{"name":"f","arguments":{"y":1}}`:  false,
		`{"name":"h","arguments":{}}`:       false,
		`{"arguments":{},"name":"g"}`:       false,
	} {
		m := g.NewMatcher()
		if got := m.Advance([]byte(in)) && m.Done(); got != ok {
			t.Errorf("%s: accepted %v, want %v", in, got, ok)
		}
	}
	if m := g.NewMatcher(); m.MinBytes() != len(`{"name":"g","arguments":{}}`) {
		t.Errorf("MinBytes %d", m.MinBytes())
	}
	if _, err := ToolCall(nil, nil); err == nil {
		t.Error("a call of no function")
	}
}
