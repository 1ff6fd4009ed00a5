package engine

import (
	"fmt"
	"math"
	"math/bits"
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
//
// The work per token is a few linear passes over the logits and no
// allocation once the buffers have grown: the filters bound the
// probability a token needs to survive, so only the tokens above that bound
// are gathered as candidates; plain sampling draws without gathering at all.
type Sampler struct {
	params  SamplingParams
	rng     *rand.Rand
	cands   []candidate // reused between calls
	scratch []float32   // penalized logits, reused between calls
	blocks  []float64   // plain sampling's weight per block of drawBlock tokens
}

// NewSampler returns a sampler with the given parameters and seed. It does
// not validate the parameters (see SamplingParams.Validate).
func NewSampler(p SamplingParams, seed uint64) *Sampler {
	return &Sampler{params: p, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Sample picks the next token from logits (one value per vocabulary entry).
// history is the sequence so far (prompt and generated tokens), used by the
// repetition penalty. When no logit is finite, or the largest is +Inf, it
// returns the first largest.
func (s *Sampler) Sample(logits []float32, history []int32) int32 {
	logits = s.penalize(logits, history)
	top := largest(logits)
	p := s.params
	maxLogit := float64(top)
	if p.Temperature == 0 || math.IsInf(maxLogit, 0) {
		return int32(firstIndex(logits, top))
	}
	if p.TopK == 0 && p.TopP >= 1 && p.MinP == 0 {
		return s.drawAll(logits, maxLogit)
	}
	return s.draw(s.filter(logits, maxLogit))
}

// SampleMasked is Sample restricted to the tokens mask allows (bit id%64 of
// word id/64; ids beyond the mask are refused): the others' logits become
// -Inf first, in logits itself, so the draw is from the masked distribution
// renormalized, after the same transforms. When no allowed token has a
// finite logit it returns the first allowed one (0 if none is).
func (s *Sampler) SampleMasked(logits []float32, history []int32, mask []uint64) int32 {
	first := applyMask(logits, mask)
	id := s.Sample(logits, history)
	if !Allowed(mask, id) {
		return first
	}
	return id
}

// applyMask sets the logits of the tokens mask refuses to -Inf and returns
// the first allowed id (0 if none is).
func applyMask(logits []float32, mask []uint64) int32 {
	ninf := float32(math.Inf(-1))
	first := int32(-1)
	for w := 0; w*64 < len(logits); w++ {
		var word uint64
		if w < len(mask) {
			word = mask[w]
		}
		if word != 0 && first < 0 {
			first = int32(w*64 + bits.TrailingZeros64(word))
		}
		if word == ^uint64(0) {
			continue
		}
		row := logits[w*64 : min(len(logits), w*64+64)]
		for i := range row {
			if word&(1<<i) == 0 {
				row[i] = ninf
			}
		}
	}
	return max(first, 0)
}

// Allowed reports whether mask allows id.
func Allowed(mask []uint64, id int32) bool {
	return id >= 0 && int(id/64) < len(mask) && mask[id/64]&(1<<(id%64)) != 0
}

// draw picks one of cands, whose probabilities sum to 1, with one number
// from the PRNG (none when there is only one).
func (s *Sampler) draw(cands []candidate) int32 {
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
// 2e-8 of the mass.
const negligible = 30

// distribution applies the pipeline (repetition penalty, temperature, top-k,
// top-p, min-p) and returns the surviving candidates with probabilities that
// sum to 1. With temperature 0 it returns the single greedy choice. Sample
// draws from it (plain sampling without building it).
func (s *Sampler) distribution(logits []float32, history []int32) []candidate {
	logits = s.penalize(logits, history)
	top := largest(logits)
	maxLogit := float64(top)
	if s.params.Temperature == 0 || math.IsInf(maxLogit, 0) {
		s.cands = append(s.cands[:0], candidate{id: int32(firstIndex(logits, top)), logit: maxLogit, prob: 1})
		return s.cands
	}
	return s.filter(logits, maxLogit)
}

// filter is distribution after the penalty, for a positive temperature and
// the largest logit maxLogit (finite).
//
// Each filter bounds what a token needs to survive, so that only tokens
// above the bound become candidates and get the full treatment:
//   - top-k keeps the k best logits, found in one pass above a rising cut;
//   - min-p alone keeps tokens with e^((l-max)/T) ≥ min_p, a logit bound;
//   - top-p needs the softmax denominator over all tokens (one pass of exp),
//     after which tokens below (1-top_p)/n of it cannot be in the nucleus
//     (those below hold less than 1-top_p together).
//
// The survivors are exactly those of the unbounded pipeline, in the same
// order, with the same probabilities up to rounding.
func (s *Sampler) filter(logits []float32, maxLogit float64) []candidate {
	p := s.params
	floor := maxLogit - negligible*p.Temperature
	var cands []candidate
	switch {
	case p.TopK > 0:
		// Softmax then top-k then renormalizing equals softmax over the k
		// largest logits.
		cands = s.topKLogits(logits, floor, p.TopK)
		softmax(cands)
		if p.TopP < 1 {
			cands = topP(cands, p.TopP)
			normalize(cands)
		}
	case p.TopP < 1:
		cands = nucleus(s.nucleusCandidates(logits, maxLogit, floor), p.TopP)
		normalize(cands)
	case p.MinP > 0:
		// min-p keeps probabilities ≥ min_p·top, i.e. e^((l-max)/T) ≥
		// min_p; gathering a little beyond the bound and then applying the
		// filter exactly gives the same set.
		cands = s.gather(logits, max(floor, maxLogit+p.Temperature*math.Log(p.MinP)-1e-6))
		softmax(cands)
	default:
		cands = s.gather(logits, floor)
		softmax(cands)
	}
	if p.MinP > 0 {
		cands = minP(cands, p.MinP)
		normalize(cands)
	}
	return cands
}

// penalize returns logits with the repetition penalty applied to each
// distinct token of history, in a copy (logits itself is not changed).
func (s *Sampler) penalize(logits []float32, history []int32) []float32 {
	penalty := s.params.RepetitionPenalty
	if penalty == 1 {
		return logits
	}
	s.scratch = append(s.scratch[:0], logits...)
	for _, id := range history {
		if id < 0 || int(id) >= len(logits) {
			continue
		}
		// Penalizing from the original logit makes a repeated id count once.
		if l := float64(logits[id]); l > 0 {
			s.scratch[id] = float32(l / penalty)
		} else {
			s.scratch[id] = float32(l * penalty)
		}
	}
	return s.scratch
}

// largest returns the largest logit, ignoring NaN (-Inf when there is no
// other). Four independent lanes make it faster than one running maximum.
func largest(logits []float32) float32 {
	inf := float32(math.Inf(-1))
	t0, t1, t2, t3 := inf, inf, inf, inf
	i := 0
	for ; i+4 <= len(logits); i += 4 {
		q := logits[i : i+4 : i+4]
		if q[0] > t0 {
			t0 = q[0]
		}
		if q[1] > t1 {
			t1 = q[1]
		}
		if q[2] > t2 {
			t2 = q[2]
		}
		if q[3] > t3 {
			t3 = q[3]
		}
	}
	for _, l := range logits[i:] {
		if l > t0 {
			t0 = l
		}
	}
	return max(t0, t1, t2, t3)
}

// firstIndex returns the index of the first logit equal to v (0 if none).
func firstIndex(logits []float32, v float32) int {
	for i, l := range logits {
		if l == v {
			return i
		}
	}
	return 0
}

// atLeast returns the smallest float32 f with float64(f) ≥ x, so that
// comparing a logit with it is comparing the logit with x.
func atLeast(x float64) float32 {
	f := float32(x)
	if float64(f) < x {
		f = math.Nextafter32(f, float32(math.Inf(1)))
	}
	return f
}

// gather returns the tokens with a logit ≥ floor, in vocabulary order, as
// candidates with their logits divided by the temperature.
func (s *Sampler) gather(logits []float32, floor float64) []candidate {
	invT := 1 / s.params.Temperature
	cands := s.cands[:0]
	bound := atLeast(floor)
	for i, l := range logits {
		if l >= bound {
			cands = append(cands, candidate{id: int32(i), logit: float64(l) * invT})
		}
	}
	s.cands = cands
	return cands
}

// expSum returns the sum of e^((l-maxLogit)·invT) over the logits l ≥ floor,
// and their number.
func expSum(logits []float32, maxLogit, floor, invT float64) (sum float64, n int) {
	scale := invT * expScale
	for _, l := range logits {
		if v := float64(l); v >= floor {
			sum += exp2k((v - maxLogit) * scale)
			n++
		}
	}
	return sum, n
}

// eagerLimit is the most tokens nucleusCandidates gathers during its first
// pass before it leaves gathering to a second.
const eagerLimit = 1024

// nucleusCandidates returns the tokens ≥ floor whose probability (softmax
// over the tokens ≥ floor) is at least (1-p)/n, n being their number, with
// that probability, in vocabulary order. They include the top-p nucleus:
// the tokens below hold less than 1-p together.
//
// One pass sums the weights e^((l-max)/T). The bound's weight (1-p)·sum/n is
// known only at the end, but it is at least (1-p)·max(s, 1)/len(logits) for
// the sum s so far (the largest token weighs 1), so the pass gathers the
// tokens above that rising bound: from a peaked distribution, a handful.
// From a flat one, where that would be more than eagerLimit tokens, it
// stops gathering and a second pass gathers by the final bound.
func (s *Sampler) nucleusCandidates(logits []float32, maxLogit, floor float64) []candidate {
	p := s.params
	invT := 1 / p.Temperature
	scale := invT * expScale
	early := (1 - p.TopP) / float64(len(logits)) * (1 - 1e-9) // the margin absorbs rounding
	cands := s.cands[:0]
	sum, n, bound := 0.0, 0, early
	for lo := 0; lo < len(logits); lo += drawBlock {
		for i, l := range logits[lo:min(lo+drawBlock, len(logits))] {
			if v := float64(l); v >= floor {
				w := exp2k((v - maxLogit) * scale)
				sum += w
				n++
				if w >= bound {
					cands = append(cands, candidate{id: int32(lo + i), logit: v * invT, prob: w})
				}
			}
		}
		bound = early * max(sum, 1)
		if len(cands) > eagerLimit {
			bound = math.Inf(1) // no weight reaches it
		}
	}
	s.cands = cands
	final := (1 - p.TopP) * sum / float64(n)
	if math.IsInf(bound, 1) {
		// The final bound as a logit, less a margin so that rounding
		// loses no token (extra tokens are dropped below).
		cands = s.gather(logits, max(floor, maxLogit+p.Temperature*math.Log(final)-1e-6))
		for i := range cands {
			cands[i].prob = exp2k((float64(logits[cands[i].id]) - maxLogit) * scale)
		}
	}
	kept := cands[:0]
	for _, c := range cands {
		if c.prob >= final {
			c.prob /= sum
			kept = append(kept, c)
		}
	}
	return kept
}

// drawBlock is the number of tokens per block in drawAll: the draw finds its
// block from the block sums, then recomputes only that block's weights.
const drawBlock = 512

// drawAll draws from the whole distribution (no filter but the negligible
// floor) without building it: one pass sums e^((l-max)/T) per block, then
// the PRNG's number, scaled by the total, is located first among the blocks
// and then within one. Tokens are visited in vocabulary order, as draw
// visits the candidates of distribution, so both pick the same token for
// the same number (up to rounding at a boundary).
func (s *Sampler) drawAll(logits []float32, maxLogit float64) int32 {
	invT := 1 / s.params.Temperature
	scale := invT * expScale
	floor := maxLogit - negligible*s.params.Temperature
	s.blocks = s.blocks[:0]
	total, n := 0.0, 0
	for lo := 0; lo < len(logits); lo += drawBlock {
		sum, m := expSum(logits[lo:min(lo+drawBlock, len(logits))], maxLogit, floor, invT)
		s.blocks = append(s.blocks, sum)
		total += sum
		n += m
	}
	if n == 1 {
		return int32(firstIndex(logits, float32(maxLogit)))
	}
	target := s.rng.Float64() * total
	acc := 0.0
	for b, sum := range s.blocks {
		lo := b * drawBlock
		if target >= acc+sum {
			acc += sum
			continue
		}
		for i, l := range logits[lo:min(lo+drawBlock, len(logits))] {
			if v := float64(l); v >= floor {
				if acc += exp2k((v - maxLogit) * scale); target < acc {
					return int32(lo + i)
				}
			}
		}
	}
	// target fell in the rounding gap at the top: the last candidate owns it
	// (there is one: the largest logit).
	i := len(logits) - 1
	for float64(logits[i]) < floor {
		i--
	}
	return int32(i)
}

// topKLogits returns the k tokens with the largest logits among those ≥
// floor (ties to the lower id) as candidates, most likely first, with their
// logits divided by the temperature. When no more than k tokens reach the
// floor it returns them all in vocabulary order, as the pipeline without
// top-k would.
//
// It gathers tokens above a rising cut: whenever 2k+256 are gathered, topK
// keeps the best k and the k-th logit becomes the cut, so after the first
// few hundred tokens almost every token costs one comparison.
func (s *Sampler) topKLogits(logits []float32, floor float64, k int) []candidate {
	// A k beyond the vocabulary keeps everything; clamping it also keeps
	// 2k+256 from overflowing for a k near the largest int.
	k = min(k, len(logits))
	invT := 1 / s.params.Temperature
	cands := s.cands[:0]
	bound, cut := atLeast(floor), float32(math.Inf(-1))
	n := 0
	for i, l := range logits {
		if !(l >= bound) { // NaN too: softmax over a NaN is NaN everywhere
			continue
		}
		n++
		// Tokens come in rising id order, so a tie with the cut is worse.
		if l <= cut {
			continue
		}
		v := float64(l) * invT
		cands = append(cands, candidate{id: int32(i), logit: v, prob: v})
		if len(cands) == 2*k+256 {
			cands = topK(cands, k)
			cut = logits[cands[k-1].id]
		}
	}
	if n > k {
		cands = topK(cands, k)
	}
	s.cands = cands
	return cands
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
		e := expNeg(cands[i].logit - maxLogit)
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
// probabilities (summing to 1) sum to at least p (always at least one).
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
	return nucleus(kept, p)
}

// nucleus sorts the most likely of cands first and returns the shortest
// run whose probabilities sum to at least p (all of them if none does).
// cands must include every token of the nucleus of the whole distribution.
//
// Only a prefix holding the nucleus is sorted: partitions around pivots, as
// in quickselect, narrow down where the running sum crosses p.
func nucleus(cands []candidate, p float64) []candidate {
	lo, hi, acc := 0, len(cands), 0.0 // cands[:lo] hold less than p, cands[:hi] at least p
	for hi-lo > 256 {
		m := lo + partition(cands[lo:hi])
		upper := 0.0
		for _, c := range cands[lo : m+1] {
			upper += c.prob
		}
		if acc+upper >= p {
			hi = m + 1
		} else {
			acc += upper
			lo = m + 1
		}
	}
	slices.SortFunc(cands[:hi], moreLikely)
	acc = 0.0
	for i := range cands {
		if i == hi {
			// The partitions summed in another order and rounded
			// differently: sort on.
			slices.SortFunc(cands[hi:], moreLikely)
		}
		acc += cands[i].prob
		if acc >= p {
			return cands[:i+1]
		}
	}
	return cands
}

// partition reorders cands around the middle one and returns its new index:
// more likely candidates before it, less likely after.
func partition(cands []candidate) int {
	last := len(cands) - 1
	cands[len(cands)/2], cands[last] = cands[last], cands[len(cands)/2]
	m := 0
	for i := range cands[:last] {
		if moreLikely(cands[i], cands[last]) < 0 {
			cands[i], cands[m] = cands[m], cands[i]
			m++
		}
	}
	cands[m], cands[last] = cands[last], cands[m]
	return m
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
