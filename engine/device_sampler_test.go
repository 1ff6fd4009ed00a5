package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"orcd/backend"
	"orcd/backend/cuda"
)

// TestDeviceSamplerDistribution checks the cuda backend's sampler against
// this package's: for each setting, 30,000 draws on the device (1,000 rows
// a launch, each with its own counter) must fall only on the host
// sampler's candidates and follow its probabilities (chi-square at the
// 99.9th percentile, rare candidates pooled so every bin expects ≥ 5
// draws). Greedy must pick the host's token, and a row's token must not
// depend on its place in the batch. It runs where a CUDA device is.
func TestDeviceSamplerDistribution(t *testing.T) {
	if !cuda.Available() {
		t.Skip("no CUDA driver or device: cuda tests run on the GPU machine")
	}
	be, err := cuda.New(cuda.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	const rows, launches = 1000, 30
	history := []int32{3, 3, 7, 11, 200, 4000}
	ties := make([]float32, 3000)
	for i := range ties {
		ties[i] = -5
	}
	for _, i := range []int{10, 20, 30, 40, 50} {
		ties[i] = 2 // five equal best: top-k 3 takes the lowest ids
	}
	shapes := map[string][]float32{
		"lm":     lmLogits(50000, 3),
		"normal": normalLogits(20000, 4),
		"ties":   ties,
	}
	cases := []struct {
		shape string
		p     SamplingParams
	}{
		{"lm", DefaultSampling},
		{"lm", SamplingParams{Temperature: 1.5, TopP: 1, RepetitionPenalty: 1}},
		{"normal", SamplingParams{Temperature: 0.3, TopK: 40, TopP: 1, RepetitionPenalty: 1}},
		{"normal", SamplingParams{Temperature: 0.2, TopP: 0.9, RepetitionPenalty: 1}},
		{"normal", SamplingParams{Temperature: 0.25, TopP: 1, MinP: 0.05, RepetitionPenalty: 1}},
		{"lm", SamplingParams{Temperature: 0.8, TopK: 50, TopP: 0.8, MinP: 0.02, RepetitionPenalty: 1.3}},
		{"ties", SamplingParams{Temperature: 1, TopK: 3, TopP: 1, RepetitionPenalty: 1}},
		{"ties", SamplingParams{Temperature: 1, TopP: 0.5, RepetitionPenalty: 1}},
	}
	for _, tc := range cases {
		logits := shapes[tc.shape]
		vocab := len(logits)
		t.Run(fmt.Sprintf("%s/%+v", tc.shape, tc.p), func(t *testing.T) {
			want := map[int32]float64{}
			for _, c := range NewSampler(tc.p, 1).distribution(logits, history) {
				want[c.id] = c.prob
			}
			lt, err := be.NewF32(rows, vocab)
			if err != nil {
				t.Fatal(err)
			}
			defer be.Free(lt)
			batch := make([]float32, rows*vocab)
			for r := range rows {
				copy(batch[r*vocab:], logits)
			}
			params := make([]backend.SampleParams, rows)
			ids := make([]int32, rows)
			counts := map[int32]int{}
			for l := range launches {
				be.WriteF32(lt, batch) // the penalty changes the rows in place
				for r := range params {
					params[r] = backend.SampleParams{
						Temperature: float32(tc.p.Temperature), TopP: float32(tc.p.TopP), MinP: float32(tc.p.MinP),
						RepetitionPenalty: float32(tc.p.RepetitionPenalty), TopK: int32(tc.p.TopK),
						Seed: 42, Counter: uint64(l*rows + r), Penalized: distinct(history),
					}
				}
				if err := be.Sample(lt, params, ids); err != nil {
					t.Fatal(err)
				}
				for _, id := range ids {
					if _, ok := want[id]; !ok {
						t.Fatalf("drew token %d, which the host sampler gives no chance", id)
					}
					counts[id]++
				}
			}
			n := float64(rows * launches)
			chi, bins, pooledE, pooledO := 0.0, 0, 0.0, 0.0
			for id, p := range want {
				e, o := p*n, float64(counts[id])
				if e < 5 {
					pooledE += e
					pooledO += o
					continue
				}
				chi += (o - e) * (o - e) / e
				bins++
			}
			if pooledE >= 5 {
				chi += (pooledO - pooledE) * (pooledO - pooledE) / pooledE
				bins++
			}
			if bins > 1 {
				// The 99.9th percentile of chi-square (Wilson–Hilferty).
				df := float64(bins - 1)
				crit := df * math.Pow(1-2/(9*df)+3.09*math.Sqrt(2/(9*df)), 3)
				if chi > crit {
					t.Errorf("chi-square %.1f over %d bins exceeds %.1f", chi, bins, crit)
				}
			}
		})
	}

	// Greedy picks the host's token, and the same (seed, counter) gives the
	// same token in any row of any batch.
	logits := lmLogits(50000, 9)
	lt, err := be.NewF32(64, len(logits))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Free(lt)
	batch := make([]float32, 64*len(logits))
	for r := range 64 {
		copy(batch[r*len(logits):], logits)
	}
	be.WriteF32(lt, batch)
	greedy := []backend.SampleParams{{Temperature: 0, TopP: 1, RepetitionPenalty: 1}}
	id := make([]int32, 64)
	if err := be.Sample(lt, greedy, id); err != nil {
		t.Fatal(err)
	}
	if want := NewSampler(SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 1}, 1).Sample(logits, nil); id[0] != want {
		t.Errorf("greedy: device %d, host %d", id[0], want)
	}
	r := rand.New(rand.NewPCG(1, 1))
	params := make([]backend.SampleParams, 64)
	for i := range params {
		params[i] = backend.SampleParams{Temperature: 1.2, TopP: 0.95, RepetitionPenalty: 1, Seed: uint64(r.IntN(1000)), Counter: uint64(r.IntN(1000))}
	}
	all := make([]int32, 64)
	if err := be.Sample(lt, params, all); err != nil {
		t.Fatal(err)
	}
	for i := range params {
		alone := make([]int32, 1)
		if err := be.Sample(lt, params[i:i+1], alone); err != nil {
			t.Fatal(err)
		}
		if alone[0] != all[i] {
			t.Errorf("row %d: %d in a batch of 64, %d alone", i, all[i], alone[0])
		}
	}
}
