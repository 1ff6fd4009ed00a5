package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// logitsOf returns ln(p): softmax of it at temperature 1 is exactly p
// (up to rounding), so expected probabilities can be worked by hand.
func logitsOf(p ...float64) []float32 {
	out := make([]float32, len(p))
	for i, v := range p {
		out[i] = float32(math.Log(v))
	}
	return out
}

func probsOf(t *testing.T, p SamplingParams, logits []float32, history []int32) map[int32]float64 {
	t.Helper()
	s := NewSampler(p, 1)
	got := map[int32]float64{}
	for _, c := range s.distribution(logits, history) {
		got[c.id] = c.prob
	}
	return got
}

func wantProbs(t *testing.T, name string, got map[int32]float64, want map[int32]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d candidates %v, want %v", name, len(got), got, want)
		return
	}
	for id, w := range want {
		if g, ok := got[id]; !ok || math.Abs(g-w) > 1e-6 {
			t.Errorf("%s: P(%d) = %v, want %v (all: %v)", name, id, g, w, got)
		}
	}
}

func TestSamplerFilterProbabilities(t *testing.T) {
	base := logitsOf(0.4, 0.3, 0.2, 0.1)
	with := func(f func(*SamplingParams)) SamplingParams {
		p := DefaultSampling
		f(&p)
		return p
	}
	cases := []struct {
		name   string
		params SamplingParams
		want   map[int32]float64
	}{
		{"plain", DefaultSampling, map[int32]float64{0: .4, 1: .3, 2: .2, 3: .1}},
		{"top-k 2", with(func(p *SamplingParams) { p.TopK = 2 }), map[int32]float64{0: .4 / .7, 1: .3 / .7}},
		{"top-k above vocab", with(func(p *SamplingParams) { p.TopK = 10 }), map[int32]float64{0: .4, 1: .3, 2: .2, 3: .1}},
		// cumulative .4, .7, .9: the first run reaching .75 has three tokens.
		{"top-p .75", with(func(p *SamplingParams) { p.TopP = .75 }), map[int32]float64{0: .4 / .9, 1: .3 / .9, 2: .2 / .9}},
		{"top-p .65", with(func(p *SamplingParams) { p.TopP = .65 }), map[int32]float64{0: .4 / .7, 1: .3 / .7}},
		{"top-p 0 keeps one", with(func(p *SamplingParams) { p.TopP = 0 }), map[int32]float64{0: 1}},
		// min-p .3: tokens below .3*.4 = .12 go.
		{"min-p .3", with(func(p *SamplingParams) { p.MinP = .3 }), map[int32]float64{0: .4 / .9, 1: .3 / .9, 2: .2 / .9}},
		// Temperature 2 takes the square root of each probability.
		{"temperature 2", with(func(p *SamplingParams) { p.Temperature = 2 }), func() map[int32]float64 {
			r := []float64{math.Sqrt(.4), math.Sqrt(.3), math.Sqrt(.2), math.Sqrt(.1)}
			sum := r[0] + r[1] + r[2] + r[3]
			return map[int32]float64{0: r[0] / sum, 1: r[1] / sum, 2: r[2] / sum, 3: r[3] / sum}
		}()},
		// Order: top-k 3 → {.4,.3,.2}/.9 = {.444,.333,.222}; top-p .7 → the
		// first two (cumulative .778) → {.571,.429}; min-p .8 keeps only
		// tokens ≥ .457 → token 0 alone. Another order would differ.
		{"top-k, top-p, min-p in order", with(func(p *SamplingParams) { p.TopK = 3; p.TopP = .7; p.MinP = .8 }), map[int32]float64{0: 1}},
		{"greedy", with(func(p *SamplingParams) { p.Temperature = 0 }), map[int32]float64{0: 1}},
	}
	for _, c := range cases {
		wantProbs(t, c.name, probsOf(t, c.params, base, nil), c.want)
	}
}

