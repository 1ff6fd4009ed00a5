package main

import (
	"errors"
	"fmt"

	"orcd/backend"
	"orcd/backend/cpu"
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

// openCUDA opens the CUDA backend on GPU gpu.
func openCUDA(gpu int) (backend.Backend, error) {
	return nil, errors.New("the cuda backend is not part of this build yet (use --device cpu)")
}
