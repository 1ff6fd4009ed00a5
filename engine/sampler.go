package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// SamplingParams choose how the next token is drawn from the logits. The zero
// value is not useful; start from DefaultSampling.
type SamplingParams struct {
	// Temperature divides the logits; 0 selects the most likely token (greedy).
	Temperature float64
	// TopK keeps the K most likely tokens; 0 keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// sums to at least TopP; 1 keeps all.
	TopP float64
	// MinP drops tokens less likely than MinP times the most likely one; 0 keeps all.
	MinP float64
	// RepetitionPenalty (> 0) makes tokens already in the sequence less
	// likely: a positive logit is divided by it, a negative one multiplied
	// (the CTRL rule); 1 turns it off.
	RepetitionPenalty float64
}

// DefaultSampling is plain sampling from the model's distribution.
var DefaultSampling = SamplingParams{Temperature: 1, TopP: 1, RepetitionPenalty: 1}

// Validate reports the first parameter outside its range.
func (p SamplingParams) Validate() error {
	switch {
	case !(p.Temperature >= 0 && p.Temperature <= 2):
		return fmt.Errorf("temperature %v is outside [0, 2]", p.Temperature)
	case p.TopK < 0:
		return fmt.Errorf("top_k %d is negative", p.TopK)
	case !(p.TopP >= 0 && p.TopP <= 1):
		return fmt.Errorf("top_p %v is outside [0, 1]", p.TopP)
	case !(p.MinP >= 0 && p.MinP <= 1):
		return fmt.Errorf("min_p %v is outside [0, 1]", p.MinP)
	case !(p.RepetitionPenalty > 0 && p.RepetitionPenalty <= 2):
		return fmt.Errorf("repetition_penalty %v is outside (0, 2]", p.RepetitionPenalty)
	}
	return nil
}

// candidate is one token still in the running, with its logit and, once
// softmax has run, its probability.
type candidate struct {
	id    int32
	logit float64
	prob  float64
}

// Sampler draws tokens with one set of parameters from one seeded PRNG. The
// same seed and the same logits give the same tokens. A Sampler is not safe
// for concurrent use; each sequence has its own.
type Sampler struct {
	params  SamplingParams
	rng     *rand.Rand
	cands   []candidate // reused between calls
	scratch []float32   // penalized logits, reused between calls
}

