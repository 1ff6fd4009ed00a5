package engine

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestExpNeg compares expNeg with math.Exp over the sampler's range and at
// the edges. The tolerance is a few units in the last place plus the
// rounding of x·expScale, which grows with |x|.
func TestExpNeg(t *testing.T) {
	check := func(x float64) {
		t.Helper()
		got, want := expNeg(x), math.Exp(x)
		if tol := (1e-15 + 3e-16*-x) * want; want == 0 || math.Abs(got-want) > tol {
			t.Fatalf("expNeg(%v) = %v, math.Exp gives %v", x, got, want)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1_000_000 {
		check(-rng.Float64() * 40)
	}
	for range 10_000 {
		check(-rng.Float64() * 708)
	}
	for _, x := range []float64{0, math.Copysign(0, -1), -1e-300, -math.Ln2 / 4096, -math.Ln2 / 2048, -math.Ln2, -30, -700, -708} {
		check(x)
	}
	for _, x := range []float64{-708.5, -1e10, math.Inf(-1), math.NaN()} {
		if got := expNeg(x); got != 0 {
			t.Errorf("expNeg(%v) = %v, want 0", x, got)
		}
	}
}

func BenchmarkExp(b *testing.B) {
	xs := make([]float64, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range xs {
		xs[i] = -rng.Float64() * 30
	}
	for _, c := range []struct {
		name string
		exp  func(float64) float64
	}{{"expNeg", expNeg}, {"math.Exp", math.Exp}} {
		b.Run(c.name, func(b *testing.B) {
			sum := 0.0
			for b.Loop() {
				for _, x := range xs {
					sum += c.exp(x)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(xs)), "ns/exp")
		})
	}
}
