//go:build unix

package mmap

import (
	"os"
	"syscall"
)

// mapFile maps size bytes of fd read-only and returns the mapping and the
// function that releases it.
func mapFile(fd *os.File, size int) ([]byte, func([]byte) error, error) {
	data, err := syscall.Mmap(int(fd.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return data, syscall.Munmap, nil
}
