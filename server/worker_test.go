package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"orcd/backend"
	"orcd/engine"
	"orcd/engine/enginetest"
)

func TestExecuteStream(t *testing.T) {
	const want = "héllo wörld 日本語 🎉 done"
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript(want)}, "gpt2", engine.Config{}, nil)
	x := ts.execute(t, map[string]any{"job_id": "j1", "prompt": "Say:", "max_tokens": 100, "seed": 3})
	if x.started.JobID != "j1" || x.started.Model != "tiny" || x.started.Seed != 3 || x.started.PromptTokens != 4 {
		t.Errorf("started %+v", x.started)
	}
	if _, err := time.Parse(time.RFC3339Nano, x.started.StartedAt); err != nil {
		t.Errorf("started_at: %v", err)
	}
	if x.text != want {
		t.Errorf("text %q, want %q", x.text, want)
	}
	for _, tok := range x.tokens {
		if !utf8.ValidString(tok.T) || tok.T == "" {
			t.Errorf("token %d: %q is empty or not valid UTF-8", tok.I, tok.T)
		}
	}
	if x.end == nil || x.end.StopReason != "eog" || x.end.TokensOut != len(want) {
		t.Errorf("end %+v, err %+v", x.end, x.err)
	}
	if x.metrics == nil || x.metrics.TokensOut != len(want) {
		t.Errorf("metrics %+v", x.metrics)
	}
}

func TestExecuteStopReasons(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("alpha beta gamma delta")}, "gpt2", engine.Config{}, nil)
	x := ts.execute(t, map[string]any{"job_id": "a", "prompt": "x", "max_tokens": 5})
	if x.text != "alpha" || x.end.StopReason != "max_tokens" {
		t.Errorf("max_tokens: %q %+v", x.text, x.end)
	}
	x = ts.execute(t, map[string]any{"job_id": "b", "prompt": "x", "stop": []string{" gam"}})
	if x.text != "alpha beta" || x.end.StopReason != "stop" {
		t.Errorf("stop: %q %+v", x.text, x.end)
	}
}

func TestExecuteValidation(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	ok := `"job_id":"v","prompt":"hi"`
	cases := []struct{ name, body, field string }{
		{"malformed JSON", `{"job_id":"v",`, "body"},
		{"not an object", `[1,2]`, "body"},
		{"empty body", ``, "body"},
		{"trailing data", `{` + ok + `} {}`, "body"},
		{"unknown field", `{` + ok + `,"temprature":1}`, "temprature"},
		{"missing job_id", `{"prompt":"hi"}`, "job_id"},
		{"missing prompt", `{"job_id":"v"}`, "prompt"},
		{"empty prompt", `{"job_id":"v","prompt":""}`, "prompt"},
		{"prompt wrong type", `{"job_id":"v","prompt":5}`, "prompt"},
		{"max_tokens 0", `{` + ok + `,"max_tokens":0}`, "max_tokens"},
		{"max_tokens 2049", `{` + ok + `,"max_tokens":2049}`, "max_tokens"},
		{"max_tokens fraction", `{` + ok + `,"max_tokens":1.5}`, "max_tokens"},
		{"temperature -0.1", `{` + ok + `,"temperature":-0.1}`, "temperature"},
		{"temperature 2.01", `{` + ok + `,"temperature":2.01}`, "temperature"},
		{"top_p -0.1", `{` + ok + `,"top_p":-0.1}`, "top_p"},
		{"top_p 1.1", `{` + ok + `,"top_p":1.1}`, "top_p"},
		{"top_k -1", `{` + ok + `,"top_k":-1}`, "top_k"},
		{"min_p -0.5", `{` + ok + `,"min_p":-0.5}`, "min_p"},
		{"min_p 1.5", `{` + ok + `,"min_p":1.5}`, "min_p"},
		{"repetition_penalty 0", `{` + ok + `,"repetition_penalty":0}`, "repetition_penalty"},
		{"repetition_penalty 2.5", `{` + ok + `,"repetition_penalty":2.5}`, "repetition_penalty"},
		{"5 stop strings", `{` + ok + `,"stop":["a","b","c","d","e"]}`, "stop"},
		{"empty stop string", `{` + ok + `,"stop":[""]}`, "stop[0]"},
		{"stop not a list", `{` + ok + `,"stop":"x"}`, "stop"},
		{"negative seed", `{` + ok + `,"seed":-1}`, "seed"},
		{"seed string", `{` + ok + `,"seed":"7"}`, "seed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := wantError(t, ts.post(t, "/execute", c.body), http.StatusBadRequest, "INVALID_REQUEST")
			if !strings.Contains(e.Message, c.field) {
				t.Errorf("message %q does not name %q", e.Message, c.field)
			}
		})
	}
}

