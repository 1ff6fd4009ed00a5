package main

import (
	"bytes"
	"log/slog"
	"regexp"
	"slices"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// A load's progress goes to the log, not to a non-terminal, and a line
// is written only once both another quarter is done and 2 s have passed
// since the last one.
func TestLoadProgressLogsAtMostPerQuarterAnd2s(t *testing.T) {
	cases := []struct {
		name  string
		steps int           // equal progress calls from 0 to the total
		each  time.Duration // clock time per call
		want  []string
	}{
		// A small model loads in well under 2 s: no progress lines at all
		// (the "model loaded" line follows).
		{"1 MB in 50 ms", 100, time.Millisecond / 2, nil},
		// 40 s: a line per quarter, not per tenth or per 2 s.
		{"40 s, 1000 calls", 1000, 40 * time.Millisecond, []string{"percent=25", "percent=50", "percent=75", "percent=100"}},
		// 5 s: quarters come every 1.25 s, so a line is due when 2 s have
		// passed: at 2 s (40%) and 4 s (80%).
		{"5 s, 100 calls", 100, 50 * time.Millisecond, []string{"percent=40", "percent=80"}},
		// 3 calls of a third each, 10 s apart: each crosses a quarter.
		{"3 big tensors", 3, 10 * time.Second, []string{"percent=33", "percent=66", "percent=100"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs, bar bytes.Buffer
			clock := newFakeClock()
			progress := loadProgressAt("m.gguf", slog.New(slog.NewTextHandler(&logs, nil)), &bar, clock.now)
			const total = 1_000_000
			for i := 1; i <= c.steps; i++ {
				clock.advance(c.each)
				progress(int64(i)*total/int64(c.steps), total)
			}
			if bar.Len() != 0 {
				t.Errorf("drew a bar on a non-terminal: %q", bar.String())
			}
			if got := regexp.MustCompile(`percent=\d+`).FindAllString(logs.String(), -1); !slices.Equal(got, c.want) {
				t.Errorf("logged %v, want %v:\n%s", got, c.want, logs.String())
			}
		})
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a bytes.Buffer counts as a terminal")
	}
}

// progressLine on a non-terminal (synth's progress in a log file) is gated
// the same way.
func TestProgressLineNonTerminalIsGated(t *testing.T) {
	var out bytes.Buffer
	progress := progressLine(&out, "synth")
	for done := int64(0); done <= 1000; done += 5 {
		progress(done, 1000)
	}
	if out.Len() != 0 {
		t.Errorf("a progress finished within 2 s wrote %q", out.String())
	}
}
