package server

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"orcd/engine"
	"orcd/engine/enginetest"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the JSON log lines written so far.
func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// The access log line of a failed request carries the error's code and
// message, as the client got them; successful health checks are debug.
func TestAccessLogCarriesErrors(t *testing.T) {
	var logs syncBuffer
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.APIKey = "k"
	})
	do := func(method, path, body string, auth bool) (int, string) {
		req, _ := http.NewRequest(method, ts.url+path, strings.NewReader(body))
		if auth {
			req.Header.Set("Authorization", "Bearer k")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	type want struct {
		status      int
		level, code string
	}
	cases := []struct {
		method, path, body string
		auth               bool
		want               want
	}{
		{"POST", "/execute", `{"job_id":"a","prompt":"hi","temperature":3}`, true, want{400, "INFO", "INVALID_REQUEST"}},
		{"POST", "/execute", `{}`, false, want{401, "INFO", "UNAUTHORIZED"}},
		{"POST", "/v1/completions", `{"model":"other","prompt":"hi"}`, true, want{404, "INFO", "not_found"}},
		{"GET", "/nope", ``, true, want{404, "INFO", ""}},
		{"GET", "/health", ``, false, want{200, "DEBUG", ""}},
	}
	var bodies []string
	for _, c := range cases {
		status, body := do(c.method, c.path, c.body, c.auth)
		if status != c.want.status {
			t.Fatalf("%s %s: status %d, want %d: %s", c.method, c.path, status, c.want.status, body)
		}
		bodies = append(bodies, body)
	}
	var access []map[string]any
	for _, l := range logs.lines(t) {
		if l["msg"] == "http request" {
			access = append(access, l)
		}
	}
	if len(access) != len(cases) {
		t.Fatalf("%d access log lines for %d requests", len(access), len(cases))
	}
	for i, c := range cases {
		l := access[i]
		if l["path"] != c.path || l["status"] != float64(c.want.status) || l["level"] != c.want.level {
			t.Errorf("%s %s: logged %v, want status %d at %s", c.method, c.path, l, c.want.status, c.want.level)
			continue
		}
		if c.want.status < 400 {
			if _, ok := l["error"]; ok {
				t.Errorf("%s: a success logged with an error: %v", c.path, l)
			}
			continue
		}
		// The logged message is the one the client got.
		var body struct {
			Error struct{ Message string } `json:"error"`
		}
		msg := strings.TrimSpace(bodies[i])
		if json.Unmarshal([]byte(bodies[i]), &body) == nil {
			msg = body.Error.Message
		}
		if l["error_code"] != c.want.code || l["error"] != msg || msg == "" {
			t.Errorf("%s %s: logged code %v, error %v; want %q, %q", c.method, c.path, l["error_code"], l["error"], c.want.code, msg)
		}
	}
}
