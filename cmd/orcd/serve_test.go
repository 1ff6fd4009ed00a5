package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// servedWorker is an `orcd serve` running in this process.
type servedWorker struct {
	uri      string
	callback readyCallback
	exit     chan int // runServe's exit status
}

// startServe runs `orcd serve` with args on a free loopback port and waits
// for its ready callback.
func startServe(t *testing.T, args ...string) *servedWorker {
	t.Helper()
	got := make(chan readyCallback, 1)
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body readyCallback
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Errorf("ready callback body: %v", err)
		}
		got <- body
	}))
	t.Cleanup(cb.Close)
	w := &servedWorker{exit: make(chan int, 1)}
	args = append([]string{"--device", "cpu", "--host", "127.0.0.1", "--port", "0", "--callback-url", cb.URL, "--log-format", "text"}, args...)
	go func() { w.exit <- runServe(args, io.Discard, io.Discard) }()
	select {
	case w.callback = <-got:
	case code := <-w.exit:
		t.Fatalf("serve exited with %d before the ready callback", code)
	case <-time.After(60 * time.Second):
		t.Fatal("no ready callback within 60 s")
	}
	w.uri = w.callback.URI
	t.Cleanup(func() {
		select {
		case <-w.exit:
		default:
			http.Post(w.uri+"/shutdown", "", nil)
			<-w.exit
		}
	})
	return w
}

// waitExit returns serve's exit status.
func (w *servedWorker) waitExit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-w.exit:
		w.exit <- code // for the cleanup
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit within 30 s")
	}
	return -1
}

// health returns the worker's /health answer.
func (w *servedWorker) health(t *testing.T) map[string]any {
	t.Helper()
	resp, err := http.Get(w.uri + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// event is one server-sent event of /execute.
type event struct {
	name string
	data map[string]any
}

// executeStream posts an /execute body and returns its events, calling
// during for each as it arrives. It may run on any goroutine, so it reports
// failures with Errorf and returns nil.
func executeStream(t *testing.T, uri, body string, during func(event)) []event {
	t.Helper()
	resp, err := http.Post(uri+"/execute", "application/json", strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("execute: %d %s", resp.StatusCode, b)
		return nil
	}
	var evs []event
	sc := bufio.NewScanner(resp.Body)
	var name string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev := event{name: name}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.data); err != nil {
				t.Errorf("event %s: %v", name, err)
				return nil
			}
			evs = append(evs, ev)
			if during != nil {
				during(ev)
			}
		}
	}
	return evs
}

// lastEvent returns the last event, failing the test when there is none.
func lastEvent(t *testing.T, evs []event) event {
	t.Helper()
	if len(evs) == 0 {
		t.FailNow()
	}
	return evs[len(evs)-1]
}

// tokensText checks the token events and returns their text.
func tokensText(t *testing.T, evs []event) string {
	t.Helper()
	var b strings.Builder
	for _, ev := range evs {
		if ev.name == "token" {
			s := ev.data["t"].(string)
			if !utf8.ValidString(s) {
				t.Errorf("token event %v is not valid UTF-8", ev.data)
			}
			b.WriteString(s)
		}
	}
	return b.String()
}