func TestSamplerRepetitionPenaltyBeforeTemperature(t *testing.T) {
	logits := []float32{2, 1, -1}
	p := DefaultSampling
	p.RepetitionPenalty = 2
	p.Temperature = 0.5
	// Penalty on tokens 0 and 2 (0 twice counts once): logits become
	// {1, 1, -2}; temperature .5 doubles them to {2, 2, -4}.
	e2, e4 := math.Exp(2), math.Exp(-4)
	sum := 2*e2 + e4
	got := probsOf(t, p, logits, []int32{0, 2, 0})
	wantProbs(t, "penalty", got, map[int32]float64{0: e2 / sum, 1: e2 / sum, 2: e4 / sum})

	p.Temperature = 0
	p.RepetitionPenalty = 2.5 // token 0: 2/2.5 = .8 < 1, so greedy picks token 1
	if id := NewSampler(p, 1).Sample(logits, []int32{0}); id != 1 {
		t.Errorf("greedy after penalty picked %d, want 1", id)
	}
}

// chiSquare draws n tokens and returns the statistic against want; tokens
// outside want fail the test.
func chiSquare(t *testing.T, s *Sampler, logits []float32, want map[int32]float64, n int) float64 {
	t.Helper()
	counts := map[int32]int{}
	for range n {
		id := s.Sample(logits, nil)
		if _, ok := want[id]; !ok {
			t.Fatalf("drew token %d, which the filters exclude", id)
		}
		counts[id]++
	}
	chi := 0.0
	for id, p := range want {
		e := p * float64(n)
		d := float64(counts[id]) - e
		chi += d * d / e
	}
	return chi
}

func TestSamplerDrawsFollowDistribution(t *testing.T) {
	logits := logitsOf(0.4, 0.3, 0.2, 0.1)
	// 99.9th percentiles of chi-square: 3 degrees of freedom 16.27, 1 degree 10.83.
	chi := chiSquare(t, NewSampler(DefaultSampling, 42), logits, map[int32]float64{0: .4, 1: .3, 2: .2, 3: .1}, 40000)
	if chi > 16.27 {
		t.Errorf("chi-square %v over 4 tokens exceeds 16.27", chi)
	}
	p := DefaultSampling
	p.TopK = 2
	chi = chiSquare(t, NewSampler(p, 7), logits, map[int32]float64{0: .4 / .7, 1: .3 / .7}, 40000)
	if chi > 10.83 {
		t.Errorf("chi-square %v after top-k 2 exceeds 10.83", chi)
	}
}

func TestSamplerSeedDeterminism(t *testing.T) {
	logits := logitsOf(0.25, 0.25, 0.25, 0.25)
	draw := func(seed uint64) []int32 {
		s := NewSampler(DefaultSampling, seed)
		var out []int32
		for range 64 {
			out = append(out, s.Sample(logits, nil))
		}
		return out
	}
	if a, b := draw(5), draw(5); !slices.Equal(a, b) {
		t.Errorf("same seed gave %v and %v", a, b)
	}
	if a, b := draw(5), draw(6); slices.Equal(a, b) {
		t.Errorf("seeds 5 and 6 gave the same 64 tokens")
	}
}

// TestTopPMatchesFullSort checks the pre-sort pruning in topP against the
// definition applied to a fully sorted list.
func TestTopPMatchesFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		n := 1 + rng.IntN(3000)
		cands := make([]candidate, n)
		for i := range cands {
			cands[i] = candidate{id: int32(i), logit: rng.NormFloat64() * 3}
		}
		softmax(cands)
		p := rng.Float64()
		want := slices.Clone(cands)
		slices.SortFunc(want, moreLikely)
		acc, k := 0.0, 0
		for k < len(want) {
			acc += want[k].prob
			k++
			if acc >= p {
				break
			}
		}
		got := topP(slices.Clone(cands), p)
		if !slices.Equal(got, want[:k]) {
			t.Fatalf("trial %d (n=%d p=%v): nucleus of %d, want %d", trial, n, p, len(got), k)
		}
		kk := 1 + rng.IntN(n)
		if got := topK(slices.Clone(cands), kk); !slices.Equal(got, want[:kk]) {
			t.Fatalf("trial %d: top-%d differs from the sorted prefix", trial, kk)
		}
	}
}

