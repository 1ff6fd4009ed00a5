package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"orcd/engine"
	"orcd/engine/enginetest"
	"orcd/harmony"
	"orcd/internal/testutil"
)

// send makes a request with a JSON content type and the given headers.
func (ts *testServer) send(t *testing.T, method, path, body string, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// wantOpenAIError checks an OpenAI-shaped error response.
func wantOpenAIError(t *testing.T, resp *http.Response, status int, typ, code string) openAIErrorDetail {
	t.Helper()
	var e openAIError
	decodeBody(t, resp, status, &e)
	if e.Error.Type != typ || e.Error.Code == nil || *e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("error %+v (code %v), want type %s, code %s and a message", e.Error, e.Error.Code, typ, code)
	}
	return e.Error
}

// dial opens a raw connection to the test server.
func (ts *testServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponse reads one response from c, failing after d.
func readResponse(t *testing.T, c net.Conn, d time.Duration) (*http.Response, []byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within %v: %v", d, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The server closes the connection after the answer.
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection still open after the answer (%v)", err)
	}
	return resp, body
}

func TestStrictJSON(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	chat := func(extra string) string {
		return `{"model":"tiny","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	cases := []struct {
		path, body, want string
	}{
		{"/execute", `{"JOB_ID":"x","prompt":"hi"}`, `JOB_ID: unknown field; keys are case-sensitive: did you mean "job_id"?`},
		{"/execute", `{"job_id":"x","Prompt":"hi"}`, `Prompt: unknown field; keys are case-sensitive`},
		{"/execute", `{"job_id":"a","prompt":"hi","prompt":"evil"}`, `prompt: duplicate key`},
		{"/execute", `{"job_id":"a","prompt":"hi","temperature":"hot"}`, `temperature: expected a number, got a string`},
		{"/execute", `{"job_id":"a","prompt":"hi","top_k":9223372036854775808}`, `top_k: 9223372036854775808 is out of range`},
		{"/execute", `{"job_id":"a","prompt":"hi","max_tokens":1e3}`, `max_tokens: expected an integer, got 1e3`},
		{"/execute", `{"job_id":"a","prompt":"hi","temperature":1e999}`, `temperature: 1e999 is out of range`},
		{"/execute", `{"job_id":"a","prompt":"hi","stop":["a",1]}`, `stop[1]: expected a string, got a number`},
		{"/execute", `{"job_id":"a","prompt":"hi","seed":-1}`, `seed: expected a non-negative integer, got -1`},
		{"/execute", `{"job_id":"a","prompt":"hi"`, `body: truncated JSON`},
		{"/execute", `[{"job_id":"a"}]`, `body: expected an object, got an array`},
		{"/cancel", `{"job_id":"a","job_id":"b"}`, `job_id: duplicate key`},
		{"/v1/chat/completions", chat(`,"stream":"yes"`), `stream: expected true or false, got a string`},
		{"/v1/chat/completions", chat(`,"stream_options":{"include_usage":1}`), `stream_options.include_usage: expected true or false, got a number`},
		{"/v1/chat/completions", chat(`,"Temperature":1`), `Temperature: unknown field; keys are case-sensitive: did you mean "temperature"?`},
		{"/v1/chat/completions", `{"messages":[{"role":"user","role":"system","content":"hi"}]}`, `messages[0].role: duplicate key`},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi","Name":"x"}]}`, `messages[0].Name: unknown field; keys are case-sensitive`},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"text","text":"a","text":"b"}]}]}`, `messages[0].content[0].text: duplicate key`},
		{"/v1/chat/completions", chat(`,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","type":"string"}}}]`), `tools[0].function.parameters.type: duplicate key`},
		{"/v1/chat/completions", chat(`,"tools":[{"type":"function","function":{"name":5}}]`), `tools[0].function.name: expected a string, got a number`},
		{"/v1/chat/completions", chat(`,"stop":7`), `stop: expected a string or an array of strings`},
		{"/v1/completions", `{"prompt":"a","max_tokens":"5"}`, `max_tokens: expected an integer, got a string`},
		{"/v1/completions", `{"prompt":"a","seed":1.5}`, `seed: expected an integer, got 1.5`},
	}
	for _, c := range cases {
		resp := ts.post(t, c.path, c.body)
		var msg string
		if isOpenAIPath(c.path) {
			msg = wantOpenAIError(t, resp, http.StatusBadRequest, "invalid_request_error", "invalid_request").Message
		} else {
			msg = wantError(t, resp, http.StatusBadRequest, "INVALID_REQUEST").Message
		}
		if !strings.HasPrefix(msg, c.want) {
			t.Errorf("%s %s:\nmessage %q\nwant     %q", c.path, c.body, msg, c.want)
		}
		if strings.Contains(msg, "Fields") || strings.Contains(msg, "json:") {
			t.Errorf("%s %s: message %q shows Go names", c.path, c.body, msg)
		}
	}
}

