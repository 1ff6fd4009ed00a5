package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// A load whose progress goes to something other than a terminal is logged
// once per tenth, and no bar is drawn.
func TestLoadProgressLogsWhenNotATerminal(t *testing.T) {
	var logs, bar bytes.Buffer
	progress := loadProgress("m.gguf", slog.New(slog.NewTextHandler(&logs, nil)), &bar)
	for done := int64(0); done <= 1000; done += 5 {
		progress(done, 1000)
	}
	if bar.Len() != 0 {
		t.Errorf("drew a bar on a non-terminal: %q", bar.String())
	}
	if n := strings.Count(logs.String(), `msg="loading weights"`); n != 11 {
		t.Errorf("got %d progress log lines, want 11 (0%%..100%%):\n%s", n, logs.String())
	}
	if isTerminal(&bar) {
		t.Error("a bytes.Buffer counts as a terminal")
	}
}
