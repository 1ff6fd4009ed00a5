package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
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
		name:     "serve",
		summary:  "serve the model over HTTP (worker API and OpenAI-compatible API)",
		synopsis: "orcd serve [flags]",
		details: `Start-up: serve binds --host:--port first (a port in use fails at once),
answers GET /health with 503 {"status":"loading"} (and every other endpoint
with a retriable 503 LOADING error) while the model loads, then serves, says
"ok" on /health and POSTs the ready callback to --callback-url. SIGTERM,
SIGINT or POST /shutdown drain the jobs in flight and exit 0. See
docs/SERVING.md for the endpoints.`,
		examples: []string{
			"orcd serve # the default tiny model on 127.0.0.1:8080",
			"orcd serve --model gpt-oss-20b.gguf --device cuda --host 0.0.0.0 --port 8000",
			"orcd serve --model m.gguf --callback-url http://orchestrator:9000/ready --worker-id 0b5c6a42-1d9e-4f3a-9a51-2c4b8e7d6f10",
			"orcd serve --model m.gguf --log-format text --log-level debug",
		},
		setup: setupServe,
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
	kvBlocks        int
	kvBlockSize     int
	noPrefixCache   bool
	maxBodyBytes    int
	shutdownTimeout float64
	responsesStore  int
	limits          *limitFlags
}

func setupServe(fs *flag.FlagSet) func(*env) int {
	mf := addModelFlags(fs, "fast")
	lf := addLogFlags(fs, "json")
	sf := addServeFlags(fs)
	return func(e *env) int {
		if err := sf.resolve(fs); err != nil {
			return e.usageError("%v", err)
		}
		log := lf.logger(e.stderr)
		if err := serve(mf, sf, log, nil); err != nil {
			log.Error("serve failed", "error", err)
			return 1
		}
		return 0
	}
}

// addServeFlags defines serve's own flags on fs.
func addServeFlags(fs *flag.FlagSet) *serveFlags {
	sf := &serveFlags{}
	fs.StringVar(&sf.workerID, "worker-id", "", "worker `UUID` sent in the ready callback (default: a random UUID)")
	fs.StringVar(&sf.host, "host", "127.0.0.1", "`ADDRESS` to listen on (0.0.0.0 for all interfaces)")
	numVar(fs, &sf.port, "port", 8080, 0, 65535, "port to listen on (0: any free port)")
	fs.StringVar(&sf.callbackURL, "callback-url", "", "`URL` to POST {worker_id, model_ref, vram_bytes, uri} to once the model is loaded; failure exits non-zero")
	fs.StringVar(&sf.advertiseURL, "advertise-url", "", "base `URL` reported in the ready callback (default: http://HOST:PORT, with this machine's hostname when HOST is unspecified)")
	fs.StringVar(&sf.modelID, "model-id", "", "model `NAME` in the API (default: the model file's name without .gguf, or "+demo.Name+")")
	fs.StringVar(&sf.apiKey, "api-key", "", "bearer `TOKEN` required on every endpoint but /health (default: $ORCD_API_KEY; empty: no auth)")
	numVar(fs, &sf.maxTokensOut, "max-tokens-out", server.MaxTokensLimit, 1, server.MaxTokensLimit, "largest max_tokens a request may ask for")
	numVar(fs, &sf.timeoutSec, "inference-timeout-sec", 300, 0, maxSeconds, "per-request time limit in seconds, queueing included (0: none)")
	numVar(fs, &sf.maxActive, "max-active", 0, 0, noMax, "sequences run at once, batched into each step (0: 256 on cuda, 8 on cpu)")
	numVar(fs, &sf.maxQueue, "max-queue", 256, 0, noMax, "requests that may wait to run; more get 503")
	numVar(fs, &sf.kvBlocks, "kv-blocks", 0, 0, noMax, "KV cache blocks in the pool (0: room for --max-active sequences of --ctx-size tokens, within free VRAM or half the free RAM)")
	numVar(fs, &sf.kvBlockSize, "kv-block-size", 16, 1, 1024, "tokens per KV cache block")
	fs.BoolVar(&sf.noPrefixCache, "no-prefix-cache", false, "do not reuse the KV blocks of earlier prompts that start the same way")
	numVar(fs, &sf.maxBodyBytes, "max-body-bytes", 1<<20, 1, noMax, "largest request body in bytes")
	numVar(fs, &sf.shutdownTimeout, "shutdown-timeout-sec", 30, 0, maxSeconds, "on SIGTERM or POST /shutdown, how long running jobs may finish before they are cancelled")
	numVar(fs, &sf.responsesStore, "responses-store", 1000, 0, 1<<20, "/v1/responses responses kept in memory for previous_response_id, least recently used dropped first (0: none)")
	sf.limits = addLimitFlags(fs)
	return sf
}

// resolve checks what the flags' own checks cannot and fills in the
// defaults that depend on the environment.
func (sf *serveFlags) resolve(fs *flag.FlagSet) error {
	for _, u := range []struct{ name, value string }{{"callback-url", sf.callbackURL}, {"advertise-url", sf.advertiseURL}} {
		if u.value == "" {
			continue
		}
		if p, err := url.Parse(u.value); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("--%s %q is not an http:// or https:// URL", u.name, u.value)
		}
	}
	apiKeySet := false
	fs.Visit(func(f *flag.Flag) { apiKeySet = apiKeySet || f.Name == "api-key" })
	if !apiKeySet {
		sf.apiKey = os.Getenv("ORCD_API_KEY")
	}
	if sf.workerID == "" {
		sf.workerID = newUUID()
	}
	return nil
}

