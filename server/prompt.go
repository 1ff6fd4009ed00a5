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
// the prompt is known to be able to fit the context and a tokenizer slot is
// free. The check by size spares the work of tokenizing a prompt that must
// be refused; the slots bound the memory and CPU that prompts take before
// the engine's queue limits apply. A request waits for a slot no longer
// than its admission deadline, and not after its client has gone. field
// names the request field in errors.
func (s *Server) tokenize(ctx context.Context, field string, n int, encode func() ([]int32, error)) ([]int32, error) {
	if s.maxPromptBytes > 0 && n > s.maxPromptBytes {
		return nil, invalid(fmt.Sprintf("%s: %d bytes of text cannot fit the context of %d tokens (at most %d bytes)",
			field, n, s.cfg.Engine.CtxSize(), s.maxPromptBytes))
	}
	select {
	case s.tokenizers <- struct{}{}:
	default:
		wait := time.NewTimer(time.Until(arrivalOf(ctx).Add(s.cfg.AdmissionTimeout)))
		defer wait.Stop()
		select {
		case s.tokenizers <- struct{}{}:
		case <-wait.C:
			return nil, apiError{http.StatusServiceUnavailable, codeQueueFull,
				"the worker is busy tokenizing other prompts; retry later", true}
		case <-ctx.Done():
			return nil, apiError{statusClientClosed, codeCancelled, "the client went away", false}
		}
	}
	defer func() { <-s.tokenizers }()
	ids, err := encode()
	if err == nil && len(ids) > s.cfg.Engine.CtxSize() {
		return nil, invalid(fmt.Sprintf("%s: %d tokens do not fit the context of %d", field, len(ids), s.cfg.Engine.CtxSize()))
	}
	return ids, err
}