// TestSamplerTopKBeyondVocab checks that a top_k larger than the vocabulary
// keeps every token, even a k for which 2k+256 overflows an int (2^63-127
// wraps it to 2: the probe that found this panicked with a slice bound).
func TestSamplerTopKBeyondVocab(t *testing.T) {
	logits := normalLogits(1000, 5)
	all := probsOf(t, SamplingParams{Temperature: 1, TopP: 1, RepetitionPenalty: 1}, logits, nil)
	for _, k := range []int{1000, 1001, math.MaxInt / 2, math.MaxInt/2 + 1, math.MaxInt - 126, math.MaxInt} {
		p := SamplingParams{Temperature: 1, TopK: k, TopP: 1, RepetitionPenalty: 1}
		wantProbs(t, fmt.Sprintf("top-k %d", k), probsOf(t, p, logits, nil), all)
		NewSampler(p, 1).Sample(logits, nil)
	}
}

// TestSamplerIgnoresNaN: NaN logits (a model's numerical failure) are never
// drawn, whatever the filters; with top-k a NaN once made every
// probability NaN and left nothing to draw from.
func TestSamplerIgnoresNaN(t *testing.T) {
	logits := make([]float32, 300)
	for i := range logits {
		logits[i] = float32(math.Inf(-1))
	}
	nan := float32(math.NaN())
	logits[3], logits[9], logits[20], logits[200] = nan, 2, 1, nan
	for _, p := range []SamplingParams{
		{Temperature: 0.7, TopK: 40, TopP: 0.9, MinP: 0.05, RepetitionPenalty: 1.1},
		{Temperature: 0.7, TopK: 1, TopP: 1, RepetitionPenalty: 1},
		{Temperature: 1, TopK: 2, TopP: 1, RepetitionPenalty: 1},
		{Temperature: 1, TopP: 0.5, RepetitionPenalty: 1},
		{Temperature: 1, TopP: 1, MinP: 0.1, RepetitionPenalty: 1},
		DefaultSampling,
	} {
		s := NewSampler(p, 1)
		for range 50 {
			if id := s.Sample(logits, []int32{3, 9}); id != 9 && id != 20 {
				t.Fatalf("%+v: sampled %d, want 9 or 20", p, id)
			}
		}
	}
}

func TestSamplingParamsValidate(t *testing.T) {
	bad := []SamplingParams{
		{Temperature: -0.1, TopP: 1, RepetitionPenalty: 1},
		{Temperature: 2.1, TopP: 1, RepetitionPenalty: 1},
		{Temperature: math.NaN(), TopP: 1, RepetitionPenalty: 1},
		{Temperature: 1, TopK: -1, TopP: 1, RepetitionPenalty: 1},
		{Temperature: 1, TopP: 1.5, RepetitionPenalty: 1},
		{Temperature: 1, TopP: 1, MinP: -1, RepetitionPenalty: 1},
		{Temperature: 1, TopP: 1, RepetitionPenalty: 0},
		{Temperature: 1, TopP: 1, RepetitionPenalty: 2.5},
	}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v validated", p)
		}
	}
	if err := DefaultSampling.Validate(); err != nil {
		t.Errorf("default: %v", err)
	}
}

// normalLogits are 201088 logits, normal with σ=3: a flat, worst-case shape
// in which thousands of tokens share the mass.
func normalLogits(vocab int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	out := make([]float32, vocab)
	for i := range out {
		out[i] = float32(rng.NormFloat64() * 3)
	}
	return out
}

