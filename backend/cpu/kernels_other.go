//go:build !amd64

package cpu

// simdKernels reports that this architecture has no assembly kernels.
func simdKernels() (kernels, bool) { return kernels{}, false }
