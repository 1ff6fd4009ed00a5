package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoadtest runs orcd loadtest against a served tiny model through both
// APIs and checks the report adds up: every request completes, the token
// counts are the server's, and the latency percentiles are ordered.
func TestLoadtest(t *testing.T) {
	path := synthTemp(t, "tiny-gpt2", 0)
	w := startServe(t, "--model", path, "--ctx-size", "256")
	for _, api := range []string{"worker", "openai"} {
		t.Run(api, func(t *testing.T) {
			var out, errs bytes.Buffer
			code := runMain([]string{"loadtest", "--url", w.uri, "--api", api, "--concurrency", "4", "--requests", "12",
				"--prompt-tokens", "20", "--prompt-spread", "0.5", "--shared-prefix", "5", "--output-tokens", "10",
				"--warmup", "2", "--format", "json"}, nil, &out, &errs)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs.String())
			}
			var rep loadReport
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("%v: %s", err, out.String())
			}
			if rep.Completed != 12 || rep.Failed != 0 || rep.OutputTokens < 12 || rep.OutputTokens > 120 || rep.PromptTokens < 12*10 {
				t.Errorf("report %+v", rep)
			}
			if rep.TTFTms["p50"] <= 0 || rep.TTFTms["p50"] > rep.TTFTms["p99"] || rep.LatencyMs["p99"] < rep.TTFTms["p99"] {
				t.Errorf("percentiles: ttft %v latency %v", rep.TTFTms, rep.LatencyMs)
			}
			if rep.OutputTokPerSec <= 0 || rep.TotalTokPerSec <= rep.OutputTokPerSec {
				t.Errorf("throughput %v output, %v total", rep.OutputTokPerSec, rep.TotalTokPerSec)
			}
		})
	}
	var out bytes.Buffer
	if code := runMain([]string{"loadtest", "--url", w.uri, "--requests", "2", "--prompt-tokens", "5", "--output-tokens", "3"}, nil, &out, io.Discard); code != 0 ||
		!strings.Contains(out.String(), "| output tok/s |") {
		t.Errorf("markdown report: exit %d\n%s", code, out.String())
	}
}

// TestLoadtestErrors counts failed requests by kind and exits 1.
func TestLoadtestErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"code":"QUEUE_FULL"}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	var out bytes.Buffer
	code := runMain([]string{"loadtest", "--url", srv.URL, "--requests", "5", "--format", "json"}, nil, &out, io.Discard)
	var rep loadReport
	json.Unmarshal(out.Bytes(), &rep)
	if code != 1 || rep.Failed != 5 || rep.Errors["HTTP 503"] != 5 {
		t.Errorf("exit %d, report %+v", code, rep)
	}
	if code := runMain([]string{"loadtest", "--api", "grpc"}, nil, io.Discard, io.Discard); code != 2 {
		t.Errorf("bad --api: exit %d", code)
	}
}

// TestLoadtestKeepsConnections checks that each client reuses its
// connection: --concurrency 8 opens about 8, however many requests (with
// net/http's default of 2 idle connections a host, most requests opened a
// new one, and 256 clients briefly exceeded serve's 256 connections per IP).
func TestLoadtestKeepsConnections(t *testing.T) {
	var opened atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(5 * time.Millisecond) // all 8 clients in flight at once
		http.Error(w, `{"code":"QUEUE_FULL"}`, http.StatusServiceUnavailable)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	runMain([]string{"loadtest", "--url", srv.URL, "--concurrency", "8", "--requests", "256", "--format", "json"}, nil, io.Discard, io.Discard)
	// A client may dial once more while its last connection is being
	// handed back; without reuse, 256 requests opened ~70.
	if n := opened.Load(); n > 12 {
		t.Errorf("256 requests by 8 clients opened %d connections, want at most 12", n)
	}
}
