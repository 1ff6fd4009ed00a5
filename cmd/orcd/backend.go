package main

import (
	"fmt"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/backend/cuda"
)

// openBackend returns the backend named by --device: "cpu", "cuda" (GPU
// number --gpu-device), or "auto", which is cuda when it can be opened and
// cpu otherwise. Callers log the chosen backend's Name. The cpu backend's
// rows never depend on each other; --batch-invariant asks the same of cuda.
// --threads and --cpu-precision configure the cpu backend.
func openBackend(mf *modelFlags) (backend.Backend, error) {
	opts := cpu.Options{Threads: mf.threads, Precision: cpu.Exact}
	if mf.precision == "fast" {
		opts.Precision = cpu.Fast
	}
	switch mf.device {
	case "cpu":
		return cpu.NewWithOptions(opts), nil
	case "cuda":
		return openCUDA(mf.gpu, mf.invariant)
	case "auto":
		if be, err := openCUDA(mf.gpu, mf.invariant); err == nil {
			return be, nil
		}
		return cpu.NewWithOptions(opts), nil
	}
	return nil, fmt.Errorf("unknown --device %q (want cpu, cuda or auto)", mf.device)
}

// openCUDA opens the CUDA backend on GPU gpu. (cuda backend owner's hook)
func openCUDA(gpu int, invariant bool) (backend.Backend, error) {
	return cuda.New(cuda.Options{Device: gpu, BatchInvariant: invariant})
}