func TestTopKBoundedByVocabulary(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	x := ts.execute(t, map[string]any{"job_id": "k", "prompt": "hi", "max_tokens": 3, "top_k": enginetest.VocabSize})
	if x.end == nil {
		t.Errorf("top_k = vocabulary size: %+v", x.err)
	}
	for _, k := range []int64{int64(enginetest.VocabSize) + 1, math.MaxInt64 - 126, math.MaxInt64} {
		e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "k", "prompt": "hi", "top_k": k}), http.StatusBadRequest, "INVALID_REQUEST")
		if !strings.HasPrefix(e.Message, "top_k: ") {
			t.Errorf("top_k %d: %q", k, e.Message)
		}
		wantOpenAIError(t, ts.post(t, "/v1/completions", map[string]any{"prompt": "hi", "top_k": k}), http.StatusBadRequest, "invalid_request_error", "invalid_request")
	}
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	wantError(t, ts.send(t, "GET", "/nope", "", nil), http.StatusNotFound, "NOT_FOUND")
	wantError(t, ts.send(t, "POST", "/execute/", "{}", nil), http.StatusNotFound, "NOT_FOUND")
	wantOpenAIError(t, ts.send(t, "GET", "/v1/nope", "", nil), http.StatusNotFound, "invalid_request_error", "not_found")
	resp := ts.send(t, "GET", "/execute", "", nil)
	if allow := resp.Header.Get("Allow"); allow != "POST" {
		t.Errorf("Allow %q", allow)
	}
	wantError(t, resp, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	wantOpenAIError(t, ts.send(t, "DELETE", "/v1/chat/completions", "", nil), http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed")
	wantError(t, ts.send(t, "POST", "/health", "{}", nil), http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED")
	resp = ts.send(t, "HEAD", "/health", "", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /health: %d", resp.StatusCode)
	}
}

func TestContentTypeRequired(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2", engine.Config{}, nil)
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"} {
		wantError(t, ts.send(t, "POST", "/execute", `{"job_id":"a","prompt":"hi"}`, map[string]string{"Content-Type": ct}),
			http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")
		wantError(t, ts.send(t, "POST", "/shutdown", "", map[string]string{"Content-Type": ct}), http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE")
		wantOpenAIError(t, ts.send(t, "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`,
			map[string]string{"Content-Type": ct}), http.StatusUnsupportedMediaType, "invalid_request_error", "unsupported_media_type")
	}
	resp := ts.send(t, "POST", "/execute", `{"job_id":"a","prompt":"hi"}`, map[string]string{"Content-Type": "Application/JSON; charset=utf-8"})
	checkExecution(t, newSSEReader(t, resp).all(t))
	resp.Body.Close()
	if n := ts.shutdown.Load(); n != 0 {
		t.Errorf("shutdown ran %d times", n)
	}
}

func TestOrigins(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2", engine.Config{}, nil)
	evil := map[string]string{"Origin": "http://evil.example"}
	wantError(t, ts.send(t, "POST", "/shutdown", "", evil), http.StatusForbidden, "FORBIDDEN")
	wantError(t, ts.send(t, "POST", "/execute", `{"job_id":"a","prompt":"hi"}`, evil), http.StatusForbidden, "FORBIDDEN")
	wantOpenAIError(t, ts.send(t, "GET", "/v1/models", "", map[string]string{"Origin": "null"}), http.StatusForbidden, "permission_error", "forbidden")
	if n := ts.shutdown.Load(); n != 0 {
		t.Errorf("shutdown ran %d times", n)
	}

	ts = newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2", engine.Config{},
		func(c *Config) { c.AllowedOrigins = []string{"http://app.example"} })
	app := map[string]string{"Origin": "http://app.example"}
	resp := ts.send(t, "OPTIONS", "/v1/chat/completions", "", map[string]string{"Origin": "http://app.example",
		"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"})
	resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "http://app.example" ||
		!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Content-Type") || !strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight: %d %v", resp.StatusCode, h)
	}
	var c chatResponse
	resp = ts.send(t, "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, app)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://app.example" {
		t.Errorf("Access-Control-Allow-Origin %q", got)
	}
	decodeBody(t, resp, http.StatusOK, &c)
	wantError(t, ts.send(t, "POST", "/shutdown", "", evil), http.StatusForbidden, "FORBIDDEN")
}

func TestBearerScheme(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.APIKey = "sekret" })
	for _, h := range []string{"Bearer sekret", "bearer sekret", "BEARER  sekret"} {
		resp := ts.send(t, "GET", "/v1/models", "", map[string]string{"Authorization": h})
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%q: %d", h, resp.StatusCode)
		}
	}
	for _, h := range []string{"", "Basic sekret", "Bearersekret", "Bearer wrong", "Bearer sekret2", "sekret"} {
		wantError(t, ts.send(t, "GET", "/metrics", "", map[string]string{"Authorization": h}), http.StatusUnauthorized, "UNAUTHORIZED")
	}
	resp := ts.send(t, "GET", "/metrics", "", map[string]string{"Authorization": "Bearer sekret"})
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `orcd_refused_requests_total{code="UNAUTHORIZED"} 6`; !strings.Contains(string(b), want) {
		t.Errorf("metrics lack %s", want)
	}
}