// lmLogits imitate a language model's output: a bulk of N(0, 2²) logits and
// 16 outliers 12 to 20 above it, which carry nearly all the mass (the bulk's
// e^2·vocab ≈ e^14 against e^20 for the best outlier).
func lmLogits(vocab int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	out := make([]float32, vocab)
	for i := range out {
		out[i] = float32(rng.NormFloat64() * 2)
	}
	for range 16 {
		out[rng.IntN(vocab)] = float32(12 + rng.Float64()*8)
	}
	return out
}

// benchParams are the sampling settings the benchmarks measure.
var benchParams = []struct {
	name string
	p    SamplingParams
}{
	{"greedy", SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 1}},
	{"plain", DefaultSampling},
	{"top-k-40", SamplingParams{Temperature: 0.8, TopK: 40, TopP: 1, RepetitionPenalty: 1}},
	{"top-p-0.9", SamplingParams{Temperature: 0.8, TopP: 0.9, RepetitionPenalty: 1}},
	{"min-p-0.05", SamplingParams{Temperature: 1, TopP: 1, MinP: 0.05, RepetitionPenalty: 1}},
	{"all", SamplingParams{Temperature: 0.8, TopK: 40, TopP: 0.9, MinP: 0.05, RepetitionPenalty: 1.1}},
}

// BenchmarkSample draws from a gpt-oss-sized vocabulary (201088 logits) of
// two shapes with common settings; "all" adds a repetition penalty over a
// 512-token history.
func BenchmarkSample(b *testing.B) {
	const vocab = 201088
	rng := rand.New(rand.NewPCG(3, 4))
	history := make([]int32, 512)
	for i := range history {
		history[i] = int32(rng.IntN(vocab))
	}
	for _, shape := range []struct {
		name   string
		logits []float32
	}{{"lm", lmLogits(vocab, 5)}, {"normal", normalLogits(vocab, 3)}} {
		for _, c := range benchParams {
			b.Run(shape.name+"/"+c.name, func(b *testing.B) {
				s := NewSampler(c.p, 1)
				b.ReportAllocs()
				for b.Loop() {
					s.Sample(shape.logits, history)
				}
			})
		}
	}
}

// referenceDistribution applies the pipeline by its definition to every
// token, with math.Exp and no bounds or fast paths: the sampler before it
// learned to skip work. The sampler must agree with it.
func referenceDistribution(p SamplingParams, logits []float32, history []int32) []candidate {
	logits = slices.Clone(logits)
	seen := map[int32]bool{}
	for _, id := range history {
		if seen[id] || id < 0 || int(id) >= len(logits) {
			continue
		}
		seen[id] = true
		if l := float64(logits[id]); l > 0 {
			logits[id] = float32(l / p.RepetitionPenalty)
		} else {
			logits[id] = float32(l * p.RepetitionPenalty)
		}
	}
	best := 0
	for i, l := range logits {
		if l > logits[best] {
			best = i
		}
	}
	if p.Temperature == 0 {
		return []candidate{{id: int32(best), prob: 1}}
	}
	var cands []candidate
	for i, l := range logits {
		if float64(l) >= float64(logits[best])-negligible*p.Temperature {
			cands = append(cands, candidate{id: int32(i), logit: float64(l) / p.Temperature})
		}
	}
	if p.TopK > 0 && p.TopK < len(cands) {
		for i := range cands {
			cands[i].prob = cands[i].logit
		}
		cands = topK(cands, p.TopK)
	}
	top := math.Inf(-1)
	for _, c := range cands {
		top = max(top, c.logit)
	}
	for i := range cands {
		cands[i].prob = math.Exp(cands[i].logit - top)
	}
	normalize(cands)
	if p.TopP < 1 {
		slices.SortFunc(cands, moreLikely)
		acc := 0.0
		for i, c := range cands {
			if acc += c.prob; acc >= p.TopP {
				cands = cands[:i+1]
				break
			}
		}
		normalize(cands)
	}
	if p.MinP > 0 {
		cands = minP(cands, p.MinP)
		normalize(cands)
	}
	return cands
}

