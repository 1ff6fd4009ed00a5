// Package server is orcd's HTTP front end: the worker API an orchestrator
// drives (/execute with server-sent events, /cancel, /health, /shutdown,
// /metrics) and an OpenAI-compatible API (/v1/models, /v1/completions,
// /v1/chat/completions). It knows requests and responses, not tensors: all
// generation goes through an engine.Engine.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"orcd/chat"
	"orcd/constrain"
	"orcd/engine"
	"orcd/harmony"
)

// ModelInfo describes the served model for /health and /v1/models.
type ModelInfo struct {
	ID   string // name clients use in the "model" field
	Arch string // the architecture, for information
	// Chat is the model's chat format: ChatHarmony, ChatTemplate (with
	// Config.Template) or anything else for plain "User:"/"Assistant:" text.
	Chat          string
	QuantKind     string // weight format, e.g. "MXFP4"
	TokenizerKind string // "gguf-bpe" or "hf-json"
	VocabSize     int
	ContextLength int // the context each sequence gets
}

// Device reports the memory and placement of the loaded model. The loader
// provides it, so the server needs no backend types.
type Device interface {
	// Name is the device, e.g. "cpu" or "cuda:0 (NVIDIA H100)".
	Name() string
	// VRAMBytesUsed is the device memory held (0 on the CPU).
	VRAMBytesUsed() int64
	// Resident reports whether the weights are fully on the device.
	Resident() bool
}

// Tokenizer is what the chat endpoints need beyond the engine: encoding of
// text and the ids of special tokens (harmony prompts insert them by id).
// If it also has IsSpecial(id int32) bool, special tokens outside the
// harmony set are kept out of chat output.
type Tokenizer = harmony.Encoder

// specialChecker is the optional IsSpecial of a Tokenizer.
type specialChecker interface {
	IsSpecial(id int32) bool
}

// The chat formats of ModelInfo.Chat (model.ChatFormat's values).
const (
	ChatHarmony  = "harmony"
	ChatTemplate = "template"
)

// specialEncoder is the tokenizer method chat templates need: their
// rendering names special tokens as text.
type specialEncoder interface {
	EncodeSpecial(text string) []int32
}

// Config configures a Server.
type Config struct {
	Engine    *engine.Engine
	Tokenizer Tokenizer
	Model     ModelInfo
	// Template renders chat prompts when Model.Chat is ChatTemplate.
	Template *chat.Template
	Device   Device
	// MaxTokensOut caps max_tokens of every request (default 2048).
	MaxTokensOut int
	// DefaultMaxTokens applies when a request gives none (default 256,
	// capped by MaxTokensOut).
	DefaultMaxTokens int
	// APIKey, when set, is required as a bearer token everywhere except
	// /health; without it, /shutdown is refused to non-loopback peers.
	APIKey string
	// MaxBodyBytes limits request bodies (default 1 MiB).
	MaxBodyBytes int64
	// BodyReadTimeout bounds the time a request body takes to arrive once
	// the headers are in (default 10 s); the http.Server's
	// ReadHeaderTimeout bounds the headers.
	BodyReadTimeout time.Duration
	// AdmissionTimeout bounds the time from a request's arrival to its
	// entry in the engine's queue: reading the body and waiting for an
	// admission slot (default 30 s). Past it the request gets a retriable
	// 503 QUEUE_FULL.
	AdmissionTimeout time.Duration
	// AdmissionConcurrency is the number of generation requests decoded,
	// checked, rendered and tokenized at once (default 1); see
	// admissionSlot.
	AdmissionConcurrency int
	// AllowedOrigins are the browser origins ("https://app.example") whose
	// requests are served, with CORS headers; "*" allows any. A request
	// with another Origin header gets 403. Empty: no browser origin.
	AllowedOrigins []string
	// Connections, when set, is the connection limiter in front of the
	// server; /metrics reports it.
	Connections *ConnLimiter
	// ResponsesStore is the number of /v1/responses responses kept for
	// previous_response_id and GET /v1/responses/{id}, the least recently
	// used dropped first (0: none are kept).
	ResponsesStore int
	// OnShutdown is called once when POST /shutdown arrives.
	OnShutdown func()
	Logger     *slog.Logger
	// Now is the clock (default time.Now); harmony prompts carry its date.
	Now func() time.Time
}