func TestServeGPT2EndToEnd(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	w := startServe(t, "--model", path, "--ctx-size", "256", "--worker-id", "11111111-2222-4333-8444-555555555555")
	if c := w.callback; c.WorkerID != "11111111-2222-4333-8444-555555555555" || c.ModelRef != path || !strings.HasPrefix(c.URI, "http://127.0.0.1:") {
		t.Errorf("ready callback %+v", c)
	}

	h := w.health(t)
	if h["status"] != "ok" || h["model"] != "tiny-gpt2" || h["device"] != "cpu" || h["context_length"] != 256.0 || h["tokenizer_kind"] == "" {
		t.Errorf("health %v", h)
	}

	// The same seed gives the same tokens; every token event is valid UTF-8
	// (a random model emits many partial characters).
	body := `{"job_id":"%s","prompt":"Hello, wörld! 日本語","max_tokens":60,"temperature":1.5,"seed":42}`
	a := executeStream(t, w.uri, strings.Replace(body, "%s", "a", 1), nil)
	b := executeStream(t, w.uri, strings.Replace(body, "%s", "b", 1), nil)
	ta, tb := tokensText(t, a), tokensText(t, b)
	if ta != tb || ta == "" {
		t.Errorf("same seed, different text: %q vs %q", ta, tb)
	}
	if last := lastEvent(t, a); a[0].name != "started" || last.name != "end" || last.data["stop_reason"] == "" {
		t.Errorf("stream %v ... %v", a[0], last)
	}

	// 32 concurrent requests (4 sequences in flight, the rest queued), each
	// with its own KV cache: interleaving must not change any of them.
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := executeStream(t, w.uri, strings.Replace(body, "%s", fmt.Sprint("c", i), 1), nil)
			if got := tokensText(t, evs); got != ta {
				t.Errorf("concurrent request %d: %q, want %q", i, got, ta)
			}
		}()
	}
	wg.Wait()

	resp, err := http.Post(w.uri+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"tiny-gpt2","messages":[{"role":"user","content":"Hi"}],"max_tokens":10}`))
	if err != nil {
		t.Fatal(err)
	}
	var chat struct {
		Choices []struct {
			Message      struct{ Role string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	json.NewDecoder(resp.Body).Decode(&chat)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(chat.Choices) != 1 || chat.Choices[0].Message.Role != "assistant" || chat.Usage.CompletionTokens == 0 {
		t.Errorf("chat: %d %+v", resp.StatusCode, chat)
	}

	resp, err = http.Post(w.uri+"/shutdown", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code := w.waitExit(t); code != 0 {
		t.Errorf("exit status %d after /shutdown", code)
	}
}

func TestServeGPTOSSCancelAndSIGTERM(t *testing.T) {
	path := synthTemp(t, "tiny-gpt-oss", 0)
	w := startServe(t, "--model", path, "--ctx-size", "2048", "--shutdown-timeout-sec", "0.3")

	// A harmony chat with tools renders and runs on the real tokenizer.
	resp, err := http.Post(w.uri+"/v1/chat/completions", "application/json", strings.NewReader(
		`{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather?"}],"max_tokens":8,"reasoning_effort":"high",
		  "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(b), "<|") {
		t.Errorf("harmony chat: %d %s", resp.StatusCode, b)
	}

	// Cancel mid-stream. (server's TestExecuteCancelMidStream checks that
	// decoding stops within one step; here the bound is loose so that a
	// loaded machine does not fail the test.)
	var cancelledAt time.Time
	n := 0
	evs := executeStream(t, w.uri, `{"job_id":"long","prompt":"Once upon a time","max_tokens":2048}`, func(ev event) {
		if ev.name == "token" {
			if n++; n == 3 {
				cancelledAt = time.Now()
				r, err := http.Post(w.uri+"/cancel", "application/json", strings.NewReader(`{"job_id":"long"}`))
				if err != nil {
					t.Errorf("cancel: %v", err)
					return
				}
				r.Body.Close()
				if r.StatusCode != http.StatusAccepted {
					t.Errorf("cancel: %v", r.Status)
				}
			}
		}
	})
	if d := time.Since(cancelledAt); d > time.Second {
		t.Errorf("stream ended %v after the cancel", d)
	}
	if last := lastEvent(t, evs); last.name != "error" || last.data["code"] != "CANCELLED" {
		t.Errorf("last event %v, want error CANCELLED", last)
	}

	// SIGTERM during a job: the job is stopped at the drain deadline, its
	// stream ends with a retriable SHUTTING_DOWN error, and serve exits 0.
	done := make(chan []event)
	go func() {
		done <- executeStream(t, w.uri, `{"job_id":"drain","prompt":"Once upon a time","max_tokens":2048}`, func(ev event) {
			if ev.name == "started" {
				syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
			}
		})
	}()
	evs = <-done
	if last := lastEvent(t, evs); last.name != "error" || last.data["code"] != "SHUTTING_DOWN" || last.data["retriable"] != true {
		t.Errorf("drained job's last event %v, want a retriable SHUTTING_DOWN error", last)
	}
	if code := w.waitExit(t); code != 0 {
		t.Errorf("exit status %d after SIGTERM", code)
	}
}

func TestServeCallbackFailureExits(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer cb.Close()
	code := runServe([]string{"--model", path, "--device", "cpu", "--port", "0", "--callback-url", cb.URL}, io.Discard, io.Discard)
	if code == 0 {
		t.Error("serve exited 0 although the ready callback failed")
	}
	if code := runServe([]string{"--port", "70000"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("bad --port: exit %d, want 2", code)
	}
}