// serve binds the port, loads the model while /health answers "loading",
// then serves, sends the ready callback and serves until SIGTERM, SIGINT
// or POST /shutdown, then drains and frees everything. listening, when
// set, is called with the bound address before loading starts, and loading
// waits for it to return (tests hold the worker in its loading state so).
func serve(mf *modelFlags, sf *serveFlags, log *slog.Logger, listening func(addr string)) error {
	// Catch signals from the start, so a SIGTERM during loading or the
	// callback still ends in an orderly exit.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)

	// Bind before loading: a port in use fails at once, and the
	// orchestrator can watch /health while the weights upload.
	ln, err := net.Listen("tcp", net.JoinHostPort(sf.host, strconv.Itoa(sf.port)))
	if err != nil {
		return err
	}
	conns := sf.limits.listener(ln)
	var handler swapHandler
	handler.set(server.Loading())
	hs := sf.limits.httpServer(&handler, log)
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(conns) }()
	defer hs.Close()
	addr := ln.Addr().String()
	uri := advertisedURI(sf, ln.Addr().(*net.TCPAddr))
	log.Info("listening; loading the model", "addr", addr, "uri", uri, "worker_id", sf.workerID)

	type loadResult struct {
		lm  *loadedModel
		err error
	}
	loaded := make(chan loadResult, 1)
	go func() {
		if listening != nil {
			listening(addr)
		}
		lm, err := loadModel(mf, true, log, nil)
		loaded <- loadResult{lm, err}
	}()
	// Loading cannot be interrupted; on a signal or a server failure serve
	// returns at once, and the model is freed if its loading ever ends.
	abandon := func() {
		go func() {
			if r := <-loaded; r.lm != nil {
				r.lm.Close()
			}
		}()
	}
	var lm *loadedModel
	select {
	case r := <-loaded:
		if r.err != nil {
			return r.err
		}
		lm = r.lm
	case s := <-sig:
		log.Info("signal received while loading; exiting", "signal", s.String())
		abandon()
		return nil
	case err := <-serveErr:
		abandon()
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
	maxActive, blocks := sf.maxActive, sf.kvBlocks
	if maxActive == 0 {
		maxActive = defaultMaxActive(lm.Backend)
	}
	if blocks == 0 {
		budget, err := kvBudget(lm.Backend)
		if err != nil {
			return err
		}
		if blocks, err = kvBlocks(lm.Model.KVLayout(), budget, kvElemBytes(lm.Backend), sf.kvBlockSize, lm.CtxSize, cfg.MaxBatch, maxActive); err != nil {
			return err
		}
	}
	blockBytes := lm.Model.KVLayout().BlockBytes(sf.kvBlockSize, kvElemBytes(lm.Backend))
	log.Info("kv cache", "blocks", blocks, "block_tokens", sf.kvBlockSize, "gib", round3(float64(blockBytes)*float64(blocks)/(1<<30)),
		"bytes_per_token", blockBytes/int64(sf.kvBlockSize),
		"full_sequences", blocks/kvSeqBlocks(lm.Model.KVLayout(), sf.kvBlockSize, lm.CtxSize, cfg.MaxBatch))
	eng, err := engine.New(engine.Config{
		Model: lm.Model, Tokenizer: engineTokenizer{lm.Tokenizer},
		MaxActive: maxActive, MaxQueue: sf.maxQueue, CtxSize: lm.CtxSize,
		Timeout:      time.Duration(sf.timeoutSec * float64(time.Second)),
		PromptPrefix: prefix, Logger: log,
		KVBlocks: blocks, BlockSize: sf.kvBlockSize, NoPrefixCache: sf.noPrefixCache, BatchInvariant: mf.invariant,
	})
	if err != nil {
		return err
	}
	dev := newBackendDevice(lm.Backend, mf.gpu, log)
	shutdownRequested := make(chan struct{})
	scfg := server.Config{
		Engine: eng, Tokenizer: lm.Tokenizer, Device: dev, Template: lm.Template,
		Model: server.ModelInfo{
			ID: cmp.Or(sf.modelID, lm.Name), Arch: cfg.Arch, Chat: string(lm.Chat), QuantKind: lm.QuantKind,
			TokenizerKind: lm.Tokenizer.Kind(), VocabSize: cfg.VocabSize, ContextLength: lm.CtxSize,
		},
		MaxTokensOut: sf.maxTokensOut, APIKey: sf.apiKey, MaxBodyBytes: int64(sf.maxBodyBytes), ResponsesStore: sf.responsesStore,
		OnShutdown: func() { close(shutdownRequested) }, Logger: log,
	}
	sf.limits.apply(&scfg, conns)
	srv, err := server.New(scfg)
	if err != nil {
		return err
	}
	handler.set(srv.Handler())
	log.Info("ready", "uri", uri)

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

// swapHandler serves with one handler and then another: the loading
// handler until the server exists.
type swapHandler struct{ p atomic.Pointer[http.Handler] }

func (s *swapHandler) set(h http.Handler) { s.p.Store(&h) }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.p.Load()).ServeHTTP(w, r)
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