// referenceSample draws from referenceDistribution as Sample draws.
func referenceSample(p SamplingParams, rng *rand.Rand, logits []float32, history []int32) int32 {
	cands := referenceDistribution(p, logits, history)
	if len(cands) == 1 {
		return cands[0].id
	}
	r := rng.Float64()
	acc := 0.0
	for _, c := range cands {
		if acc += c.prob; r < acc {
			return c.id
		}
	}
	return cands[len(cands)-1].id
}

// TestSamplerMatchesReference checks that the sampler's bounds and fast
// paths change nothing: the same candidates in the same order with the
// same probabilities (to rounding), and the same tokens for the same seed,
// over logits of several shapes (flat, peaked, tied, partly -Inf) and every
// filter alone and combined.
func TestSamplerMatchesReference(t *testing.T) {
	const vocab = 3000
	tied := normalLogits(vocab, 9)
	for i := range tied {
		tied[i] = float32(math.Round(float64(tied[i])*2) / 2) // many equal logits
	}
	masked := lmLogits(vocab, 10)
	for i := range masked {
		if i%3 != 0 {
			masked[i] = float32(math.Inf(-1))
		}
	}
	spike := make([]float32, vocab) // one token far above the rest: one candidate
	spike[17] = 100
	shapes := map[string][]float32{
		"normal": normalLogits(vocab, 7), "lm": lmLogits(vocab, 8), "tied": tied, "masked": masked, "spike": spike,
	}
	with := func(f func(*SamplingParams)) SamplingParams {
		p := DefaultSampling
		f(&p)
		return p
	}
	params := map[string]SamplingParams{
		"plain":            DefaultSampling,
		"temperature 0.7":  with(func(p *SamplingParams) { p.Temperature = 0.7 }),
		"temperature 2":    with(func(p *SamplingParams) { p.Temperature = 2 }),
		"top-k 1":          with(func(p *SamplingParams) { p.TopK = 1 }),
		"top-k 40":         with(func(p *SamplingParams) { p.TopK = 40 }),
		"top-k 600":        with(func(p *SamplingParams) { p.TopK = 600 }),
		"top-k above":      with(func(p *SamplingParams) { p.TopK = vocab + 1 }),
		"top-p 0.5":        with(func(p *SamplingParams) { p.TopP = 0.5 }),
		"top-p 0.9 T 0.8":  with(func(p *SamplingParams) { p.TopP, p.Temperature = 0.9, 0.8 }),
		"top-p 0.999":      with(func(p *SamplingParams) { p.TopP = 0.999 }),
		"top-p 0":          with(func(p *SamplingParams) { p.TopP = 0 }),
		"min-p 0.05":       with(func(p *SamplingParams) { p.MinP = 0.05 }),
		"min-p 1e-9":       with(func(p *SamplingParams) { p.MinP = 1e-9 }),
		"top-k top-p":      with(func(p *SamplingParams) { p.TopK, p.TopP = 100, 0.8 }),
		"top-p min-p":      with(func(p *SamplingParams) { p.TopP, p.MinP = 0.95, 0.01 }),
		"all with penalty": {Temperature: 0.8, TopK: 40, TopP: 0.9, MinP: 0.05, RepetitionPenalty: 1.3},
		"penalty only":     with(func(p *SamplingParams) { p.RepetitionPenalty = 0.7 }),
		"greedy penalty":   {Temperature: 0, TopP: 1, RepetitionPenalty: 2},
	}
	rng := rand.New(rand.NewPCG(5, 6))
	history := make([]int32, 200)
	for i := range history {
		history[i] = int32(rng.IntN(vocab))
	}
	for sname, logits := range shapes {
		for pname, p := range params {
			name := sname + "/" + pname
			want := referenceDistribution(p, logits, history)
			got := NewSampler(p, 1).distribution(logits, history)
			if len(got) != len(want) {
				t.Errorf("%s: %d candidates, want %d", name, len(got), len(want))
				continue
			}
			for i := range got {
				if got[i].id != want[i].id || math.Abs(got[i].prob-want[i].prob) > 1e-12 {
					t.Errorf("%s: candidate %d is %d with P %v, want %d with %v", name, i, got[i].id, got[i].prob, want[i].id, want[i].prob)
					break
				}
			}
			const seed = 11
			s := NewSampler(p, seed)
			ref := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
			for d := range 300 {
				if g, w := s.Sample(logits, history), referenceSample(p, ref, logits, history); g != w {
					t.Errorf("%s: draw %d is %d, the reference draws %d", name, d, g, w)
					break
				}
			}
		}
	}
}

