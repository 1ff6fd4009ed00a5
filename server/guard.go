package server

import (
	"crypto/subtle"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// admit applies the checks every request passes before its endpoint runs,
// none of which reads the body: the Origin header (with CORS preflights
// answered here), the bearer token, the route (404, 405), the content type
// of a POST, and the body's size and read deadline. A refused request is
// answered in its API's error shape and admit returns false.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) bool {
	if origin := r.Header.Get("Origin"); origin != "" {
		if !s.originAllowed(origin) {
			return s.refuse(w, r, apiError{http.StatusForbidden, codeForbidden,
				fmt.Sprintf("origin %q is not allowed (see --allowed-origins)", clip(origin)), false})
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Expose-Headers", "X-Correlation-Id, "+ignoredFieldsHeader)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Correlation-Id")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return false
		}
	}
	if s.cfg.APIKey != "" && r.URL.Path != "/health" && !s.authorized(r) {
		return s.refuse(w, r, apiError{http.StatusUnauthorized, codeUnauthorized, "missing or invalid bearer token", false})
	}
	methods, ok := s.methodsOf(r.URL.Path)
	if !ok {
		return s.refuse(w, r, apiError{http.StatusNotFound, codeNotFound, fmt.Sprintf("%s: no such endpoint", clip(r.URL.Path)), false})
	}
	if !slices.Contains(methods, r.Method) && !(r.Method == http.MethodHead && slices.Contains(methods, http.MethodGet)) {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		return s.refuse(w, r, apiError{http.StatusMethodNotAllowed, codeMethodNotAllowed,
			fmt.Sprintf("%s: method %s not allowed; use %s", r.URL.Path, clip(r.Method), strings.Join(methods, " or ")), false})
	}
	if r.Method == http.MethodPost && !isJSON(r.Header.Get("Content-Type")) {
		// A browser sends text/plain and forms cross-origin without a
		// preflight; JSON it cannot send that way.
		return s.refuse(w, r, apiError{http.StatusUnsupportedMediaType, codeUnsupportedMediaType,
			fmt.Sprintf("Content-Type: %q is not application/json", clip(r.Header.Get("Content-Type"))), false})
	}
	if r.ContentLength != 0 {
		if r.ContentLength > s.cfg.MaxBodyBytes {
			return s.refuse(w, r, bodyTooLarge(s.cfg.MaxBodyBytes))
		}
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Now().Add(s.cfg.BodyReadTimeout))
		r.Body = &deadlineBody{ReadCloser: http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes), rc: rc}
	}
	return true
}

// refuse answers a request that admit turned away, and counts it. When the
// request has a body, nothing more is read: net/http would otherwise read
// what is left of it, before the answer (to keep the connection) and after
// it (closing the body), and a client that stalls would hold the
// connection open. The connection is closed after the answer instead.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, e apiError) bool {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
		http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	s.metrics.refused.WithLabelValues(e.code).Inc()
	writeErrorAt(w, r.URL.Path, e)
	return false
}

// authorized checks the bearer token; the scheme is case-insensitive
// (RFC 7235), the comparison constant-time.
func (s *Server) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimLeft(token, " ")), []byte(s.cfg.APIKey)) == 1
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.AllowedOrigins {
		if o == "*" || o == origin {
			return true
		}
	}
	return false
}

// isJSON reports whether a Content-Type is application/json (parameters
// such as charset allowed).
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// deadlineBody lifts the connection's read deadline once the body has been
// read. Left in place it would cut a long stream short: net/http's
// background read, which notices a client going away, fails at the
// deadline and cancels the request.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// generationEndpoints name the endpoints counted in orcd_requests_total.
var generationEndpoints = map[string]string{
	"/execute": "execute", "/v1/completions": "completions", "/v1/chat/completions": "chat",
	"/v1/responses": "responses",
}

// recoverPanic, deferred by the Handler, turns a panic in an endpoint into
// an INTERNAL error: a 500 body if nothing was sent yet, else, in an event
// stream, an error event (worker API) or an error chunk and [DONE]
// (OpenAI). The stack is logged once and the panic counted.
// http.ErrAbortHandler, net/http's way to abort a response, passes through.
func (s *Server) recoverPanic(w *statusWriter, r *http.Request) {
	v := recover()
	if v == nil {
		return
	}
	if v == http.ErrAbortHandler {
		panic(v)
	}
	cid := correlationID(r.Context())
	s.log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v),
		"stack", string(debug.Stack()), "correlation_id", cid)
	s.metrics.panics.Inc()
	if ep := generationEndpoints[r.URL.Path]; ep != "" {
		s.metrics.requests.WithLabelValues(ep, codeInternal).Inc()
	}
	e := apiError{http.StatusInternalServerError, codeInternal,
		"internal error; the server log has the details under correlation id " + cid, false}
	switch {
	case !w.started:
		writeErrorAt(w, r.URL.Path, e)
	case strings.HasPrefix(w.Header().Get("Content-Type"), "text/event-stream"):
		sse := &sseWriter{w: w, rc: http.NewResponseController(w)}
		if isOpenAIPath(r.URL.Path) {
			sse.event("", openAIError{openAIErrorOf(e)})
			sse.done()
		} else {
			sse.event("error", errorDetail{e.code, e.message, e.retriable})
		}
	}
	// Otherwise a plain response is under way and cannot carry the error;
	// the client sees it cut short.
}
