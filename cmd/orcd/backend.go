package main

import (
	"fmt"
	"log/slog"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/backend/cuda"
)

// openBackend returns the backend named by --device: "cpu", "cuda" (GPU
// number --gpu-device), or "auto", which is cuda when it can be opened and
// cpu otherwise. Callers log the chosen backend's Name. The cpu backend's
// rows never depend on each other; --batch-invariant asks the same of cuda.
// --threads and --cpu-precision configure the cpu backend. The cuda
// backend reports long work (compiling its kernels on a first start) to log.
func openBackend(mf *modelFlags, log *slog.Logger) (backend.Backend, error) {
	opts := cpu.Options{Threads: mf.threads, Precision: cpu.Exact}
	if mf.precision == "fast" {
		opts.Precision = cpu.Fast
	}
	switch mf.device {
	case "cpu":
		return cpu.NewWithOptions(opts), nil
	case "cuda":
		return openCUDA(mf.gpu, mf.invariant, log)
	case "auto":
		if be, err := openCUDA(mf.gpu, mf.invariant, log); err == nil {
			return be, nil
		}
		return cpu.NewWithOptions(opts), nil
	}
	return nil, fmt.Errorf("unknown --device %q (want cpu, cuda or auto)", mf.device)
}

// openCUDA opens the CUDA backend on GPU gpu. (cuda backend owner's hook)
func openCUDA(gpu int, invariant bool, log *slog.Logger) (backend.Backend, error) {
	return cuda.New(cuda.Options{Device: gpu, BatchInvariant: invariant, Log: log})
}