func TestExecuteOversizedBody(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, func(c *Config) { c.MaxBodyBytes = 1024 })
	body, _ := json.Marshal(map[string]any{"job_id": "big", "prompt": strings.Repeat("x", 2000)})
	wantError(t, ts.post(t, "/execute", body), http.StatusRequestEntityTooLarge, "INVALID_REQUEST")
}

// TestExecuteCancelMidStream checks that a cancel stops decoding within one
// step: after /cancel answers, at most the model call already running
// finishes (a 2 ms step here, so well within 100 ms). Counting calls rather
// than timing keeps the test steady on a loaded machine.
func TestExecuteCancelMidStream(t *testing.T) {
	m := &enginetest.Model{Delay: 2 * time.Millisecond}
	ts := newTestServer(t, m, "gpt2", engine.Config{MaxActive: 2}, nil)
	resp := ts.post(t, "/execute", map[string]any{"job_id": "c1", "prompt": "x", "max_tokens": 2048})
	defer resp.Body.Close()
	sr := newSSEReader(t, resp)
	var evs []sseEvent
	var cancelledAt time.Time
	var callsAtCancel int64
	for {
		ev, err := sr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
		if len(evs) == 5 {
			cancelledAt = time.Now()
			for range 2 { // idempotent
				r := ts.post(t, "/cancel", map[string]string{"job_id": "c1"})
				if r.StatusCode != http.StatusAccepted {
					t.Errorf("cancel: status %d", r.StatusCode)
				}
				r.Body.Close()
				if callsAtCancel == 0 {
					callsAtCancel = m.Calls()
				}
			}
		}
	}
	if extra := m.Calls() - callsAtCancel; extra > 1 {
		t.Errorf("%d model calls after the cancel was answered, want at most the one running", extra)
	}
	if d := time.Since(cancelledAt); d > time.Second {
		t.Errorf("stream ended %v after cancel", d)
	}
	x := checkExecution(t, evs)
	if x.err == nil || x.err.Code != "CANCELLED" {
		t.Errorf("terminal %+v %+v, want error CANCELLED", x.end, x.err)
	}
	r := ts.post(t, "/cancel", map[string]string{"job_id": "never-existed"})
	if r.StatusCode != http.StatusAccepted {
		t.Errorf("cancel of unknown job: %d", r.StatusCode)
	}
	r.Body.Close()
	wantError(t, ts.post(t, "/cancel", `{}`), http.StatusBadRequest, "INVALID_REQUEST")
}