// NewSampler returns a sampler with the given parameters and seed. It does
// not validate the parameters (see SamplingParams.Validate).
func NewSampler(p SamplingParams, seed uint64) *Sampler {
	return &Sampler{params: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Sample picks the next token from logits (one value per vocabulary entry).
// history is the sequence so far (prompt and generated tokens), used by the
// repetition penalty.
func (s *Sampler) Sample(logits []float32, history []int32) int32 {
	cands := s.distribution(logits, history)
	if len(cands) == 1 {
		return cands[0].id
	}
	r := s.rng.Float64()
	acc := 0.0
	for _, c := range cands {
		acc += c.prob
		if r < acc {
			return c.id
		}
	}
	// r fell in the rounding gap at the top: the last candidate owns it.
	return cands[len(cands)-1].id
}

// negligible is how far below the best token, in units of temperature, a
// logit may lie before its token is dropped: its probability is below
// e^-30 ≈ 1e-13, so even a 201k vocabulary of such tokens holds less than
// 2e-8 of the mass. Skipping them saves most of the softmax work on real
// model output.
const negligible = 30

// distribution applies the pipeline (repetition penalty, temperature, top-k,
// top-p, min-p) and returns the surviving candidates with probabilities that
// sum to 1. With temperature 0 it returns the single greedy choice.
func (s *Sampler) distribution(logits []float32, history []int32) []candidate {
	p := s.params
	if p.RepetitionPenalty != 1 {
		s.scratch = append(s.scratch[:0], logits...)
		applyRepetitionPenalty(s.scratch, history, p.RepetitionPenalty)
		logits = s.scratch
	}
	best := 0
	for i, l := range logits {
		if l > logits[best] {
			best = i
		}
	}
	cands := s.cands[:0]
	if p.Temperature == 0 {
		s.cands = append(cands, candidate{id: int32(best), logit: float64(logits[best]), prob: 1})
		return s.cands
	}
	floor := float64(logits[best]) - negligible*p.Temperature
	for i, l := range logits {
		if float64(l) >= floor {
			cands = append(cands, candidate{id: int32(i), logit: float64(l) / p.Temperature})
		}
	}
	s.cands = cands
	if p.TopK > 0 && p.TopK < len(cands) {
		// Softmax then top-k then renormalizing equals softmax over the k
		// largest logits, which is much cheaper: rank by logit (the same
		// order as probability) and exponentiate only the survivors.
		for i := range cands {
			cands[i].prob = cands[i].logit
		}
		cands = topK(cands, p.TopK)
	}
	softmax(cands)
	if p.TopP < 1 {
		cands = topP(cands, p.TopP)
		normalize(cands)
	}
	if p.MinP > 0 {
		cands = minP(cands, p.MinP)
		normalize(cands)
	}
	return cands
}

// applyRepetitionPenalty penalizes each distinct token of history once.
func applyRepetitionPenalty(logits []float32, history []int32, penalty float64) {
	seen := make(map[int32]bool, len(history))
	for _, id := range history {
		if seen[id] || id < 0 || int(id) >= len(logits) {
			continue
		}
		seen[id] = true
		if l := float64(logits[id]); l > 0 {
			logits[id] = float32(l / penalty)
		} else {
			logits[id] = float32(l * penalty)
		}
	}
}

// softmax sets prob from logit, subtracting the maximum for stability.
// Tokens with a logit of -Inf get probability 0.
func softmax(cands []candidate) {
	maxLogit := math.Inf(-1)
	for _, c := range cands {
		maxLogit = max(maxLogit, c.logit)
	}
	sum := 0.0
	for i := range cands {
		e := math.Exp(cands[i].logit - maxLogit)
		cands[i].prob = e
		sum += e
	}
	for i := range cands {
		cands[i].prob /= sum
	}
}

func normalize(cands []candidate) {
	sum := 0.0
	for _, c := range cands {
		sum += c.prob
	}
	for i := range cands {
		cands[i].prob /= sum
	}
}

// moreLikely orders candidates by falling probability, ties by token id, so
// that every filter is deterministic.
func moreLikely(a, b candidate) int {
	switch {
	case a.prob > b.prob:
		return -1
	case a.prob < b.prob:
		return 1
	}
	return int(a.id) - int(b.id)
}

// topK returns the k most likely candidates, most likely first. It selects
// before sorting so that a large vocabulary costs linear time.
func topK(cands []candidate, k int) []candidate {
	lo, hi := 0, len(cands)-1
	for lo < hi { // quickselect: afterwards cands[:k] hold the k most likely
		pivot := cands[lo+(hi-lo)/2]
		i, j := lo, hi
		for i <= j {
			for moreLikely(cands[i], pivot) < 0 {
				i++
			}
			for moreLikely(cands[j], pivot) > 0 {
				j--
			}
			if i <= j {
				cands[i], cands[j] = cands[j], cands[i]
				i++
				j--
			}
		}
		switch {
		case k-1 <= j:
			hi = j
		case k-1 >= i:
			lo = i
		default:
			lo = hi
		}
	}
	kept := cands[:k]
	slices.SortFunc(kept, moreLikely)
	return kept
}

// topP returns the shortest run of most likely candidates whose
// probabilities sum to at least p (always at least one).
func topP(cands []candidate, p float64) []candidate {
	// Candidates below (1-p)/n together hold less than 1-p, so the nucleus
	// lies entirely above that bound: drop them before sorting, which keeps
	// the sort short on large vocabularies without changing the result.
	floor := (1 - p) / float64(len(cands))
	kept := cands[:0]
	for _, c := range cands {
		if c.prob >= floor {
			kept = append(kept, c)
		}
	}
	slices.SortFunc(kept, moreLikely)
	acc := 0.0
	for i, c := range kept {
		acc += c.prob
		if acc >= p {
			return kept[:i+1]
		}
	}
	return kept
}

// minP returns the candidates at least p times as likely as the most likely one.
func minP(cands []candidate, p float64) []candidate {
	top := 0.0
	for _, c := range cands {
		top = max(top, c.prob)
	}
	kept := cands[:0]
	for _, c := range cands {
		if c.prob >= p*top {
			kept = append(kept, c)
		}
	}
	return kept
}