// TestSampleMaskedDistribution checks that a mask leaves the renormalized
// distribution of the allowed tokens, after the other transforms: worked
// by hand, and drawn (chi-square).
func TestSampleMaskedDistribution(t *testing.T) {
	mask := []uint64{1<<1 | 1<<3}
	masked := func(p SamplingParams) map[int32]float64 {
		l := logitsOf(0.4, 0.3, 0.2, 0.1)
		applyMask(l, mask)
		return probsOf(t, p, l, nil)
	}
	wantProbs(t, "plain", masked(DefaultSampling), map[int32]float64{1: .75, 3: .25})
	p := DefaultSampling
	p.TopP = 0.7 // the masked nucleus: .75 alone reaches .7
	wantProbs(t, "top-p", masked(p), map[int32]float64{1: 1})
	p = DefaultSampling
	p.Temperature = 0.5 // .3² : .1² = .9 : .1
	wantProbs(t, "temperature", masked(p), map[int32]float64{1: .9, 3: .1})
	p = DefaultSampling
	p.Temperature = 0
	wantProbs(t, "greedy", masked(p), map[int32]float64{1: 1})

	s := NewSampler(DefaultSampling, 9)
	counts := map[int32]int{}
	const n = 40000
	for range n {
		id := s.SampleMasked(logitsOf(0.4, 0.3, 0.2, 0.1), nil, mask)
		counts[id]++
	}
	if len(counts) != 2 {
		t.Fatalf("drew %v, want only tokens 1 and 3", counts)
	}
	chi := 0.0
	for id, q := range map[int32]float64{1: .75, 3: .25} {
		d := float64(counts[id]) - q*n
		chi += d * d / (q * n)
	}
	if chi > 10.83 { // 99.9th percentile, 1 degree of freedom
		t.Errorf("chi-square %v exceeds 10.83: %v", chi, counts)
	}
	// No allowed token with a finite logit: the first allowed one.
	l := logitsOf(0.5, 0.5, 0, 0)
	if id := s.SampleMasked(l, nil, []uint64{1 << 2}); id != 2 {
		t.Errorf("all allowed logits -Inf: drew %d, want 2", id)
	}
}

// BenchmarkSampleMasked is a masked draw over the o200k vocabulary size,
// the mask copy included: a mask that allows most tokens (inside a JSON
// string) and one that allows a few (an object key).
func BenchmarkSampleMasked(b *testing.B) {
	const vocab = 201088
	logits := lmLogits(vocab, 5)
	row := make([]float32, vocab)
	for _, m := range []struct {
		name  string
		every int
	}{{"most", 1}, {"few", 5000}} {
		mask := make([]uint64, (vocab+63)/64)
		for id := 0; id < vocab; id += m.every {
			mask[id/64] |= 1 << (id % 64)
		}
		b.Run(m.name, func(b *testing.B) {
			s := NewSampler(DefaultSampling, 1)
			for b.Loop() {
				copy(row, logits)
				s.SampleMasked(row, nil, mask)
			}
		})
	}
}
