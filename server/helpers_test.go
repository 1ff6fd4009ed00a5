package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// testServer is a Server on a loopback listener over the fake model.
type testServer struct {
	*Server
	url      string
	model    *enginetest.Model
	engine   *engine.Engine
	shutdown atomic.Int32
}

type fakeDevice struct{}

func (fakeDevice) Name() string         { return "cpu" }
func (fakeDevice) VRAMBytesUsed() int64 { return 12345 }
func (fakeDevice) Resident() bool       { return true }

// newTestServer starts a server; arch "gpt-oss" turns on harmony chat.
func newTestServer(t *testing.T, m *enginetest.Model, arch string, ecfg engine.Config, mod func(*Config)) *testServer {
	t.Helper()
	ecfg.Model = m
	if ecfg.Tokenizer == nil {
		ecfg.Tokenizer = enginetest.Tokenizer{}
	}
	e, err := engine.New(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{model: m, engine: e}
	cfg := Config{
		Engine: e, Tokenizer: enginetest.Tokenizer{}, Device: fakeDevice{},
		Model: ModelInfo{ID: "tiny", Arch: arch, QuantKind: "F32", TokenizerKind: "gguf-bpe",
			VocabSize: enginetest.VocabSize, ContextLength: e.CtxSize()},
		OnShutdown: func() { ts.shutdown.Add(1) },
		Now:        func() time.Time { return time.Date(2025, 6, 28, 0, 0, 0, 0, time.UTC) },
	}
	if arch == "gpt-oss" {
		cfg.Model.Chat = ChatHarmony
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = s
	hs := httptest.NewServer(s.Handler())
	ts.url = hs.URL
	t.Cleanup(func() {
		hs.Close()
		e.Drain(t.Context())
	})
	return ts
}

// post sends a JSON body and returns the response.
func (ts *testServer) post(t *testing.T, path string, body any) *http.Response {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		r = bytes.NewReader(j)
	}
	resp, err := http.Post(ts.url+path, "application/json", r)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	name string
	data string
}

func (e sseEvent) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(e.data), v); err != nil {
		t.Fatalf("event %s: data %q: %v", e.name, e.data, err)
	}
}

// sseReader parses an event stream strictly: every event is an optional
// `event:` line and exactly one `data:` line, then an empty line.
type sseReader struct {
	r *bufio.Reader
}

func newSSEReader(t *testing.T, resp *http.Response) *sseReader {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	return &sseReader{bufio.NewReader(resp.Body)}
}

// next returns the next event, or io.EOF at the end of the stream.
func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	line, err := s.r.ReadString('\n')
	if err != nil {
		if err == io.EOF && line == "" {
			return ev, io.EOF
		}
		return ev, fmt.Errorf("reading: %q: %v", line, err)
	}
	if name, ok := strings.CutPrefix(line, "event: "); ok {
		ev.name = strings.TrimSuffix(name, "\n")
		if line, err = s.r.ReadString('\n'); err != nil {
			return ev, fmt.Errorf("event %s without data: %v", ev.name, err)
		}
	}
	data, ok := strings.CutPrefix(line, "data: ")
	if !ok {
		return ev, fmt.Errorf("expected a data line, got %q", line)
	}
	ev.data = strings.TrimSuffix(data, "\n")
	if blank, err := s.r.ReadString('\n'); err != nil || blank != "\n" {
		return ev, fmt.Errorf("event not ended by an empty line: %q %v", blank, err)
	}
	return ev, nil
}

// all reads events to the end of the stream.
func (s *sseReader) all(t *testing.T) []sseEvent {
	t.Helper()
	var evs []sseEvent
	for {
		ev, err := s.next()
		if err == io.EOF {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

// execution is a finished /execute stream, checked for order: started
// first, tokens with consecutive i, optionally metrics, and exactly one
// terminal end or error, last.
type execution struct {
	started  startedEvent
	tokens   []tokenEvent
	text     string
	end      *endEvent
	err      *errorDetail
	metrics  *metricsEvent
	rawCount int
}

func checkExecution(t *testing.T, evs []sseEvent) execution {
	t.Helper()
	var x execution
	x.rawCount = len(evs)
	if len(evs) < 2 || evs[0].name != "started" {
		t.Fatalf("stream does not begin with started: %+v", evs)
	}
	evs[0].decode(t, &x.started)
	for i, ev := range evs[1:] {
		last := i == len(evs)-2
		if x.end != nil || x.err != nil {
			t.Fatalf("event %q after the terminal event", ev.name)
		}
		switch ev.name {
		case "token":
			if x.metrics != nil {
				t.Fatalf("token after metrics")
			}
			var tok tokenEvent
			ev.decode(t, &tok)
			if tok.I != len(x.tokens) {
				t.Errorf("token i=%d, want %d", tok.I, len(x.tokens))
			}
			x.tokens = append(x.tokens, tok)
			x.text += tok.T
		case "metrics":
			x.metrics = &metricsEvent{}
			ev.decode(t, x.metrics)
		case "end":
			x.end = &endEvent{}
			ev.decode(t, x.end)
		case "error":
			x.err = &errorDetail{}
			ev.decode(t, x.err)
		default:
			t.Fatalf("unknown event %q", ev.name)
		}
		if (x.end != nil || x.err != nil) != last {
			t.Fatalf("terminal event not last (event %d of %d: %s)", i+1, len(evs), ev.name)
		}
	}
	if x.end == nil && x.err == nil {
		t.Fatal("stream has no terminal event")
	}
	return x
}

func (ts *testServer) execute(t *testing.T, body map[string]any) execution {
	t.Helper()
	resp := ts.post(t, "/execute", body)
	defer resp.Body.Close()
	return checkExecution(t, newSSEReader(t, resp).all(t))
}

// wantError checks a worker API error response.
func wantError(t *testing.T, resp *http.Response, status int, code string) errorDetail {
	t.Helper()
	defer resp.Body.Close()
	var body errorBody
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d (%s)", resp.StatusCode, status, b)
	}
	if err := json.Unmarshal(b, &body); err != nil || body.Error.Code != code || body.Error.Message == "" {
		t.Fatalf("error body %s, want code %s and a message", b, code)
	}
	return body.Error
}
