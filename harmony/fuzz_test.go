package harmony

import (
	"strings"
	"testing"
)

// FuzzParser feeds arbitrary harmony-like output: the parser must not panic,
// events never carry a special token, and content plus reasoning plus tool
// arguments never exceed the text fed in.
func FuzzParser(f *testing.F) {
	for _, s := range []string{
		"<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|return|>",
		" to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
		"<|message|><|message|><|end|>x<|start|><|start|>",
	} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, output string, n int) {
		n = 1 + (n&0xff)%16
		p := NewParser()
		in, out := 0, 0
		for _, piece := range split(output) {
			var evs []Event
			if piece.Special != "" {
				evs = p.Special(piece.Special)
			} else {
				for s := piece.Text; s != ""; {
					k := min(n, len(s))
					in += k
					evs = append(evs, p.Text(s[:k])...)
					s = s[k:]
				}
			}
			for _, ev := range evs {
				out += len(ev.Text)
				for _, sp := range SpecialTokens {
					if strings.Contains(ev.Text, sp) {
						t.Fatalf("event %+v carries %s", ev, sp)
					}
				}
			}
		}
		if out > in {
			t.Fatalf("events carry %d bytes of %d fed", out, in)
		}
	})
}

// FuzzToolSchema renders arbitrary parameter schemas: errors are fine,
// panics are not.
func FuzzToolSchema(f *testing.F) {
	f.Add(`{"type":"object","properties":{"a":{"type":"array","items":{"enum":["x",1,null]}}},"required":["a"]}`)
	f.Add(`{"properties":{"b":{"anyOf":[{"type":"string"},{"type":["number","null"]}],"default":{"k":1}}}}`)
	f.Fuzz(func(t *testing.T, schema string) {
		renderTools([]Tool{{Name: "f", Parameters: []byte(schema)}})
	})
}