// Server serves one engine over HTTP.
type Server struct {
	cfg      Config
	log      *slog.Logger
	started  time.Time
	draining atomic.Bool
	shutdown sync.Once
	metrics  *metrics
	mux      *http.ServeMux
	// routes maps each path to the methods it serves, for 404 and 405; a
	// path pattern's wildcard segments are written "{}".
	routes map[string][]string
	// specials maps harmony special-token ids to their names (gpt-oss only).
	specials map[int32]string
	// maxPromptBytes is the most prompt text that can fit the context
	// (0: unknown, no check); see tokenize.
	maxPromptBytes int
	// admitting holds one token per request in admission (see
	// admissionSlot).
	admitting chan struct{}
	// mootLogged holds the ignored request fields already logged.
	mootLogged sync.Map
	responses  *responseStore
	// vocab is the vocabulary prepared for structured output, built at
	// the first request that needs it.
	vocabOnce sync.Once
	vocab     *constrain.Vocab
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.MaxTokensOut <= 0 {
		cfg.MaxTokensOut = 2048
	}
	if cfg.DefaultMaxTokens <= 0 {
		cfg.DefaultMaxTokens = 256
	}
	cfg.DefaultMaxTokens = min(cfg.DefaultMaxTokens, cfg.MaxTokensOut)
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.BodyReadTimeout <= 0 {
		cfg.BodyReadTimeout = 10 * time.Second
	}
	if cfg.AdmissionTimeout <= 0 {
		cfg.AdmissionTimeout = 30 * time.Second
	}
	if cfg.AdmissionConcurrency <= 0 {
		// One slot keeps 16 maximal prompts under 220 MB with the default
		// model (docs/RELIABILITY.md); a 2 KiB prompt is admitted in
		// 0.15-0.3 ms (BenchmarkAdmission).
		cfg.AdmissionConcurrency = 1
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, started: cfg.Now(), mux: http.NewServeMux(), routes: map[string][]string{},
		admitting: make(chan struct{}, cfg.AdmissionConcurrency), responses: newResponseStore(cfg.ResponsesStore, responseStoreBytes)}
	if cfg.Model.Chat == ChatTemplate {
		if _, ok := cfg.Tokenizer.(specialEncoder); !ok || cfg.Template == nil {
			return nil, errors.New("server: a chat template needs Config.Template and a tokenizer with EncodeSpecial")
		}
	}
	if cfg.Model.Chat == ChatHarmony {
		s.specials = map[int32]string{}
		for _, name := range harmony.SpecialTokens {
			id, ok := cfg.Tokenizer.TokenID(name)
			if !ok {
				return nil, &missingTokenError{name}
			}
			s.specials[id] = name
		}
	}
	if t, ok := cfg.Tokenizer.(maxTokenByter); ok {
		s.maxPromptBytes = cfg.Engine.CtxSize() * t.MaxTokenBytes()
	}
	s.metrics = newMetrics(cfg.Engine, cfg.Device, cfg.Connections)

	s.handle("GET /health", s.handleHealth)
	s.handle("GET /metrics", s.metrics.handler().ServeHTTP)
	s.handle("POST /execute", s.handleExecute)
	s.handle("POST /cancel", s.handleCancel)
	s.handle("POST /shutdown", s.handleShutdown)
	s.handle("GET /v1/models", s.handleModels)
	s.handle("POST /v1/completions", s.handleCompletions)
	s.handle("POST /v1/chat/completions", s.handleChat)
	s.handle("GET /v1/models/{id...}", s.handleModel)
	s.handle("POST /v1/responses", s.handleResponses)
	s.handle("GET /v1/responses/{id}", s.handleGetResponse)
	s.handle("DELETE /v1/responses/{id}", s.handleDeleteResponse)
	return s, nil
}

// handle registers a "METHOD /path" route; the path may end in a
// wildcard that takes the rest of it ("{id...}").
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	if i := strings.LastIndex(path, "/{"); i >= 0 {
		path = path[:i] + wildcard
	}
	s.routes[path] = append(s.routes[path], method)
	s.mux.HandleFunc(pattern, h)
}

// wildcard ends the routes key of a path pattern with a wildcard.
const wildcard = "/{...}"

// methodsOf returns the methods served at path.
func (s *Server) methodsOf(path string) ([]string, bool) {
	if m, ok := s.routes[path]; ok {
		return m, true
	}
	for i := strings.LastIndex(path, "/"); i > 0; i = strings.LastIndex(path[:i], "/") {
		if i+1 == len(path) {
			continue // an empty wildcard matches nothing
		}
		if m, ok := s.routes[path[:i]+wildcard]; ok {
			return m, true
		}
	}
	return nil, false
}

type missingTokenError struct{ name string }

func (e *missingTokenError) Error() string {
	return "server: the tokenizer has no " + e.name + " token, needed for harmony chat"
}

