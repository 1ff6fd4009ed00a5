package engine

import (
	"testing"

	"orcd/backend"
	"orcd/model"
)

// deviceLogits samples "on the device": every row gets token 3, and like
// the CUDA kernel it changes the logits in place (the repetition penalty).
// Its rows can be read alone (model.RowReader), as the CUDA backend's.
type deviceLogits struct {
	data []float32
	read int // values read
}

func (l *deviceLogits) Rows() int              { return len(l.data) / 4 }
func (l *deviceLogits) Tensor() backend.Tensor { return nil }
func (l *deviceLogits) Read(d []float32) error { l.read += copy(d, l.data); return nil }
func (l *deviceLogits) ReadRows(rows []int32, d []float32) error {
	for i, r := range rows {
		l.read += copy(d[i*4:(i+1)*4], l.data[r*4:(r+1)*4])
	}
	return nil
}
func (l *deviceLogits) Sample(rows []backend.SampleParams, ids []int32) (bool, error) {
	for i := range rows {
		ids[i] = 3
	}
	for i := range l.data {
		l.data[i] = 100 // garbage for whoever reads after
	}
	return true, nil
}

type fixedConstraint struct {
	mask   []uint64
	forced int32
}

func (c fixedConstraint) Next(int) ([]uint64, int32) { return c.mask, c.forced }
func (c fixedConstraint) Accept(int32) error         { return nil }

// TestSampleConstrainedWithDeviceSampler: free rows keep the device's
// token; constrained rows are drawn on the host from the logits as the
// model left them, under their mask, or take their forced token.
func TestSampleConstrainedWithDeviceSampler(t *testing.T) {
	e := &Engine{vocab: 4, cfg: Config{CtxSize: 100}}
	greedy := SamplingParams{Temperature: 0, TopP: 1, RepetitionPenalty: 1}
	job := func(c Constraint) *Job {
		return &Job{req: Request{MaxTokens: 10, Sampling: greedy}, tokens: []int32{0}, computed: 1, prompt: []int32{0},
			sampler: NewSampler(greedy, 1), con: c}
	}
	jobs := []*Job{job(nil), job(fixedConstraint{mask: []uint64{1<<0 | 1<<2}, forced: -1}), job(fixedConstraint{forced: 1})}
	batch := &model.Batch{}
	for range jobs {
		batch.Chunks = append(batch.Chunks, model.Chunk{Tokens: []int32{0}, Logits: model.LastLogits, Decode: true})
	}
	// Row 1: greedy over the allowed {0, 2} picks 2 (logit 5 > 1).
	logits := &deviceLogits{data: []float32{0, 0, 0, 9, 1, 8, 5, 9, 0, 0, 0, 0}}
	ids, err := e.sample(logits, batch, jobs)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{3, 2, 1}; ids[0] != want[0] || ids[1] != want[1] || ids[2] != want[2] {
		t.Errorf("ids %v, want %v", ids, want)
	}
	if logits.read != 4 {
		t.Errorf("read %d logits, want the masked row's 4 alone", logits.read)
	}
}
