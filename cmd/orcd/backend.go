package main

import (
	"fmt"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/backend/cuda"
)

// openBackend returns the backend named by --device: "cpu", "cuda" (GPU
// number gpu), or "auto", which is cuda when it can be opened and cpu
// otherwise. Callers log the chosen backend's Name. The cpu backend's rows
// never depend on each other; invariant asks the same of cuda.
func openBackend(device string, gpu int, invariant bool) (backend.Backend, error) {
	switch device {
	case "cpu":
		return cpu.New(), nil
	case "cuda":
		return openCUDA(gpu, invariant)
	case "auto":
		if be, err := openCUDA(gpu, invariant); err == nil {
			return be, nil
		}
		return cpu.New(), nil
	}
	return nil, fmt.Errorf("unknown --device %q (want cpu, cuda or auto)", device)
}

// openCUDA opens the CUDA backend on GPU gpu. (cuda backend owner's hook)
func openCUDA(gpu int, invariant bool) (backend.Backend, error) {
	return cuda.New(cuda.Options{Device: gpu, BatchInvariant: invariant})
}
