package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"orcd/backend/cuda"
	"orcd/internal/testutil"
)

// servedWorker is an `orcd serve` running in this process.
type servedWorker struct {
	uri      string
	callback readyCallback
	exit     chan int // serve's exit status
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
	var log testutil.SyncBuffer
	go func() { w.exit <- runMain(append([]string{"serve"}, args...), nil, io.Discard, &log) }()
	select {
	case w.callback = <-got:
	case code := <-w.exit:
		t.Fatalf("serve exited with %d before the ready callback:\n%s", code, log.String())
	case <-time.After(60 * time.Second):
		t.Fatal("no ready callback within 60 s")
	}
	w.uri = w.callback.URI
	t.Cleanup(func() {
		select {
		case <-w.exit:
		default:
			http.Post(w.uri+"/shutdown", "application/json", nil)
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
	w := startServe(t, "--model", path, "--ctx-size", "256", "--worker-id", "11111111-2222-4333-8444-555555555555", "--responses-store", "1")
	if c := w.callback; c.WorkerID != "11111111-2222-4333-8444-555555555555" || c.ModelRef != path || !strings.HasPrefix(c.URI, "http://127.0.0.1:") {
		t.Errorf("ready callback %+v", c)
	}

	_, h := getJSON(t, "GET", w.uri+"/health")
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

	// --responses-store 1 keeps the latest response only.
	var ids []string
	for range 2 {
		resp, err := http.Post(w.uri+"/v1/responses", "application/json", strings.NewReader(`{"input":"Hi","max_output_tokens":3}`))
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ ID, Status string }
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if resp.StatusCode != 200 || r.Status != "incomplete" {
			t.Fatalf("responses: %d %+v", resp.StatusCode, r)
		}
		ids = append(ids, r.ID)
	}
	for i, want := range []int{404, 200} {
		if status, _ := getJSON(t, "GET", w.uri+"/v1/responses/"+ids[i]); status != want {
			t.Errorf("stored response %d of 2: status %d, want %d", i+1, status, want)
		}
	}

	// The limits are in place: a prompt longer than the context times the
	// longest token (128 bytes for gpt2) is refused before tokenizing, and
	// /metrics counts the open connections.
	big := strings.Repeat("a", 256*128+1)
	resp, err = http.Post(w.uri+"/execute", "application/json", strings.NewReader(`{"job_id":"big","prompt":"`+big+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "prompt: 32769 bytes of text cannot fit the context of 256 tokens") {
		t.Errorf("oversized prompt: %d %s", resp.StatusCode, msg)
	}
	resp, err = http.Get(w.uri + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	msg, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"orcd_open_connections ", "process_open_fds ", "go_goroutines "} {
		if !strings.Contains(string(msg), want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	resp, err = http.Post(w.uri+"/shutdown", "application/json", nil)
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
	code := runMain([]string{"serve", "--model", path, "--device", "cpu", "--port", "0", "--callback-url", cb.URL}, nil, io.Discard, io.Discard)
	if code == 0 {
		t.Error("serve exited 0 although the ready callback failed")
	}
	for _, bad := range [][]string{{"--port", "70000"}, {"--max-connections", "-1"}, {"--admission-concurrency", "0"},
		{"--read-timeout-sec", "0"}, {"--admission-timeout-sec", "-1"}, {"--max-header-bytes", "10"}} {
		if code := runMain(append([]string{"serve"}, bad...), nil, io.Discard, io.Discard); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
}

// TestServeBatchedStreams is the CPU end-to-end check of continuous
// batching: 16 (gpt2) and 64 (gpt-oss) concurrent /execute streams of
// different prompts, seeds and lengths share the model's steps, and each
// gives exactly the tokens it gives alone (batch invariance); one more
// stream is cancelled mid-batch, and /metrics then shows every KV block
// free again and the server healthy.
func TestServeBatchedStreams(t *testing.T) {
	for _, tc := range []struct {
		preset  string
		streams int
	}{{"tiny-gpt2", 16}, {"tiny-gpt-oss", 64}} {
		t.Run(tc.preset, func(t *testing.T) {
			path := synthTemp(t, tc.preset, 0)
			w := startServe(t, "--model", path, "--ctx-size", "256", "--max-active", "16", "--max-queue", "128", "--max-batch", "64")
			body := func(i int) string {
				return fmt.Sprintf(`{"job_id":"s%d","prompt":"Story %d: %s","max_tokens":%d,"temperature":1.2,"seed":%d}`,
					i, i, strings.Repeat("once upon a time ", i%5), 8+i%17, 1000+i)
			}
			alone := make([]string, tc.streams)
			for i := range alone {
				alone[i] = tokensText(t, executeStream(t, w.uri, body(i), nil))
			}
			var wg sync.WaitGroup
			for i := range tc.streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if got := tokensText(t, executeStream(t, w.uri, strings.Replace(body(i), `"s`, `"b`, 1), nil)); got != alone[i] {
						t.Errorf("stream %d: batched %q, alone %q", i, got, alone[i])
					}
				}()
			}
			// A long stream cancelled while the others run.
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := 0
				evs := executeStream(t, w.uri, `{"job_id":"victim","prompt":"Once upon a time","max_tokens":200}`, func(ev event) {
					if ev.name == "token" {
						if n++; n == 5 {
							r, err := http.Post(w.uri+"/cancel", "application/json", strings.NewReader(`{"job_id":"victim"}`))
							if err == nil {
								r.Body.Close()
							}
						}
					}
				})
				if last := lastEvent(t, evs); last.data["code"] != "CANCELLED" {
					t.Errorf("cancelled stream ended with %v", last)
				}
			}()
			wg.Wait()

			metrics := func() map[string]string {
				resp, err := http.Get(w.uri + "/metrics")
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				m := map[string]string{}
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					if f := strings.Fields(sc.Text()); len(f) == 2 && !strings.HasPrefix(f[0], "#") {
						m[f[0]] = f[1]
					}
				}
				return m
			}
			deadline := time.Now().Add(10 * time.Second)
			for m := metrics(); m["orcd_kv_blocks_used"] != "0" || m["orcd_running_sequences"] != "0"; m = metrics() {
				if time.Now().After(deadline) {
					t.Fatalf("blocks still used after every stream ended: %v", m)
				}
				time.Sleep(20 * time.Millisecond)
			}
			m := metrics()
			if m["orcd_prefix_cache_hit_tokens_total"] == "0" {
				t.Error("metrics: no prefix cache hits, though every prompt starts alike")
			}
			if single, all := m[`orcd_step_sequences_bucket{le="1"}`], m["orcd_step_sequences_count"]; single == "" || single == all {
				t.Errorf("metrics: %s of %s steps ran one sequence: nothing was batched", single, all)
			}
			if _, h := getJSON(t, "GET", w.uri+"/health"); h["status"] != "ok" || h["active"] != 0.0 || h["queue_depth"] != 0.0 {
				t.Errorf("health after the streams: %v", h)
			}
		})
	}
}

// A port in use fails at once, before the model is even opened: the error
// is the bind's, not the missing model file's.
func TestServePortInUseFailsBeforeLoading(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var logs bytes.Buffer
	code := runMain([]string{"serve", "--model", filepath.Join(t.TempDir(), "missing.gguf"), "--device", "cpu",
		"--port", port, "--log-format", "text"}, nil, io.Discard, &logs)
	if code != 1 || !strings.Contains(logs.String(), "address already in use") || strings.Contains(logs.String(), "missing.gguf") {
		t.Errorf("exit %d, logs:\n%s", code, logs.String())
	}
}

// getJSON fetches url and decodes its JSON body.
func getJSON(t *testing.T, method, url string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(`{"job_id":"j","prompt":"hi"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("%s %s: %d, body not JSON: %v", method, url, resp.StatusCode, err)
	}
	return resp.StatusCode, body
}

// While the model loads, serve already listens: /health answers 503
// "loading", the other endpoints a retriable 503 LOADING error in their
// API's shape, and no ready callback has gone. Once loaded, /health says
// "ok" and the callback goes.
func TestServeAnswersLoadingUntilLoaded(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	callbacks := make(chan readyCallback, 1)
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body readyCallback
		json.NewDecoder(r.Body).Decode(&body)
		callbacks <- body
	}))
	defer cb.Close()

	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	mf, sf := addModelFlags(fs, "fast"), addServeFlags(fs)
	if _, err := parseArgs(fs, []string{"--model", path, "--device", "cpu", "--port", "0", "--callback-url", cb.URL}); err != nil {
		t.Fatal(err)
	}
	if err := sf.resolve(fs); err != nil {
		t.Fatal(err)
	}
	addrs, release := make(chan string), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- serve(mf, sf, slog.New(slog.DiscardHandler), func(addr string) {
			addrs <- addr
			<-release // hold the worker in its loading state
		})
	}()
	base := "http://" + <-addrs

	status, body := getJSON(t, "GET", base+"/health")
	if status != http.StatusServiceUnavailable || body["status"] != "loading" {
		t.Errorf("health while loading: %d %v", status, body)
	}
	status, body = getJSON(t, "POST", base+"/execute")
	if e, _ := body["error"].(map[string]any); status != http.StatusServiceUnavailable || e["code"] != "LOADING" || e["retriable"] != true {
		t.Errorf("execute while loading: %d %v", status, body)
	}
	status, body = getJSON(t, "POST", base+"/v1/chat/completions")
	if e, _ := body["error"].(map[string]any); status != http.StatusServiceUnavailable || e["code"] != "loading" || e["message"] == "" {
		t.Errorf("chat while loading: %d %v", status, body)
	}
	select {
	case c := <-callbacks:
		t.Fatalf("ready callback %v before the model was loaded", c)
	default:
	}

	close(release)
	select {
	case c := <-callbacks:
		if c.URI != base || c.ModelRef != path {
			t.Errorf("ready callback %+v", c)
		}
	case err := <-done:
		t.Fatalf("serve returned %v before the ready callback", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no ready callback within 60 s")
	}
	if status, body := getJSON(t, "GET", base+"/health"); status != http.StatusOK || body["status"] != "ok" {
		t.Errorf("health once loaded: %d %v", status, body)
	}
	resp, err := http.Post(base+"/shutdown", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}

// SIGTERM while the model loads ends serve at once, with no error.
func TestServeSIGTERMWhileLoading(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	mf, sf := addModelFlags(fs, "fast"), addServeFlags(fs)
	if _, err := parseArgs(fs, []string{"--model", path, "--device", "cpu", "--port", "0"}); err != nil {
		t.Fatal(err)
	}
	sf.resolve(fs)
	release := make(chan struct{})
	defer close(release)
	listening := make(chan string)
	done := make(chan error, 1)
	go func() {
		done <- serve(mf, sf, slog.New(slog.DiscardHandler), func(addr string) {
			listening <- addr
			<-release
		})
	}()
	addr := <-listening
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve still running 10 s after SIGTERM while loading")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still listening after serve returned")
	}
}

// TestServeBatchInvariantCUDA runs on the GPU machine: with
// --batch-invariant, each of 48 seeded streams (prompts longer and shorter
// than the sliding window, head dim 64 so that prompt chunks take the
// flash kernel) gives the same tokens alone and among the others. Without
// the flag it only reports how many differ.
func TestServeBatchInvariantCUDA(t *testing.T) {
	if !cuda.Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	path := synthTemp(t, "small-gpt-oss", 0)
	const streams = 48
	body := func(i int) string {
		return fmt.Sprintf(`{"job_id":"s%d","prompt":"Tale %d: %s","max_tokens":24,"temperature":1,"seed":%d}`,
			i, i, strings.Repeat("once upon a time ", i%9), 500+i)
	}
	for _, invariant := range []bool{true, false} {
		args := []string{"--model", path, "--device", "cuda", "--ctx-size", "512", "--max-active", "64", "--no-prefix-cache"}
		if invariant {
			args = append(args, "--batch-invariant")
		}
		w := startServe(t, args...)
		alone := make([]string, streams)
		for i := range alone {
			alone[i] = tokensText(t, executeStream(t, w.uri, body(i), nil))
		}
		var mu sync.Mutex
		differ := 0
		var wg sync.WaitGroup
		for i := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got := tokensText(t, executeStream(t, w.uri, strings.Replace(body(i), `"s`, `"b`, 1), nil))
				if got != alone[i] {
					mu.Lock()
					differ++
					mu.Unlock()
					if invariant {
						t.Errorf("stream %d: batched %q, alone %q", i, got, alone[i])
					}
				}
			}()
		}
		wg.Wait()
		t.Logf("batch-invariant=%v: %d of %d streams differ between alone and batched", invariant, differ, streams)
		http.Post(w.uri+"/shutdown", "application/json", nil)
		w.waitExit(t)
	}
}
