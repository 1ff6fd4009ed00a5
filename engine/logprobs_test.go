package engine

import (
	"fmt"
	"math"
	"testing"
)

// TestLogprobsHandWorked checks Sampler.Logprobs on logits whose softmax is
// worked by hand: logits 0, ln 2, ln 3 and -Inf weigh 1, 2, 3 and 0.
func TestLogprobsHandWorked(t *testing.T) {
	inf := float32(math.Inf(-1))
	logits := []float32{0, float32(math.Ln2), float32(math.Log(3)), inf}
	cases := []struct {
		name    string
		p       SamplingParams
		history []int32
		want    []float64 // per token
	}{
		// Weights 1, 2, 3 over 6.
		{"greedy", SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 1}, nil,
			[]float64{math.Log(1.0 / 6), math.Log(2.0 / 6), math.Log(3.0 / 6), MinLogprob}},
		// Truncation does not change them: top-k 1 and top-p keep fewer
		// tokens but report the same numbers.
		{"top-k 1", SamplingParams{Temperature: 1, TopK: 1, TopP: 0.5, RepetitionPenalty: 1}, nil,
			[]float64{math.Log(1.0 / 6), math.Log(2.0 / 6), math.Log(3.0 / 6), MinLogprob}},
		// T = 0.5 squares the weights: 1, 4, 9 over 14.
		{"T=0.5", SamplingParams{Temperature: 0.5, TopP: 1, RepetitionPenalty: 1}, nil,
			[]float64{math.Log(1.0 / 14), math.Log(4.0 / 14), math.Log(9.0 / 14), MinLogprob}},
		// Penalty 2 on token 2 (seen twice, counted once): ln 3 / 2 weighs
		// √3; token 0's logit 0 stays 0.
		{"penalty", SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 2}, []int32{2, 0, 2},
			[]float64{-math.Log(3 + math.Sqrt(3)), math.Log(2 / (3 + math.Sqrt(3))), math.Log(math.Sqrt(3) / (3 + math.Sqrt(3))), MinLogprob}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSampler(tc.p, 1)
			for id, want := range tc.want {
				lp := s.Logprobs(logits, tc.history, int32(id), 4)
				if lp.ID != int32(id) || math.Abs(lp.Logprob-want) > 1e-6 {
					t.Errorf("token %d: %+v, want log probability %.9f", id, lp.TokenLogprob, want)
				}
				if len(lp.Top) != 3 {
					t.Fatalf("top: %+v, want the 3 tokens of finite logit", lp.Top)
				}
				sum := 0.0
				for i, alt := range lp.Top {
					if math.Abs(alt.Logprob-tc.want[alt.ID]) > 1e-6 {
						t.Errorf("alternative %d: %+v, want %.9f", i, alt, tc.want[alt.ID])
					}
					if i > 0 && alt.Logprob > lp.Top[i-1].Logprob {
						t.Errorf("alternatives out of order: %+v", lp.Top)
					}
					sum += math.Exp(alt.Logprob)
				}
				if math.Abs(sum-1) > 1e-6 {
					t.Errorf("the probabilities of all tokens sum to %v", sum)
				}
			}
		})
	}
}

// TestLogprobsTopTies: equal logits come lowest id first, the top is cut at
// k, and its probabilities sum to at most 1.
func TestLogprobsTopTies(t *testing.T) {
	logits := []float32{1, 3, 3, 2, 3, 0}
	s := NewSampler(DefaultSampling, 1)
	lp := s.Logprobs(logits, nil, 5, 2)
	if len(lp.Top) != 2 || lp.Top[0].ID != 1 || lp.Top[1].ID != 2 {
		t.Fatalf("top 2 of ties: %+v, want tokens 1 and 2", lp.Top)
	}
	// Three tokens of e^3 each: ln(e^3 / Σ).
	z := 3*math.Exp(3) + math.Exp(2) + math.E + 1
	if want := 3 - math.Log(z); math.Abs(lp.Top[0].Logprob-want) > 1e-6 {
		t.Errorf("top logprob %v, want %v", lp.Top[0].Logprob, want)
	}
	if want := -math.Log(z); math.Abs(lp.Logprob-want) > 1e-6 {
		t.Errorf("token 5's logprob %v, want %v", lp.Logprob, want)
	}
	if got := s.Logprobs(logits, nil, 5, 0); got.Top != nil {
		t.Errorf("top 0 gave alternatives %+v", got.Top)
	}
}

