package testutil

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGzipJSON(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(`{"a": [1, 2]}`))
	zw.Close()
	good := filepath.Join(dir, "good.json.gz")
	if err := os.WriteFile(good, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := string(ReadGzip(t, good)); got != `{"a": [1, 2]}` {
		t.Errorf("ReadGzip: %q", got)
	}
	var v struct{ A []int }
	ReadGzipJSON(t, good, &v)
	if len(v.A) != 2 || v.A[1] != 2 {
		t.Errorf("ReadGzipJSON: %+v", v)
	}

	plain := filepath.Join(dir, "plain.json.gz")
	if err := os.WriteFile(plain, []byte(`{"a": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{plain, filepath.Join(dir, "missing.json.gz")} {
		if err := DecodeGzipJSON(path, &v); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %v does not name the file", path, err)
		}
	}
}
