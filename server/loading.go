package server

import "net/http"

// MaxTokensLimit is the largest max_tokens any request may ask for,
// whatever Config.MaxTokensOut says.
const MaxTokensLimit = maxTokensLimit

// errLoading answers requests that arrive before the model is loaded.
var errLoading = apiError{http.StatusServiceUnavailable, codeLoading, "the model is still loading; retry shortly", true}

// Loading returns the handler to serve while the model loads, before a
// Server exists: GET /health answers 503 {"status":"loading"}, the usual
// signal of a worker that is up but not ready, and every other request a
// retriable 503 LOADING error in its API's shape. The caller switches to
// Server.Handler once the model is loaded.
func Loading() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health" && r.Method == http.MethodGet:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "loading"})
		case isOpenAIPath(r.URL.Path):
			writeJSON(w, errLoading.status, openAIError{openAIErrorOf(errLoading)})
		default:
			writeError(w, errLoading)
		}
	})
}