// Handler is the HTTP handler: correlation ids, the access log, panic
// recovery, the checks of admit (origin, auth, route, content type, body
// limits), then the endpoint.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cid := r.Header.Get("X-Correlation-Id")
		if cid == "" {
			cid = newID("")
		}
		w.Header().Set("X-Correlation-Id", cid)
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			attrs := []any{"method", r.Method, "path", r.URL.Path, "status", sw.status,
				"duration_ms", time.Since(start).Milliseconds(), "correlation_id", cid}
			if sw.status >= 400 {
				code, msg := errorOf(sw.errBody)
				attrs = append(attrs, "error_code", code, "error", msg)
			}
			s.log.Log(r.Context(), accessLevel(r, sw.status), "http request", attrs...)
		}()
		r = r.WithContext(context.WithValue(r.Context(), requestKey{}, requestInfo{cid, start}))
		defer s.recoverPanic(sw, r)
		if s.admit(sw, r) {
			s.mux.ServeHTTP(sw, r)
		}
	})
}

func isOpenAIPath(p string) bool { return strings.HasPrefix(p, "/v1/") }

// StartDraining makes the server refuse new generation requests with 503
// while the ones in flight finish. SIGTERM and POST /shutdown both lead here.
func (s *Server) StartDraining() { s.draining.Store(true) }

// Draining reports whether StartDraining was called.
func (s *Server) Draining() bool { return s.draining.Load() }

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) {
	// Without a key, anyone who can reach the port could stop the worker;
	// only a local operator may.
	if s.cfg.APIKey == "" && !peerIP(r.RemoteAddr).IsLoopback() {
		writeError(w, apiError{http.StatusForbidden, codeForbidden, "shutdown: allowed only from loopback unless --api-key is set", false})
		return
	}
	s.StartDraining()
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "draining"})
	s.shutdown.Do(func() {
		if s.cfg.OnShutdown != nil {
			go s.cfg.OnShutdown()
		}
	})
}

// healthResponse is the body of GET /health.
type healthResponse struct {
	Status        string  `json:"status"`
	Model         string  `json:"model"`
	Resident      bool    `json:"resident"`
	QuantKind     string  `json:"quant_kind"`
	VRAMBytesUsed int64   `json:"vram_bytes_used"`
	TokenizerKind string  `json:"tokenizer_kind"`
	VocabSize     int     `json:"vocab_size"`
	ContextLength int     `json:"context_length"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Device        string  `json:"device"`
	Active        int     `json:"active"`
	QueueDepth    int     `json:"queue_depth"`
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	m := s.cfg.Model
	h := healthResponse{
		Status: "ok", Model: m.ID, QuantKind: m.QuantKind, TokenizerKind: m.TokenizerKind,
		VocabSize: m.VocabSize, ContextLength: m.ContextLength,
		UptimeSeconds: s.cfg.Now().Sub(s.started).Seconds(),
		Active:        s.cfg.Engine.Active(), QueueDepth: s.cfg.Engine.QueueDepth(),
	}
	if s.Draining() {
		h.Status = "draining"
	}
	if d := s.cfg.Device; d != nil {
		h.Device, h.VRAMBytesUsed, h.Resident = d.Name(), d.VRAMBytesUsed(), d.Resident()
	}
	writeJSON(w, http.StatusOK, h)
}

// statusWriter records the status code and the start of an error's body
// for the access log, and whether the response has begun for panic
// recovery, and passes flushes and deadlines through
// (http.ResponseController unwraps it).
type statusWriter struct {
	http.ResponseWriter
	status  int
	started bool
	errBody []byte
}

// maxLoggedErrorBody is how much of an error response the access log reads.
const maxLoggedErrorBody = 2048

func (w *statusWriter) WriteHeader(code int) {
	if !w.started {
		w.status, w.started = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.started = true
	if w.status >= 400 {
		w.errBody = append(w.errBody, b[:min(len(b), maxLoggedErrorBody-len(w.errBody))]...)
	}
	return w.ResponseWriter.Write(b)
}

// errorOf returns the code and message of an error response's body: either
// API's {"error":{"code","message"}}, or, for a plain-text body (the
// router's 404 and 405), no code and the text.
func errorOf(body []byte) (code, message string) {
	var e struct {
		Error struct {
			Code    *string `json:"code"`
			Message string  `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
		return "", strings.TrimSpace(string(body))
	}
	if e.Error.Code != nil {
		code = *e.Error.Code
	}
	return code, e.Error.Message
}

// accessLevel is the level of a request's access log line: health checks
// and metric scrapes that succeed are debug (they come every few seconds),
// server errors warn.
func accessLevel(r *http.Request, status int) slog.Level {
	switch {
	case status >= 500:
		return slog.LevelWarn
	case status < 400 && (r.URL.Path == "/health" || r.URL.Path == "/metrics"):
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// newID returns prefix followed by 24 random hex digits.
func newID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
