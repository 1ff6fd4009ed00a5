package engine

// LMLogits exports lmLogits to the engine_test package's benchmarks.
var LMLogits = lmLogits