func TestShutdownOnlyFromLoopbackWithoutKey(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	shutdown := func(s *Server, peer, auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/shutdown", nil)
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.RemoteAddr = peer
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		return rec
	}
	for _, peer := range []string{"192.0.2.1:5555", "[2001:db8::1]:80", "10.0.0.1:1"} {
		if rec := shutdown(ts.Server, peer, ""); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "FORBIDDEN") {
			t.Errorf("shutdown from %s: %d %s", peer, rec.Code, rec.Body)
		}
	}
	if ts.Draining() || ts.shutdown.Load() != 0 {
		t.Fatal("a refused shutdown started draining")
	}
	if rec := shutdown(ts.Server, "[::1]:4000", ""); rec.Code != http.StatusAccepted {
		t.Errorf("shutdown from ::1: %d %s", rec.Code, rec.Body)
	}

	keyed := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.APIKey = "k" })
	if rec := shutdown(keyed.Server, "192.0.2.1:5555", "Bearer k"); rec.Code != http.StatusAccepted {
		t.Errorf("keyed shutdown from a remote peer: %d %s", rec.Code, rec.Body)
	}
}

// TestAuthBeforeBody: with a key set, a client that sends headers, one byte
// of a large body and then stalls gets its 401 at once, and the
// connection is closed instead of waiting for the rest of the body.
func TestAuthBeforeBody(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.APIKey = "sekret"; c.BodyReadTimeout = time.Hour })
	for _, hdr := range []string{"", "Authorization: Bearer wrong\r\n"} {
		c := ts.dial(t)
		fmt.Fprintf(c, "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: 100000\r\n\r\n{", hdr)
		resp, body := readResponse(t, c, 5*time.Second)
		if resp.StatusCode != http.StatusUnauthorized || !bytes.Contains(body, []byte("UNAUTHORIZED")) {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
	}
	// The same for other refusals before the body: content type, size.
	c := ts.dial(t)
	fmt.Fprintf(c, "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n{")
	if resp, _ := readResponse(t, c, 5*time.Second); resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d", resp.StatusCode)
	}
	c = ts.dial(t)
	fmt.Fprintf(c, "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{")
	if resp, _ := readResponse(t, c, 5*time.Second); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized: %d", resp.StatusCode)
	}
}

// TestBodyReadTimeout: a body that stops arriving gets 408 at the read
// deadline, on the worker and the OpenAI paths, and on a GET with a body.
func TestBodyReadTimeout(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.BodyReadTimeout = 200 * time.Millisecond })
	for _, path := range []string{"/execute", "/v1/chat/completions", "/cancel"} {
		c := ts.dial(t)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"job", path)
		resp, body := readResponse(t, c, 10*time.Second)
		if resp.StatusCode != http.StatusRequestTimeout || !bytes.Contains(body, []byte("body: not received within the read timeout")) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	c := ts.dial(t)
	fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET with a stalled body: %v %v", resp, err)
	}
}

