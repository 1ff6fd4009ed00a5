package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// Progress written as lines (logs, or a progress shown on something other
// than a terminal) is spaced out by a progressGate: a line is due once both
// another quarter of the work is done and progressInterval has passed since
// the last line (or the start). A load that takes a second writes none; a
// long one at most a line per quarter.
const progressInterval = 2 * time.Second

// progressGate decides when a progress line is due.
type progressGate struct {
	now     func() time.Time
	last    time.Time
	quarter int64 // quarters done at the last line
}

func newProgressGate(now func() time.Time) *progressGate {
	return &progressGate{now: now, last: now()}
}

// due reports whether a line should be written for done of total.
func (g *progressGate) due(done, total int64) bool {
	q := 4 * done / max(total, 1)
	if q <= g.quarter {
		return false
	}
	t := g.now()
	if t.Sub(g.last) < progressInterval {
		return false
	}
	g.quarter, g.last = q, t
	return true
}

// progressLine shows a byte-count progress on w: one line redrawn in place
// on a terminal, else a line when a progressGate allows.
func progressLine(w io.Writer, label string) func(done, total int64) {
	return progressCounter(w, label, func(done, total int64, secs float64) string {
		rate := float64(done) / max(secs, 1e-9) / 1e6
		return fmt.Sprintf("%s of %s, %.1f s, %.0f MB/s", humanBytes(done), humanBytes(total), secs, rate)
	})
}

// progressCounter is progressLine for any count: describe says what follows
// the percentage, given the count so far, the total and the seconds since
// the start.
func progressCounter(w io.Writer, label string, describe func(done, total int64, secs float64) string) func(done, total int64) {
	start := time.Now()
	tty := isTerminal(w)
	gate := newProgressGate(time.Now)
	last := -1
	return func(done, total int64) {
		pct := int(100 * done / max(total, 1))
		if tty && pct == last || !tty && !gate.due(done, total) {
			return
		}
		last = pct
		line := fmt.Sprintf("%s: %3d%% %s", label, pct, describe(done, total, time.Since(start).Seconds()))
		if tty {
			end := ""
			if done >= total {
				end = "\n"
			}
			fmt.Fprintf(w, "\r%s\x1b[K%s", line, end)
		} else {
			fmt.Fprintln(w, line)
		}
	}
}

// isTerminal reports whether w is a character device, such as the terminal
// a person watches (progress bars are drawn only there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
