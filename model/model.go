// Package model holds one adapter per architecture (gpt2.go, gptoss.go),
// written once against the backend interface.
package model

// Config is what the rest of orcd needs to know about a loaded model.
type Config struct {
	Arch          string // general.architecture, normalized ("gpt2", "gpt-oss")
	Name          string // general.name, if any
	VocabSize     int    // rows of the output projection
	ContextLength int    // training context from metadata
	Layers        int
	Hidden        int
}

// Model is a loaded architecture adapter. Its methods and those of its
// caches may be called from several goroutines; they run one at a time,
// because a backend serves one goroutine at a time.
type Model interface {
	Config() Config
	// NewCache allocates the KV cache of one sequence of up to ctx tokens.
	NewCache(ctx int) (Cache, error)
	// Forward runs tokens at the cache's current position and appends them
	// to it. It returns the logits of the last token (VocabSize values) or,
	// when all is true, of every token (len(tokens)·VocabSize values).
	// Running past the cache's capacity is an error and changes nothing.
	//
	// The returned slice may belong to the cache: it is valid until the
	// next Forward on the same cache, which may overwrite it, or until the
	// cache is freed. Callers that keep logits longer copy them.
	Forward(c Cache, tokens []int32, all bool) ([]float32, error)
	// Close frees the weights.
	Close() error
}

// Cache is the KV cache of one sequence.
type Cache interface {
	// Len is the number of tokens stored so far (the next position).
	Len() int
	// Cap is the maximum number of tokens the cache can hold.
	Cap() int
	// Reset forgets all tokens, keeping the memory.
	Reset()
	// Free releases the cache's memory.
	Free()
}
