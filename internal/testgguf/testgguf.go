// Package testgguf lets tests turn a gguf.Writer into an open *gguf.File.
// It is apart from internal/testutil, which stays standard-library only so
// that the gguf package's own tests can use it too.
package testgguf

import (
	"path/filepath"
	"testing"

	"orcd/gguf"
)

// Open writes w with the tensor data to a file in the test's temporary
// directory, opens it, and closes it when the test ends. It fails the test
// on any error.
func Open(t testing.TB, w *gguf.Writer, data map[string][]byte) *gguf.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.gguf")
	if err := gguf.WriteFile(path, w, data); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