// The body's read deadline must not outlive the body: a stream that runs
// far past it ends normally.
func TestStreamOutlivesBodyDeadline(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Delay: 2 * time.Millisecond}, "gpt2", engine.Config{},
		func(c *Config) { c.BodyReadTimeout = 20 * time.Millisecond })
	start := time.Now()
	x := ts.execute(t, map[string]any{"job_id": "long", "prompt": "x", "max_tokens": 100})
	if x.end == nil || x.end.TokensOut != 100 {
		t.Errorf("end %+v, error %+v", x.end, x.err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("the stream took %v, not past the 20 ms deadline: the test proves nothing", d)
	}
}

func TestConnLimiter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := LimitConnections(ln, 3, 2)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	// dial connects from ip (any 127/8 address is loopback on Linux) and
	// returns the server's side, or nil when the server closed the connection.
	dial := func(ip string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		closed := make(chan bool, 1)
		go func() {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			closed <- err != nil && !(errors.As(err, &ne) && ne.Timeout())
		}()
		select {
		case sc := <-accepted:
			return sc
		case ok := <-closed:
			if !ok {
				t.Fatalf("a connection from %s was neither accepted nor closed", ip)
			}
		}
		return nil
	}
	a, b := dial("127.0.0.1"), dial("127.0.0.1")
	if a == nil || b == nil {
		t.Fatal("the first two connections were refused")
	}
	if dial("127.0.0.1") != nil {
		t.Error("a third connection from one address was accepted (per-IP limit 2)")
	}
	if dial("127.0.0.2") == nil {
		t.Error("a connection from another address was refused")
	}
	if dial("127.0.0.3") != nil {
		t.Error("a fourth connection was accepted (limit 3)")
	}
	if l.Open() != 3 {
		t.Errorf("Open() = %d, want 3", l.Open())
	}
	a.Close()
	a.Close() // a second Close must not free a second slot
	if dial("127.0.0.3") == nil {
		t.Error("a connection was refused after one closed")
	}
	if dial("127.0.0.4") != nil {
		t.Error("a double Close freed two slots")
	}
	if total, perIP := l.Refused(); total != 2 || perIP != 1 {
		t.Errorf("Refused() = %d, %d; want 2, 1", total, perIP)
	}
}

func metricsText(t *testing.T, ts *testServer) string {
	t.Helper()
	resp := ts.send(t, "GET", "/metrics", "", nil)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b)
}

