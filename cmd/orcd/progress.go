package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// progressLine shows a byte-count progress on w: one line redrawn in place
// on a terminal, else a line per tenth.
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
	last := -1
	return func(done, total int64) {
		pct := int(100 * done / max(total, 1))
		step := pct
		if !tty {
			step = pct / 10 * 10
		}
		if step == last {
			return
		}
		last = step
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
