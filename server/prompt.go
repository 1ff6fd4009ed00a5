package server

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// maxTokenByter is the optional MaxTokenBytes of a Tokenizer: the most
// bytes of text one token of Encode stands for.
type maxTokenByter interface {
	MaxTokenBytes() int
}

// tokenize runs encode, which tokenizes a prompt of n bytes of text, once
// the prompt is known to be able to fit the context: the check by size
// spares the work of tokenizing a prompt that must be refused. field names
// the request field in errors.
func (s *Server) tokenize(field string, n int, encode func() ([]int32, error)) ([]int32, error) {
	ctx := s.cfg.Engine.CtxSize()
	if s.maxPromptBytes > 0 && n > s.maxPromptBytes {
		return nil, invalid(fmt.Sprintf("%s: %d bytes of text cannot fit the context of %d tokens (at most %d bytes)",
			field, n, ctx, s.maxPromptBytes))
	}
	ids, err := encode()
	if err == nil && len(ids) > ctx {
		return nil, invalid(fmt.Sprintf("%s: %d tokens do not fit the context of %d", field, len(ids), ctx))
	}
	return ids, err
}

// admissionSlot waits for one of the AdmissionConcurrency slots in which a
// generation request, its body read, is decoded, checked, rendered and
// tokenized. The slots bound the memory and CPU that requests take before
// the engine's queue limits apply: a large body costs several times its
// size while it is decoded and tokenized, but only its size while it
// waits. The wait ends at the request's admission deadline, or when its
// client goes away. release gives the slot back.
func (s *Server) admissionSlot(ctx context.Context) (release func(), err error) {
	select {
	case s.admitting <- struct{}{}:
	default:
		wait := time.NewTimer(time.Until(arrivalOf(ctx).Add(s.cfg.AdmissionTimeout)))
		defer wait.Stop()
		select {
		case s.admitting <- struct{}{}:
		case <-wait.C:
			return nil, apiError{http.StatusServiceUnavailable, codeQueueFull,
				"the worker is busy admitting other requests; retry later", true}
		case <-ctx.Done():
			return nil, apiError{statusClientClosed, codeCancelled, "the client went away", false}
		}
	}
	return func() { <-s.admitting }, nil
}
