package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"orcd/backend"
	"orcd/demo"
	"orcd/engine"
	"orcd/server"
	"orcd/tokenizer"
)

func init() {
	register(command{
		name:    "serve",
		summary: "serve the model over HTTP (worker API and OpenAI-compatible API)",
		run:     runServe,
	})
}

// serveFlags are serve's own flags (the model flags come from load.go).
type serveFlags struct {
	workerID        string
	host            string
	port            int
	callbackURL     string
	advertiseURL    string
	modelID         string
	apiKey          string
	maxTokensOut    int
	timeoutSec      float64
	maxActive       int
	maxQueue        int
	maxBodyBytes    int64
	shutdownTimeout float64
	logFormat       string
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mf := addModelFlags(fs)
	var sf serveFlags
	fs.StringVar(&sf.workerID, "worker-id", "", "worker UUID sent in the ready callback (default: a random UUID)")
	fs.StringVar(&sf.host, "host", "127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)")
	fs.IntVar(&sf.port, "port", 8080, "port to listen on (0: any free port)")
	fs.StringVar(&sf.callbackURL, "callback-url", "", "URL to POST {worker_id, model_ref, vram_bytes, uri} to once listening; failure exits non-zero")
	fs.StringVar(&sf.advertiseURL, "advertise-url", "", "base URL reported in the ready callback (default: http://HOST:PORT, with this machine's hostname when HOST is unspecified)")
	fs.StringVar(&sf.modelID, "model-id", "", "model name in the API (default: the model file's name without .gguf, or "+demo.Name+")")
	fs.StringVar(&sf.apiKey, "api-key", os.Getenv("ORCD_API_KEY"), "bearer token required on every endpoint but /health (default $ORCD_API_KEY; empty: no auth)")
	fs.IntVar(&sf.maxTokensOut, "max-tokens-out", 2048, "largest max_tokens a request may ask for")
	fs.Float64Var(&sf.timeoutSec, "inference-timeout-sec", 300, "per-request time limit, queueing included (0: none)")
	fs.IntVar(&sf.maxActive, "max-active", 4, "sequences decoded at once, each with its own KV cache")
	fs.IntVar(&sf.maxQueue, "max-queue", 64, "requests that may wait for a sequence slot; more get 503")
	fs.Int64Var(&sf.maxBodyBytes, "max-body-bytes", 1<<20, "largest request body")
	fs.Float64Var(&sf.shutdownTimeout, "shutdown-timeout-sec", 30, "on SIGTERM or POST /shutdown, how long running jobs may finish before they are cancelled")
	fs.StringVar(&sf.logFormat, "log-format", "json", "log format: json or text")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := sf.validate(fs); err != nil {
		fmt.Fprintf(stderr, "orcd serve: %v\n", err)
		return 2
	}
	var log *slog.Logger
	if sf.logFormat == "text" {
		log = slog.New(slog.NewTextHandler(stderr, nil))
	} else {
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	}
	if err := serve(mf, &sf, log, nil); err != nil {
		log.Error("serve failed", "error", err)
		return 1
	}
	return 0
}

func (sf *serveFlags) validate(fs *flag.FlagSet) error {
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case sf.port < 0 || sf.port > 65535:
		return fmt.Errorf("--port %d is not a port number", sf.port)
	case sf.maxTokensOut < 1:
		return fmt.Errorf("--max-tokens-out %d must be at least 1", sf.maxTokensOut)
	case sf.timeoutSec < 0 || sf.shutdownTimeout < 0:
		return errors.New("--inference-timeout-sec and --shutdown-timeout-sec must not be negative")
	case sf.maxActive < 1 || sf.maxQueue < 0:
		return errors.New("--max-active must be at least 1 and --max-queue not negative")
	case sf.maxBodyBytes < 1:
		return errors.New("--max-body-bytes must be positive")
	case sf.logFormat != "json" && sf.logFormat != "text":
		return fmt.Errorf("--log-format %q is not json or text", sf.logFormat)
	}
	if sf.workerID == "" {
		sf.workerID = newUUID()
	}
	return nil
}

