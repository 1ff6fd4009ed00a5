package engine

import (
	"math"
	"slices"
)

// MaxTopLogprobs is the most alternatives a request may ask for at each
// position (Request.TopLogprobs), as in the OpenAI API.
const MaxTopLogprobs = 20

// MinLogprob is the floor of reported log probabilities: tokens that cannot
// be drawn (a logit of -Inf, or a probability below e^-9999) get it instead
// of -Inf, which JSON cannot carry. OpenAI reports -9999 the same way.
const MinLogprob = -9999.0

// TokenLogprob is a token and its log probability.
type TokenLogprob struct {
	ID      int32
	Logprob float64
}

// Logprobs are the log probabilities at one position of a sequence: the
// token there and the most likely tokens (the alternatives).
//
// They are taken from the distribution the sampler draws from before it
// truncates it: the log-softmax of the logits after the repetition penalty
// (over the tokens before the position) and divided by the temperature, or
// by 1 at temperature 0 (greedy), where they are the log-softmax of the
// (penalized) logits. Top-k, top-p and min-p do not change them, so that a
// token outside the nucleus still gets a finite log probability and the
// alternatives are the model's (the drawn token is always among the tokens
// those filters keep). The same definition scores prompt tokens
// (Request.PromptLogprobs), although nothing drew them.
type Logprobs struct {
	TokenLogprob // the token at the position
	// Top are the most likely tokens, most likely first, ties by id. It
	// leaves out tokens whose logit is -Inf or NaN, which can never be
	// drawn: fewer possible tokens than asked for give fewer alternatives.
	Top []TokenLogprob
}

// Logprobs returns the log probabilities of the position whose logits are
// given (one per vocabulary entry) for the token id there, with the top
// most likely alternatives. history is the sequence before the position
// (for the repetition penalty). See Logprobs for the distribution. It costs
// one pass of exp over the logits.
func (s *Sampler) Logprobs(logits []float32, history []int32, id int32, top int) Logprobs {
	logits = s.penalize(logits, history)
	invT := 1.0
	if s.params.Temperature > 0 {
		invT = 1 / s.params.Temperature
	}
	maxLogit := float64(largest(logits))
	logOf := logSoftmax(logits, maxLogit, invT)
	out := Logprobs{TokenLogprob: TokenLogprob{ID: id, Logprob: MinLogprob}}
	if id >= 0 && int(id) < len(logits) {
		out.Logprob = logOf(logits[id])
	}
	if top <= 0 || len(logits) == 0 {
		return out
	}
	// topKLogits keeps its candidates in s.cands, free once Sample has
	// drawn; its order is vocabulary order when it keeps them all. Its
	// floor, the lowest finite logit, leaves out the -Inf ones.
	saved := s.params.Temperature
	s.params.Temperature = 1 / invT
	cands := s.topKLogits(logits, -math.MaxFloat32, top)
	s.params.Temperature = saved
	slices.SortFunc(cands, moreLikely)
	out.Top = make([]TokenLogprob, len(cands))
	for i, c := range cands {
		out.Top[i] = TokenLogprob{ID: c.id, Logprob: logOf(logits[c.id])}
	}
	return out
}

// logSoftmax returns the function that maps a logit to its log probability
// under softmax(logits·invT), maxLogit being the largest logit (NaN
// ignored), clamped to [MinLogprob, 0]. Garbage input gives numbers, never
// NaN or ±Inf: when the largest logit is not finite (+Inf, or no finite
// logit), the tokens equal to it share the probability evenly.
func logSoftmax(logits []float32, maxLogit, invT float64) func(float32) float64 {
	clamp := func(v float64) float64 {
		if !(v >= MinLogprob) { // NaN too
			return MinLogprob
		}
		return min(v, 0)
	}
	if math.IsInf(maxLogit, 0) {
		n := 0
		for _, l := range logits {
			if float64(l) == maxLogit {
				n++
			}
		}
		share := -math.Log(float64(max(n, 1)))
		return func(l float32) float64 {
			if float64(l) == maxLogit {
				return share
			}
			return MinLogprob
		}
	}
	// Terms below e^-708 vanish in float64: skip their exp.
	floor := maxLogit - 708/invT
	sum, _ := expSum(logits, maxLogit, floor, invT)
	logZ := math.Log(sum)
	return func(l float32) float64 { return clamp((float64(l)-maxLogit)*invT - logZ) }
}
