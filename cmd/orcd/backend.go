package main

import (
	"fmt"

	"orcd/backend"
	"orcd/backend/cpu"
	"orcd/backend/cuda"
)

// openBackend returns the backend named by --device: "cpu", "cuda" (GPU
// number gpu), or "auto", which is cuda when it can be opened and cpu
// otherwise. Callers log the chosen backend's Name.
func openBackend(device string, gpu int) (backend.Backend, error) {
	switch device {
	case "cpu":
		return cpu.New(), nil
	case "cuda":
		return openCUDA(gpu)
	case "auto":
		if be, err := openCUDA(gpu); err == nil {
			return be, nil
		}
		return cpu.New(), nil
	}
	return nil, fmt.Errorf("unknown --device %q (want cpu, cuda or auto)", device)
}

// openCUDA opens the CUDA backend on GPU gpu. (cuda backend owner's hook)
func openCUDA(gpu int) (backend.Backend, error) {
	return cuda.New(cuda.Options{Device: gpu})
}
