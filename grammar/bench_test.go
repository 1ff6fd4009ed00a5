package grammar

import "testing"

// benchStates are matcher states met while generating: inside a string
// (nearly every token allowed), at an object key (a few allowed), in a
// number, and at the start.
var benchStates = []struct{ name, schema, prefix string }{
	{"string", testSchemas[0], `{"name":"Ali`},
	{"key", testSchemas[18], `{"opt1":"x",`},
	{"number", testSchemas[1], `{"a":12`},
	{"start", testSchemas[0], ``},
	{"json_object", "", `{"k":[1,"v`},
}

func benchMatcher(b *testing.B, schema, prefix string) *Matcher {
	g := JSONObject()
	if schema != "" {
		var err error
		if g, err = Compile([]byte(schema)); err != nil {
			b.Fatal(err)
		}
	}
	m := g.NewMatcher()
	if !m.Advance([]byte(prefix)) {
		b.Fatalf("prefix %q refused", prefix)
	}
	return m
}

// BenchmarkMaskWarm is the per-token cost of a mask on the o200k_harmony
// vocabulary (201,088 ids) once the state's mask is cached.
func BenchmarkMaskWarm(b *testing.B) {
	v, _ := o200k(b)
	for _, s := range benchStates {
		b.Run(s.name, func(b *testing.B) {
			m := benchMatcher(b, s.schema, s.prefix)
			v.Mask(m, -1)
			for b.Loop() {
				v.Mask(m, -1)
			}
		})
	}
}

// BenchmarkMaskCold is the cost of computing a mask by walking the trie
// (the first time a state is met).
func BenchmarkMaskCold(b *testing.B) {
	v, _ := o200k(b)
	for _, s := range benchStates {
		b.Run(s.name, func(b *testing.B) {
			m := benchMatcher(b, s.schema, s.prefix)
			for b.Loop() {
				v.mu.Lock()
				clear(v.cache)
				v.mu.Unlock()
				v.Mask(m, -1)
			}
		})
	}
}

// BenchmarkNewVocab is the one-time cost of the o200k_harmony trie.
func BenchmarkNewVocab(b *testing.B) {
	_, toks := o200k(b)
	for b.Loop() {
		NewVocab(toks)
	}
}
