// Package testutil holds the test helpers that several packages' tests
// share, so that each exists once. It imports only the standard library, so
// that any package's tests can use it.
package testutil

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer that several goroutines may write (a
// logger shared by a server's handlers) while a test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ReadGzip returns the decompressed contents of the gzip file at path,
// failing the test if it cannot be read.
func ReadGzip(t testing.TB, path string) []byte {
	t.Helper()
	b, err := readGzip(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ReadGzipJSON decodes the gzipped JSON file at path (a fixture) into v,
// failing the test if it cannot be read or decoded.
func ReadGzipJSON(t testing.TB, path string, v any) {
	t.Helper()
	if err := DecodeGzipJSON(path, v); err != nil {
		t.Fatal(err)
	}
}

// DecodeGzipJSON decodes the gzipped JSON file at path into v. It is
// ReadGzipJSON for code that runs without a testing.TB, such as a fixture
// loaded once for a whole package.
func DecodeGzipJSON(path string, v any) error {
	b, err := readGzip(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// LogSoftmax returns log(e^(l_id/T) / Σ e^(l/T)) over logits, in float64
// with math.Exp, straight from the definition: the reference that tests
// check reported log probabilities against.
func LogSoftmax(logits []float32, id int32, temperature float64) float64 {
	hi := math.Inf(-1)
	for _, l := range logits {
		hi = max(hi, float64(l)/temperature)
	}
	sum := 0.0
	for _, l := range logits {
		sum += math.Exp(float64(l)/temperature - hi)
	}
	return float64(logits[id])/temperature - hi - math.Log(sum)
}