// TestPanicRecovery: a panic before the response, or in the middle of an
// event stream, ends the request with an INTERNAL error in the path's
// shape; the stack is logged once per panic and the panics counted.
func TestPanicRecovery(t *testing.T) {
	var logs testutil.SyncBuffer
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	boom := func(w http.ResponseWriter, r *http.Request) { panic("boom") }
	ts.handle("POST /panic", boom)
	ts.handle("POST /v1/panic", boom)
	ts.handle("POST /panic-stream", func(w http.ResponseWriter, r *http.Request) {
		startSSE(w).event("started", startedEvent{JobID: "p"})
		panic("boom")
	})
	ts.handle("POST /v1/panic-stream", func(w http.ResponseWriter, r *http.Request) {
		startSSE(w).event("", completionResponse{ID: "p"})
		panic(errors.New("boom"))
	})

	e := wantError(t, ts.post(t, "/panic", "{}"), http.StatusInternalServerError, "INTERNAL")
	if e.Retriable || !strings.Contains(e.Message, "correlation id") {
		t.Errorf("error %+v", e)
	}
	wantOpenAIError(t, ts.post(t, "/v1/panic", "{}"), http.StatusInternalServerError, "server_error", "internal")

	evs := newSSEReader(t, ts.post(t, "/panic-stream", "{}")).all(t)
	if x := checkExecution(t, evs); x.err == nil || x.err.Code != "INTERNAL" {
		t.Errorf("stream after a panic: %+v", evs)
	}
	chunks := openAIStream[json.RawMessage](t, ts.post(t, "/v1/panic-stream", "{}"))
	var last openAIError
	if len(chunks) != 2 || json.Unmarshal(chunks[1], &last) != nil || last.Error.Type != "server_error" {
		t.Errorf("OpenAI stream after a panic: %s", chunks)
	}

	if n := strings.Count(logs.String(), `"msg":"handler panicked"`); n != 4 {
		t.Errorf("%d panic log lines, want 4:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "runtime/debug.Stack"); n != 4 {
		t.Errorf("%d stacks logged, want 4", n)
	}
	if m := metricsText(t, ts); !strings.Contains(m, "orcd_panics_total 4") {
		t.Errorf("metrics lack orcd_panics_total 4")
	}
	// The server still serves.
	resp := ts.send(t, "GET", "/health", "", nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/health after panics: %d", resp.StatusCode)
	}
}

// TestModelPanicEndsStreams: a panic inside a running job (here the model's
// forward pass, on the handler's goroutine) ends /execute with an error
// event and /v1 streams with an error chunk and [DONE]; the job's slot and
// cache are given back and the next request runs.
func TestModelPanicEndsStreams(t *testing.T) {
	m := &enginetest.Model{Next: enginetest.TextScript("abcdefghijklmnopqrstuvwxyz")}
	var panicAt atomic.Int64
	m.Fail = func(call int64) error {
		if call == panicAt.Load() {
			panic("injected model panic")
		}
		return nil
	}
	ts := newTestServer(t, m, "gpt2", engine.Config{MaxActive: 1}, nil)
	arm := func() { panicAt.Store(m.Calls() + 4) } // prefill, then the third decode step

	arm()
	x := ts.execute(t, map[string]any{"job_id": "p", "prompt": "x", "max_tokens": 20})
	if x.err == nil || x.err.Code != "INTERNAL" || len(x.tokens) == 0 {
		t.Errorf("execute: tokens %d, end %+v, error %+v; want tokens then INTERNAL", len(x.tokens), x.end, x.err)
	}

	arm()
	chunks := openAIStream[json.RawMessage](t, ts.post(t, "/v1/chat/completions",
		map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "stream": true, "max_tokens": 20}))
	var last openAIError
	if len(chunks) < 3 || json.Unmarshal(chunks[len(chunks)-1], &last) != nil || last.Error.Code == nil || *last.Error.Code != "internal" {
		t.Errorf("chat stream: %s", chunks)
	}

	arm()
	wantOpenAIError(t, ts.post(t, "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 20}), http.StatusInternalServerError, "server_error", "internal")

	if ts.engine.Active() != 0 {
		t.Errorf("%d slots still held", ts.engine.Active())
	}
	x = ts.execute(t, map[string]any{"job_id": "after", "prompt": "x", "max_tokens": 3})
	if x.end == nil || x.text != "abc" {
		t.Errorf("after the panics: %q %+v", x.text, x.err)
	}
	metrics := metricsText(t, ts)
	for _, want := range []string{
		`orcd_requests_total{endpoint="execute",outcome="INTERNAL"} 1`,
		`orcd_requests_total{endpoint="chat",outcome="INTERNAL"} 1`,
		`orcd_requests_total{endpoint="completions",outcome="INTERNAL"} 1`,
		"orcd_panics_total 3",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// countingTokenizer is the fake tokenizer with MaxTokenBytes (1: one token
// per byte), counting Encode calls and how many run at once; when gate is
// set, Encode waits on it.
type countingTokenizer struct {
	enginetest.Tokenizer
	calls, running, maxRunning atomic.Int32
	gate                       chan struct{}
}

func (c *countingTokenizer) MaxTokenBytes() int { return 1 }

func (c *countingTokenizer) Encode(text string) []int32 {
	c.calls.Add(1)
	n := c.running.Add(1)
	defer c.running.Add(-1)
	for {
		m := c.maxRunning.Load()
		if n <= m || c.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	if c.gate != nil {
		<-c.gate
	}
	return c.Tokenizer.Encode(text)
}

// TestPromptRefusedBySizeBeforeTokenizing: a prompt with more bytes than
// the context can hold tokens of the longest token is refused without
// being tokenized, on every endpoint.
func TestPromptRefusedBySizeBeforeTokenizing(t *testing.T) {
	for _, arch := range []string{"gpt2", "gpt-oss"} {
		tok := &countingTokenizer{}
		ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, arch, engine.Config{Tokenizer: tok},
			func(c *Config) { c.Tokenizer = tok })
		ctx := ts.engine.CtxSize() // 512 tokens of at most 1 byte
		big := strings.Repeat("x", ctx+1)
		e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "big", "prompt": big}), http.StatusBadRequest, "INVALID_REQUEST")
		if want := fmt.Sprintf("prompt: %d bytes of text cannot fit the context of %d tokens", ctx+1, ctx); !strings.HasPrefix(e.Message, want) {
			t.Errorf("%q, want %q", e.Message, want)
		}
		wantOpenAIError(t, ts.post(t, "/v1/completions", map[string]any{"prompt": big}), http.StatusBadRequest, "invalid_request_error", "invalid_request")
		oe := wantOpenAIError(t, ts.post(t, "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": big}}}),
			http.StatusBadRequest, "invalid_request_error", "invalid_request")
		if !strings.HasPrefix(oe.Message, "messages: ") {
			t.Errorf("chat: %q", oe.Message)
		}
		if n := tok.calls.Load(); n != 0 {
			t.Errorf("%s: %d prompts tokenized, want 0", arch, n)
		}
		// At the bound the prompt is tokenized (and fits).
		x := ts.execute(t, map[string]any{"job_id": "fits", "prompt": big[:ctx-1], "max_tokens": 1})
		if x.end == nil || tok.calls.Load() != 1 {
			t.Errorf("%s: a prompt of %d bytes: %+v, %d tokenizations", arch, ctx-1, x.err, tok.calls.Load())
		}
	}
}

