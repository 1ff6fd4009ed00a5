package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"
)

// sseWriter writes server-sent events, flushing each one.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
	err error // the first write error; later writes are skipped
}

// startSSE sends the headers of an event stream. A stream may outlive the
// server's write timeout, so the per-response write deadline is lifted.
func startSSE(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s := &sseWriter{w: w, rc: http.NewResponseController(w)}
	s.rc.SetWriteDeadline(time.Time{})
	s.err = s.rc.Flush()
	return s
}

// event writes one event: an `event:` line when name is set, and v as
// one-line JSON in the `data:` line.
func (s *sseWriter) event(name string, v any) {
	s.buf.Reset()
	if name != "" {
		s.buf.WriteString("event: " + name + "\n")
	}
	s.buf.WriteString("data: ")
	enc := json.NewEncoder(&s.buf) // Encode ends the line; JSON escapes any newline inside
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	s.buf.WriteString("\n")
	s.write()
}

// done writes the OpenAI stream terminator.
func (s *sseWriter) done() {
	s.buf.Reset()
	s.buf.WriteString("data: [DONE]\n\n")
	s.write()
}

func (s *sseWriter) write() {
	if s.err != nil {
		return
	}
	if _, s.err = s.w.Write(s.buf.Bytes()); s.err == nil {
		s.err = s.rc.Flush()
	}
}