// serve loads the model, listens, sends the ready callback and serves until
// SIGTERM, SIGINT or POST /shutdown, then drains and frees everything.
// ready, when set, receives the listening address (for tests).
func serve(mf *modelFlags, sf *serveFlags, log *slog.Logger, ready func(addr string)) error {
	// Catch signals from the start, so a SIGTERM during loading or the
	// callback still ends in an orderly shutdown.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	lm, err := loadModel(mf, true, log, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err := lm.Close(); err != nil {
			log.Error("freeing the model", "error", err)
		}
		log.Info("model freed")
	}()
	cfg := lm.Model.Config()

	var prefix []int32
	if lm.Tokenizer.AddBOS() && lm.Tokenizer.BOS() >= 0 {
		prefix = []int32{lm.Tokenizer.BOS()}
	}
	eng, err := engine.New(engine.Config{
		Model: lm.Model, Tokenizer: engineTokenizer{lm.Tokenizer},
		MaxActive: sf.maxActive, MaxQueue: sf.maxQueue, CtxSize: lm.CtxSize,
		Timeout:      time.Duration(sf.timeoutSec * float64(time.Second)),
		PromptPrefix: prefix, Logger: log,
	})
	if err != nil {
		return err
	}
	dev := newBackendDevice(lm.Backend, mf.gpu, log)
	shutdownRequested := make(chan struct{})
	srv, err := server.New(server.Config{
		Engine: eng, Tokenizer: lm.Tokenizer, Device: dev,
		Model: server.ModelInfo{
			ID: cmp.Or(sf.modelID, lm.Name), Arch: cfg.Arch, QuantKind: lm.QuantKind,
			TokenizerKind: lm.Tokenizer.Kind(), VocabSize: cfg.VocabSize, ContextLength: lm.CtxSize,
		},
		MaxTokensOut: sf.maxTokensOut, APIKey: sf.apiKey, MaxBodyBytes: sf.maxBodyBytes,
		OnShutdown: func() { close(shutdownRequested) }, Logger: log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(sf.host, strconv.Itoa(sf.port)))
	if err != nil {
		return err
	}
	// No ReadTimeout or WriteTimeout: they would cut off long event streams.
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	addr := ln.Addr().String()
	uri := advertisedURI(sf, ln.Addr().(*net.TCPAddr))
	log.Info("listening", "addr", addr, "uri", uri, "worker_id", sf.workerID)
	if ready != nil {
		ready(addr)
	}

	if sf.callbackURL != "" {
		body := readyCallback{WorkerID: sf.workerID, ModelRef: cmp.Or(lm.Path, "builtin:"+lm.Name), VRAMBytes: dev.VRAMBytesUsed(), URI: uri}
		if err := sendReady(sf.callbackURL, body, log); err != nil {
			hs.Close()
			eng.Drain(context.Background())
			return fmt.Errorf("ready callback: %w", err)
		}
	}

	select {
	case s := <-sig:
		log.Info("signal received; draining", "signal", s.String())
	case <-shutdownRequested:
		log.Info("shutdown requested; draining")
	case err := <-serveErr:
		eng.Drain(context.Background())
		return err
	}
	srv.StartDraining()
	grace := time.Duration(sf.shutdownTimeout * float64(time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	eng.Drain(ctx) // finishes or, at the deadline, cancels the jobs in flight
	// The streams have ended; give handlers a moment to write their last event.
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	if err := hs.Shutdown(hctx); err != nil {
		log.Warn("closing connections", "error", err)
		hs.Close()
	}
	log.Info("drained")
	return nil
}

// engineTokenizer adapts *tokenizer.Tokenizer to engine.Tokenizer.
type engineTokenizer struct{ *tokenizer.Tokenizer }

func (t engineTokenizer) NewStreamDecoder() engine.StreamDecoder {
	return t.Tokenizer.NewStreamDecoder()
}

// readyCallback is the body of the ready callback.
type readyCallback struct {
	WorkerID  string `json:"worker_id"`
	ModelRef  string `json:"model_ref"`
	VRAMBytes int64  `json:"vram_bytes"`
	URI       string `json:"uri"`
}

// sendReady POSTs the ready callback, trying three times; any answer other
// than 2xx is a failure.
func sendReady(url string, body readyCallback, log *slog.Logger) error {
	payload, _ := json.Marshal(body)
	client := &http.Client{Timeout: 10 * time.Second}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var resp *http.Response
		resp, err = client.Post(url, "application/json", bytes.NewReader(payload))
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				log.Info("ready callback sent", "url", url, "status", resp.StatusCode)
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		log.Warn("ready callback failed", "attempt", attempt, "error", err)
		if attempt < 3 {
			time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
		}
	}
	return err
}

// advertisedURI is the base URL the orchestrator should use.
func advertisedURI(sf *serveFlags, addr *net.TCPAddr) string {
	if sf.advertiseURL != "" {
		return strings.TrimSuffix(sf.advertiseURL, "/")
	}
	host := sf.host
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
}

// backendDevice reports a backend's memory to /health and /metrics. Backends
// with device memory (cuda) say more through optional methods.
type backendDevice struct {
	be       backend.Backend
	name     string
	resident bool
}

func newBackendDevice(be backend.Backend, gpu int, log *slog.Logger) *backendDevice {
	d := &backendDevice{be: be, name: be.Name(), resident: true}
	if n, ok := be.(interface{ DeviceName() string }); ok {
		d.name = fmt.Sprintf("%s:%d (%s)", be.Name(), gpu, n.DeviceName())
	}
	// Whether the weights sit in device memory is settled at load time;
	// ask once rather than per health check.
	if r, ok := be.(interface{ Resident() (bool, error) }); ok {
		var err error
		if d.resident, err = r.Resident(); err != nil {
			log.Warn("cannot tell whether the model is resident", "error", err)
		}
	}
	return d
}

func (d *backendDevice) Name() string   { return d.name }
func (d *backendDevice) Resident() bool { return d.resident }

// VRAMBytesUsed is every device byte the backend holds (tensors and
// workspace); 0 for backends without device memory (cpu).
func (d *backendDevice) VRAMBytesUsed() int64 {
	if db, ok := d.be.(interface{ DeviceBytes() int64 }); ok {
		return db.DeviceBytes()
	}
	return 0
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
