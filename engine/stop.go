package engine

import "strings"

// StopMatcher finds stop strings in text that arrives in pieces. It holds
// back any tail of the text that could still grow into a stop string, so a
// stop string is never emitted, even when it spans token boundaries.
type StopMatcher struct {
	stops []string
	held  string
}

// NewStopMatcher returns a matcher for the given non-empty stop strings.
func NewStopMatcher(stops []string) *StopMatcher {
	return &StopMatcher{stops: stops}
}

// Push adds text and returns the text that is now safe to emit. When a stop
// string is complete, hit is true and out is the text before it; the stop
// string and everything after it are dropped.
func (m *StopMatcher) Push(text string) (out string, hit bool) {
	if len(m.stops) == 0 {
		return text, false
	}
	buf := m.held + text
	first := -1
	for _, s := range m.stops {
		if i := strings.Index(buf, s); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	if first >= 0 {
		m.held = ""
		return buf[:first], true
	}
	// Keep the longest tail of buf that is a proper prefix of a stop
	// string. Stop strings are valid UTF-8, so such a tail starts on a rune
	// boundary and the emitted part stays valid UTF-8.
	keep := 0
	for _, s := range m.stops {
		for k := min(len(s)-1, len(buf)); k > keep; k-- {
			if strings.HasSuffix(buf, s[:k]) {
				keep = k
				break
			}
		}
	}
	m.held = buf[len(buf)-keep:]
	return buf[:len(buf)-keep], false
}

// Flush returns the held-back text once no more text will come.
func (m *StopMatcher) Flush() string {
	out := m.held
	m.held = ""
	return out
}