// TestAdmissionConcurrency: no more requests are admitted (decoded and
// tokenized) at once than the limit; a request that cannot get a slot
// within its admission time gets a retriable QUEUE_FULL; /cancel needs no
// slot.
func TestAdmissionConcurrency(t *testing.T) {
	tok := &countingTokenizer{gate: make(chan struct{})}
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2",
		engine.Config{Tokenizer: tok, MaxActive: 8, MaxQueue: 8}, func(c *Config) {
			c.Tokenizer, c.AdmissionConcurrency, c.AdmissionTimeout = tok, 2, time.Hour
		})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			resp := ts.post(t, "/execute", map[string]any{"job_id": fmt.Sprint(i), "prompt": "hi", "max_tokens": 2})
			if x := checkExecution(t, newSSEReader(t, resp).all(t)); x.end == nil {
				t.Errorf("request %d: %+v", i, x.err)
			}
			resp.Body.Close()
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for tok.running.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // time for a third, wrongly admitted, to arrive
	if n := tok.running.Load(); n != 2 {
		t.Errorf("%d prompts tokenizing at once, want 2", n)
	}
	resp := ts.post(t, "/cancel", map[string]string{"job_id": "nothing"})
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("cancel while the admission slots are taken: %d", resp.StatusCode)
	}
	wantError(t, ts.post(t, "/cancel", map[string]string{"job_id": strings.Repeat("x", 5000)}), http.StatusRequestEntityTooLarge, "INVALID_REQUEST")
	for range 6 {
		tok.gate <- struct{}{}
	}
	wg.Wait()
	if n := tok.maxRunning.Load(); n != 2 {
		t.Errorf("at most %d prompts tokenized at once, want 2", n)
	}

	tok = &countingTokenizer{gate: make(chan struct{})}
	ts = newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2",
		engine.Config{Tokenizer: tok, MaxActive: 2}, func(c *Config) {
			c.Tokenizer, c.AdmissionConcurrency, c.AdmissionTimeout = tok, 1, 100*time.Millisecond
		})
	first := make(chan *http.Response)
	go func() {
		first <- ts.post(t, "/execute", map[string]any{"job_id": "first", "prompt": "hi", "max_tokens": 2})
	}()
	for tok.running.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	wantOpenAIError(t, ts.post(t, "/v1/completions", map[string]any{"prompt": "hi"}), http.StatusServiceUnavailable, "server_error", "queue_full")
	e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "second", "prompt": "hi"}), http.StatusServiceUnavailable, "QUEUE_FULL")
	if !e.Retriable || !strings.Contains(e.Message, "busy admitting") {
		t.Errorf("admission timeout: %+v", e)
	}
	tok.gate <- struct{}{}
	resp = <-first
	if x := checkExecution(t, newSSEReader(t, resp).all(t)); x.end == nil {
		t.Errorf("first request: %+v", x.err)
	}
	resp.Body.Close()
}