// TestLogprobsGarbage: NaN, +Inf and all -Inf logits, and an id outside the
// vocabulary, give numbers in [MinLogprob, 0], never NaN or Inf, and no panic.
func TestLogprobsGarbage(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for name, logits := range map[string][]float32{
		"nan":     {nan, 1, 2},
		"all nan": {nan, nan},
		"+inf":    {1, inf, inf},
		"-inf":    {-inf, -inf},
		"one":     {-inf, 1, -inf, -inf},
		"empty":   {},
	} {
		s := NewSampler(DefaultSampling, 1)
		for _, id := range []int32{0, 1, 2, -1, 99} {
			lp := s.Logprobs(logits, []int32{0}, id, 3)
			for _, v := range append([]TokenLogprob{lp.TokenLogprob}, lp.Top...) {
				if !(v.Logprob >= MinLogprob && v.Logprob <= 0) {
					t.Errorf("%s, token %d: %+v", name, id, lp)
				}
			}
		}
	}
	// One possible token: certain, and the only alternative.
	if lp := NewSampler(DefaultSampling, 1).Logprobs([]float32{-inf, 1, -inf, -inf}, nil, 1, 3); lp.Logprob != 0 || len(lp.Top) != 1 || lp.Top[0] != lp.TokenLogprob {
		t.Errorf("one possible token: %+v", lp)
	}
	// Two +Inf logits share the mass.
	lp := NewSampler(DefaultSampling, 1).Logprobs([]float32{1, inf, inf}, nil, 1, 1)
	if math.Abs(lp.Logprob-math.Log(0.5)) > 1e-12 {
		t.Errorf("+Inf tie: %v, want ln 1/2", lp.Logprob)
	}
}

// TestLogprobsLargeVocabulary compares with a plain math.Exp log-softmax
// over an LM-like 50k vocabulary at T = 0.7 with a penalty.
func TestLogprobsLargeVocabulary(t *testing.T) {
	logits := lmLogits(50000, 5)
	history := []int32{1, 2, 3, 40000}
	p := SamplingParams{Temperature: 0.7, TopK: 40, TopP: 0.9, RepetitionPenalty: 1.3}
	pen := make([]float64, len(logits))
	for i, l := range logits {
		pen[i] = float64(l)
	}
	for _, id := range history {
		if l := float64(logits[id]); l > 0 {
			pen[id] = l / 1.3
		} else {
			pen[id] = l * 1.3
		}
	}
	hi := math.Inf(-1)
	for _, v := range pen {
		hi = max(hi, v/0.7)
	}
	sum := 0.0
	for _, v := range pen {
		sum += math.Exp(v/0.7 - hi)
	}
	want := func(id int32) float64 { return pen[id]/0.7 - hi - math.Log(sum) }
	s := NewSampler(p, 9)
	id := s.Sample(logits, history)
	lp := s.Logprobs(logits, history, id, MaxTopLogprobs)
	if math.Abs(lp.Logprob-want(id)) > 1e-9 {
		t.Errorf("drawn token %d: %v, want %v", id, lp.Logprob, want(id))
	}
	total := 0.0
	for _, alt := range lp.Top {
		if math.Abs(alt.Logprob-want(alt.ID)) > 1e-9 {
			t.Errorf("alternative %+v, want %v", alt, want(alt.ID))
		}
		total += math.Exp(alt.Logprob)
	}
	if len(lp.Top) != MaxTopLogprobs || total > 1 {
		t.Errorf("%d alternatives holding %v", len(lp.Top), total)
	}
	// No token outside the top is more likely than its last.
	for i := range logits {
		if w := want(int32(i)); w > lp.Top[len(lp.Top)-1].Logprob+1e-12 {
			found := false
			for _, alt := range lp.Top {
				found = found || alt.ID == int32(i)
			}
			if !found {
				t.Errorf("token %d (%v) is missing from the top", i, w)
			}
		}
	}
}

// BenchmarkLogprobs is the host cost of one token's log probabilities
// with 20 alternatives on gpt-oss's 201,088-token vocabulary.
func BenchmarkLogprobs(b *testing.B) {
	const vocab = 201088
	for _, shape := range []struct {
		name   string
		logits []float32
	}{{"lm", lmLogits(vocab, 5)}, {"normal", normalLogits(vocab, 3)}} {
		for _, p := range []SamplingParams{DefaultSampling, {Temperature: 0.8, TopP: 1, RepetitionPenalty: 1.1}} {
			b.Run(fmt.Sprintf("%s/T=%v/penalty=%v", shape.name, p.Temperature, p.RepetitionPenalty), func(b *testing.B) {
				s := NewSampler(p, 1)
				history := []int32{1, 2, 3, 4, 5, 6, 7, 8}
				b.ReportAllocs()
				for b.Loop() {
					s.Logprobs(shape.logits, history, 7, MaxTopLogprobs)
				}
			})
		}
	}
}