func TestExecuteClientDisconnect(t *testing.T) {
	m := &enginetest.Model{Delay: 2 * time.Millisecond}
	ts := newTestServer(t, m, "gpt2", engine.Config{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.url+"/execute", strings.NewReader(`{"job_id":"d","prompt":"x","max_tokens":2048}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sr := newSSEReader(t, resp)
	for range 4 {
		if _, err := sr.next(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(2 * time.Second)
	for ts.engine.Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("job still running 2 s after the client went away")
		}
		time.Sleep(5 * time.Millisecond)
	}
	calls := m.Calls()
	time.Sleep(20 * time.Millisecond)
	if m.Calls() != calls {
		t.Error("model still called after the job ended")
	}
}

func TestExecuteTimeout(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Delay: 2 * time.Millisecond}, "gpt2", engine.Config{Timeout: 60 * time.Millisecond}, nil)
	x := ts.execute(t, map[string]any{"job_id": "t", "prompt": "x", "max_tokens": 2048})
	if x.err == nil || x.err.Code != "INFERENCE_TIMEOUT" {
		t.Errorf("terminal %+v %+v, want INFERENCE_TIMEOUT", x.end, x.err)
	}
}

func TestExecuteQueueFull(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Delay: 2 * time.Millisecond}, "gpt2", engine.Config{MaxActive: 1, MaxQueue: 0}, nil)
	resp := ts.post(t, "/execute", map[string]any{"job_id": "long", "prompt": "x", "max_tokens": 2048})
	defer resp.Body.Close()
	sr := newSSEReader(t, resp)
	if _, err := sr.next(); err != nil {
		t.Fatal(err)
	}
	e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "second", "prompt": "x"}), http.StatusServiceUnavailable, "QUEUE_FULL")
	if !e.Retriable {
		t.Error("QUEUE_FULL not retriable")
	}
	wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "long", "prompt": "x"}), http.StatusBadRequest, "INVALID_REQUEST")
	ts.engine.Cancel("long")
}

func TestExecute32Concurrent(t *testing.T) {
	m := &enginetest.Model{}
	ts := newTestServer(t, m, "gpt2", engine.Config{MaxActive: 4, MaxQueue: 32}, nil)
	want := ts.execute(t, map[string]any{"job_id": "ref", "prompt": "concurrency", "max_tokens": 30, "seed": 11})
	// The requests run concurrently; their streams are checked afterwards,
	// on the test goroutine.
	var wg sync.WaitGroup
	resps := make([]*http.Response, 32)
	bodies := make([][]byte, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := json.Marshal(map[string]any{"job_id": "c" + string(rune('A'+i)), "prompt": "concurrency", "max_tokens": 30, "seed": 11})
			resp, err := http.Post(ts.url+"/execute", "application/json", bytes.NewReader(b))
			if err != nil {
				t.Error(err)
				return
			}
			bodies[i], _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			resps[i] = resp
		}()
	}
	wg.Wait()
	for i, resp := range resps {
		if resp == nil {
			continue
		}
		resp.Body = io.NopCloser(bytes.NewReader(bodies[i]))
		x := checkExecution(t, newSSEReader(t, resp).all(t))
		if x.end == nil || x.text != want.text {
			t.Errorf("request %d: %q (%+v), want %q", i, x.text, x.err, want.text)
		}
	}
	if m.MaxRunning.Load() != 1 {
		t.Errorf("%d model calls overlapped", m.MaxRunning.Load())
	}
}

func TestExecuteSeedDeterminism(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	body := map[string]any{"job_id": "s", "prompt": "determinism", "max_tokens": 40, "temperature": 1.2, "top_k": 50, "top_p": 0.95, "min_p": 0.01, "repetition_penalty": 1.1}
	a := ts.execute(t, body)
	body["seed"] = a.started.Seed // the generated seed is reported
	b := ts.execute(t, body)
	c := ts.execute(t, body)
	if a.text != b.text || b.text != c.text || len(a.tokens) == 0 {
		t.Errorf("same seed, different text:\n%q\n%q\n%q", a.text, b.text, c.text)
	}
	body["seed"] = a.started.Seed + 1
	if d := ts.execute(t, body); d.text == a.text {
		t.Errorf("different seed, same text %q", d.text)
	}
}

// TestExecuteUTF8RandomBytes streams text from a model that emits random
// bytes (often invalid or split UTF-8); every event must still be valid.
func TestExecuteUTF8RandomBytes(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	for seed := range 5 {
		x := ts.execute(t, map[string]any{"job_id": "u", "prompt": "日本", "max_tokens": 200, "seed": seed})
		for _, tok := range x.tokens {
			if !utf8.ValidString(tok.T) {
				t.Fatalf("seed %d token %d: invalid UTF-8 %q", seed, tok.I, tok.T)
			}
		}
	}
}

func TestHealthMetricsCorrelation(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2", engine.Config{}, nil)
	ts.execute(t, map[string]any{"job_id": "h", "prompt": "x"})

	req, _ := http.NewRequest("GET", ts.url+"/health", nil)
	req.Header.Set("X-Correlation-Id", "abc-123")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.Header.Get("X-Correlation-Id") != "abc-123" {
		t.Errorf("correlation id not echoed: %q", resp.Header.Get("X-Correlation-Id"))
	}
	for _, f := range []string{"status", "model", "resident", "quant_kind", "vram_bytes_used", "tokenizer_kind", "vocab_size", "context_length", "uptime_seconds", "device"} {
		if _, ok := h[f]; !ok {
			t.Errorf("health lacks %s: %v", f, h)
		}
	}
	if h["status"] != "ok" || h["vram_bytes_used"] != 12345.0 || h["device"] != "cpu" {
		t.Errorf("health %v", h)
	}

	resp, err = http.Get(ts.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`orcd_requests_total{endpoint="execute",outcome="eog"} 1`,
		"orcd_generated_tokens_total 2",
		"orcd_time_to_first_token_seconds_count 1",
		"orcd_inter_token_latency_seconds_count 1",
		"orcd_queue_depth 0",
		"orcd_vram_bytes 12345",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestAPIKey(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{Next: enginetest.TextScript("ok")}, "gpt2", engine.Config{}, func(c *Config) { c.APIKey = "sekret" })
	wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "k", "prompt": "x"}), http.StatusUnauthorized, "UNAUTHORIZED")
	resp, _ := http.Get(ts.url + "/v1/models")
	var oe openAIError
	json.NewDecoder(resp.Body).Decode(&oe)
	resp.Body.Close()
	if resp.StatusCode != 401 || oe.Error.Type != "authentication_error" {
		t.Errorf("/v1/models without key: %d %+v", resp.StatusCode, oe)
	}
	resp, _ = http.Get(ts.url + "/health")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/health needs no key, got %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", ts.url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer sekret")
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("with key: %d", resp.StatusCode)
	}
}

func TestShutdownEndpoint(t *testing.T) {
	ts := newTestServer(t, &enginetest.Model{}, "gpt2", engine.Config{}, nil)
	resp := ts.post(t, "/shutdown", "")
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("shutdown: %d", resp.StatusCode)
	}
	ts.post(t, "/shutdown", "").Body.Close()
	time.Sleep(10 * time.Millisecond)
	if n := ts.shutdown.Load(); n != 1 {
		t.Errorf("OnShutdown called %d times", n)
	}
	e := wantError(t, ts.post(t, "/execute", map[string]any{"job_id": "late", "prompt": "x"}), http.StatusServiceUnavailable, "SHUTTING_DOWN")
	if !e.Retriable {
		t.Error("SHUTTING_DOWN not retriable")
	}
}

// oomError stands for a backend's out-of-memory error: it wraps
// backend.ErrOutOfMemory, as the cuda backend's errors do.
type oomError struct{}

func (oomError) Error() string        { return "cuMemAlloc: out of memory (injected)" }
func (oomError) Is(target error) bool { return target == backend.ErrOutOfMemory }

// An out-of-memory failure in the middle of a request ends that request with
// VRAM_OOM; the worker stays up, the next request succeeds, and no KV cache
// is leaked.
func TestExecuteVRAMOOMThenRecovers(t *testing.T) {
	m := &enginetest.Model{Next: enginetest.TextScript("alpha beta gamma")}
	m.Fail = func(call int64) error {
		if call == 3 { // the second decode step of the first request
			return oomError{}
		}
		return nil
	}
	ts := newTestServer(t, m, "gpt2", engine.Config{MaxActive: 1}, nil)
	x := ts.execute(t, map[string]any{"job_id": "oom", "prompt": "x", "max_tokens": 50})
	if x.err == nil || x.err.Code != "VRAM_OOM" || x.err.Retriable {
		t.Fatalf("first request: end %+v, error %+v; want a non-retriable VRAM_OOM error", x.end, x.err)
	}
	x = ts.execute(t, map[string]any{"job_id": "after", "prompt": "x", "max_tokens": 5})
	if x.end == nil || x.text != "alpha" {
		t.Fatalf("request after the OOM: end %+v, error %+v, text %q", x.end, x.err, x.text)
	}
	resp, err := http.Get(ts.url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/health after the OOM: %d", resp.StatusCode)
	}
}
