package engine

import "testing"

func TestStopMatcher(t *testing.T) {
	cases := []struct {
		stops  []string
		pieces []string
		want   string
		hit    bool
	}{
		{[]string{"STOP"}, []string{"hello ", "ST", "O", "P more"}, "hello ", true},
		{[]string{"abcd"}, []string{"ab", "cab", "cd"}, "abc", true},
		{[]string{"abcd"}, []string{"ab", "c", "x"}, "abcx", false},
		{[]string{"\n\n", "END"}, []string{"a\n", "b E", "N", "D"}, "a\nb ", true},
		{[]string{"\n\n", "END"}, []string{"a\n", "\nEND"}, "a", true},
		{[]string{"日本"}, []string{"こんにちは日", "本語"}, "こんにちは", true},
		{[]string{"xyz"}, []string{"ends with xy"}, "ends with xy", false},
		{nil, []string{"a", "b"}, "ab", false},
	}
	for _, c := range cases {
		m := NewStopMatcher(c.stops)
		out, hit := "", false
		for _, p := range c.pieces {
			s, h := m.Push(p)
			out += s
			if h {
				hit = true
				break
			}
		}
		if !hit {
			out += m.Flush()
		}
		if out != c.want || hit != c.hit {
			t.Errorf("stops %q, pieces %q: got %q (hit %v), want %q (hit %v)", c.stops, c.pieces, out, hit, c.want, c.hit)
		}
	}
}

func TestStopMatcherHoldsBackPrefix(t *testing.T) {
	m := NewStopMatcher([]string{"</s>"})
	if out, _ := m.Push("text</"); out != "text" {
		t.Errorf("emitted %q before the stop string could be ruled out", out)
	}
	if out, _ := m.Push("p>"); out != "</p>" {
		t.Errorf("released %q, want %q", out, "</p>")
	}
}
