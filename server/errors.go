package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"orcd/backend"
	"orcd/engine"
)

// Error codes of the worker API.
const (
	codeInvalidRequest       = "INVALID_REQUEST"        // 400 (413 for an oversized body)
	codeInsufficientVRAM     = "INSUFFICIENT_VRAM"      // 503, retriable
	codeVRAMOOM              = "VRAM_OOM"               // 500
	codeCUDAError            = "CUDA_ERROR"             // 500
	codeTimeout              = "INFERENCE_TIMEOUT"      // 504
	codeCancelled            = "CANCELLED"              // 499
	codeInternal             = "INTERNAL"               // 500
	codeQueueFull            = "QUEUE_FULL"             // 503, retriable
	codeShuttingDown         = "SHUTTING_DOWN"          // 503, retriable
	codeLoading              = "LOADING"                // 503, retriable: the model is not loaded yet
	codeUnauthorized         = "UNAUTHORIZED"           // 401
	codeForbidden            = "FORBIDDEN"              // 403
	codeNotFound             = "NOT_FOUND"              // 404
	codeMethodNotAllowed     = "METHOD_NOT_ALLOWED"     // 405
	codeRequestTimeout       = "REQUEST_TIMEOUT"        // 408
	codeUnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE" // 415
	statusClientClosed       = 499                      // nginx's "client closed request"
)

// apiError is an error with its HTTP status and worker API code.
type apiError struct {
	status    int
	code      string
	message   string
	retriable bool
}

func (e apiError) Error() string { return e.code + ": " + e.message }

func invalid(msg string) apiError {
	return apiError{http.StatusBadRequest, codeInvalidRequest, msg, false}
}

// errorBody is the worker API's error shape, {error: {code, message, retriable}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code      string `json:"code"`
	Message   string `json:"message"`
	Retriable bool   `json:"retriable"`
}

func writeError(w http.ResponseWriter, e apiError) {
	writeJSON(w, e.status, errorBody{errorDetail{e.code, e.message, e.retriable}})
}

// writeErrorAt writes e in the error shape of the API that path belongs
// to: OpenAI's under /v1/, the worker API's elsewhere.
func writeErrorAt(w http.ResponseWriter, path string, e apiError) {
	if isOpenAIPath(path) {
		writeJSON(w, e.status, openAIError{openAIErrorOf(e)})
		return
	}
	writeError(w, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// errorCoder is implemented by errors that know their worker API code
// (the loader's INSUFFICIENT_VRAM).
type errorCoder interface {
	ErrorCode() string
}

// classify maps an error from the engine to an API error.
func classify(err error) apiError {
	var ae apiError
	var coder errorCoder
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, engine.ErrQueueFull):
		return apiError{http.StatusServiceUnavailable, codeQueueFull, "the request queue is full; retry later", true}
	case errors.Is(err, engine.ErrShuttingDown):
		return apiError{http.StatusServiceUnavailable, codeShuttingDown, "the worker is shutting down", true}
	case errors.Is(err, engine.ErrDuplicateID):
		return invalid("job_id: already in flight")
	case errors.Is(err, engine.ErrEmptyPrompt):
		return invalid("prompt: encodes to no tokens")
	case errors.Is(err, engine.ErrPromptLength):
		return invalid("prompt: " + err.Error())
	case errors.Is(err, engine.ErrPanic):
		return apiError{http.StatusInternalServerError, codeInternal, "internal error; the server log has the details", false}
	case errors.Is(err, engine.ErrCacheAlloc):
		return apiError{http.StatusServiceUnavailable, codeInsufficientVRAM, err.Error(), true}
	case errors.Is(err, backend.ErrOutOfMemory):
		return apiError{http.StatusInternalServerError, codeVRAMOOM, err.Error(), false}
	case errors.Is(err, backend.ErrDevice):
		return apiError{http.StatusInternalServerError, codeCUDAError, err.Error(), false}
	case errors.As(err, &coder):
		switch coder.ErrorCode() {
		case codeInsufficientVRAM:
			return apiError{http.StatusServiceUnavailable, codeInsufficientVRAM, err.Error(), true}
		}
	}
	return apiError{http.StatusInternalServerError, codeInternal, err.Error(), false}
}

// jobError is runError, counting the jobs a panic in the engine ended.
func (s *Server) jobError(res engine.Result, err error) error {
	if errors.Is(err, engine.ErrPanic) {
		s.metrics.panics.Inc()
	}
	return runError(res, err)
}

// runError is the error a finished job reports: err from Run, or else the
// API error of a job that ended by cancel, timeout or shutdown (Run returns
// those with a nil error), or nil.
func runError(res engine.Result, err error) error {
	if err != nil {
		return err
	}
	switch res.StopReason {
	case engine.StopCancelled:
		return apiError{statusClientClosed, codeCancelled, "the job was cancelled", false}
	case engine.StopTimeout:
		return apiError{http.StatusGatewayTimeout, codeTimeout, "the job exceeded the inference timeout", false}
	case engine.StopShutdown:
		return apiError{http.StatusServiceUnavailable, codeShuttingDown, "the worker shut down before the job finished", true}
	}
	return nil
}

// requestInfo is what the Handler records about a request in its context.
type requestInfo struct {
	correlationID string
	arrival       time.Time
}

type requestKey struct{}

func correlationID(ctx context.Context) string {
	info, _ := ctx.Value(requestKey{}).(requestInfo)
	return info.correlationID
}

// arrivalOf is when the request arrived (now, for a context without one).
func arrivalOf(ctx context.Context) time.Time {
	if info, ok := ctx.Value(requestKey{}).(requestInfo); ok {
		return info.arrival
	}
	return time.Now()
}
