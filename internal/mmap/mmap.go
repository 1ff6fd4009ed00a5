// Package mmap maps model files read-only (gguf and safetensors share it).
package mmap

import (
	"fmt"
	"math"
	"os"
)

// File maps the regular file at path and returns its bytes and the function
// that releases them. An empty file maps to nil (mmap cannot map nothing).
func File(path string) ([]byte, func() error, error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size() == 0 {
		return nil, func() error { return nil }, nil
	}
	if st.Size() > math.MaxInt {
		return nil, nil, fmt.Errorf("%s: file too large to map (%d bytes)", path, st.Size())
	}
	data, unmap, err := mapFile(fd, int(st.Size()))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: map: %w", path, err)
	}
	return data, func() error { return unmap(data) }, nil
}

// Parse maps path and parses its bytes with parse, releasing the mapping
// when parse fails; the caller releases it after a success.
func Parse[T any](path string, parse func(name string, data []byte) (T, error)) (T, func() error, error) {
	var zero T
	data, unmap, err := File(path)
	if err != nil {
		return zero, nil, err
	}
	v, err := parse(path, data)
	if err != nil {
		unmap()
		return zero, nil, err
	}
	return v, unmap, nil
}