// TestHarmonyNamesFromRequests: every request field whose value becomes a
// name in the harmony prompt's structure is refused when it carries a
// special token, with the field's API path in the message.
func TestHarmonyNamesFromRequests(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Ctx: 4096}, "gpt-oss", engine.Config{}, nil)
	user := map[string]any{"role": "user", "content": "hi"}
	fields := []struct {
		path string
		body func(v string) map[string]any
	}{
		{"tools[0].function.name", func(v string) map[string]any {
			return map[string]any{"messages": []any{user}, "tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": v}}}}
		}},
		{"messages[1].tool_calls[0].function.name", func(v string) map[string]any {
			return map[string]any{"messages": []any{user, map[string]any{"role": "assistant", "tool_calls": []any{
				map[string]any{"id": "c1", "type": "function", "function": map[string]any{"name": v, "arguments": "{}"}}}}}}
		}},
		{"messages[1].name", func(v string) map[string]any {
			return map[string]any{"messages": []any{user, map[string]any{"role": "tool", "name": v, "tool_call_id": "none", "content": "1"}}}
		}},
	}
	for _, f := range fields {
		for _, sp := range harmony.SpecialTokens {
			for _, v := range []string{sp, "get" + sp + "final", "get" + sp} {
				for _, path := range []string{"/v1/chat/completions"} {
					e := wantOpenAIError(t, ts.post(t, path, f.body(v)), http.StatusBadRequest, "invalid_request_error", "invalid_request")
					if !strings.HasPrefix(e.Message, f.path+": ") || !strings.Contains(e.Message, "control token "+sp) {
						t.Errorf("%s = %q: message %q", f.path, v, e.Message)
					}
				}
			}
		}
		// A valid name passes (the fake model's output is not harmony; the
		// request only has to be accepted).
		var c chatResponse
		decodeBody(t, ts.post(t, "/v1/chat/completions", f.body("get_weather")), http.StatusOK, &c)
	}
}

func TestMetricsHaveProcessAndGoCollectors(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	m := metricsText(t, ts)
	for _, want := range []string{"process_open_fds ", "process_resident_memory_bytes ", "process_max_fds ",
		"go_goroutines ", "go_memstats_heap_inuse_bytes ", "orcd_panics_total 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestPromptRefusedByTokenCount: a prompt within the size bound that
// tokenizes to more tokens than the context holds (here by one, the
// prefix) is refused naming the request's field.
func TestPromptRefusedByTokenCount(t *testing.T) {
	tok := &countingTokenizer{}
	bos := enginetest.MustID("<|endoftext|>")
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{Tokenizer: tok, PromptPrefix: []int32{bos}},
		func(c *Config) { c.Tokenizer = tok })
	ctx := ts.engine.CtxSize()
	e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "j", "prompt": strings.Repeat("x", ctx)}), http.StatusBadRequest, "INVALID_REQUEST")
	if want := fmt.Sprintf("prompt: %d tokens do not fit the context of %d", ctx+1, ctx); e.Message != want {
		t.Errorf("%q, want %q", e.Message, want)
	}
	content := strings.Repeat("x", ctx-len(plainChatPrompt(harmony.Conversation{Messages: []harmony.Message{{Role: "user"}}})))
	oe := wantOpenAIError(t, ts.post(t, "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": content}}}),
		http.StatusBadRequest, "invalid_request_error", "invalid_request")
	if want := fmt.Sprintf("messages: %d tokens do not fit the context of %d", ctx+1, ctx); oe.Message != want {
		t.Errorf("%q, want %q", oe.Message, want)
	}
}

// TestRequestTypesCheckable walks every request type as decodeStrict does:
// each field must be of a kind the checker has a rule for, so that no
// body can reach its "no JSON rule" error.
func TestRequestTypesCheckable(t *testing.T) {
	var walk func(path string, typ reflect.Type)
	walk = func(path string, typ reflect.Type) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if reflect.PointerTo(typ).Implements(unmarshalerType) {
			return
		}
		switch typ.Kind() {
		case reflect.Struct:
			for key, ft := range fieldsOf(typ) {
				walk(path+"."+key, ft)
			}
		case reflect.Map, reflect.Slice, reflect.Array:
			walk(path+"[]", typ.Elem())
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int64, reflect.Uint64, reflect.Float64, reflect.Interface:
		default:
			t.Errorf("%s: %s has no rule", path, typ)
		}
	}
	for _, v := range []any{executeRequest{}, cancelRequest{}, completionRequest{}, chatRequest{}} {
		walk(reflect.TypeOf(v).Name(), reflect.TypeOf(v))
	}
	// And the walk sees what encoding/json sees: the promoted fields of the
	// embedded structs.
	if got := fieldsOf(reflect.TypeFor[chatRequest]()); got["temperature"] == nil || got["model"] == nil || got["messages"] == nil {
		t.Errorf("chatRequest keys %v", got)
	}
}
