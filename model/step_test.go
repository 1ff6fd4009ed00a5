package model

import (
	"strings"
	"testing"
)

// TestStepErrors checks that a malformed batch is an error naming what is
// wrong, and that it leaves the pool usable.
func TestStepErrors(t *testing.T) {
	m := loadFixtureModel(t, "gptoss_mxfp4_q8", 8)
	kv, err := m.NewKV(8, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Free()
	ok := [][]int32{{0, 1}, {2, 3}}
	cases := []struct {
		chunk Chunk
		want  string
	}{
		{Chunk{Tokens: nil, Tables: ok}, "no tokens"},
		{Chunk{Tokens: []int32{1}, Pos: -1, Tables: ok}, "outside the model's context"},
		{Chunk{Tokens: []int32{1}, Tables: ok[:1]}, "1 block tables, the pool has 2 KV groups"},
		{Chunk{Tokens: []int32{1, 2, 3, 4, 5}, Pos: 4, Tables: ok}, "position 8 needs 3"},
		{Chunk{Tokens: []int32{1}, Pos: 5, Tables: [][]int32{{-1, 1}, {2, 3}}}, "group 0's block 0 (positions 0..3) is -1"},
		{Chunk{Tokens: []int32{1}, Pos: 5, Tables: [][]int32{{0, 1}, {2, 8}}}, "group 1's block 1 (positions 4..7) is 8"},
		{Chunk{Tokens: []int32{1, 99999}, Tables: ok}, "token 99999 (index 1)"},
		{Chunk{Tokens: make([]int32, 9), Tables: [][]int32{{0, 1, 2}, {3, 4, 5}}}, "9 tokens, want 1 to 8"},
	}
	for _, tc := range cases {
		_, err := m.Step(kv, &Batch{Chunks: []Chunk{tc.chunk}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("chunk %+v: error %v, want one mentioning %q", tc.chunk, err, tc.want)
		}
	}
	if _, err := m.Step(kv, &Batch{}); err == nil {
		t.Error("empty batch: no error")
	}
	other := loadFixtureModel(t, "gptoss_mxfp4_q8", 8)
	if _, err := other.Step(kv, &Batch{Chunks: []Chunk{{Tokens: []int32{1}, Tables: ok}}}); err == nil {
		t.Error("a pool of another model: no error")
	}
	// A window of 8: block 0 (positions 0..3) is out of sight from
	// position 12 on in the sliding group (group 1), so -1 is fine there.
	tables := [][]int32{{0, 1, 2, 3}, {-1, 5, 6, 7}}
	if _, err := m.Step(kv, &Batch{Chunks: []Chunk{{Tokens: []int32{1}, Pos: 12, Tables: tables, Logits: LastLogits}}}); err != nil {
		t.Errorf("sliding group with its out-of-window block given back: %v", err)
	}
}

// TestReadRows reads chosen rows of a step's logits (RowReader) and
// compares them with the same rows of Read, and refuses rows outside the
// step and a destination of the wrong size.
func TestReadRows(t *testing.T) {
	m := loadFixtureModel(t, "gpt2_tied_q8", 8)
	vocab := m.Config().VocabSize
	kv, err := m.NewKV(8, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Free()
	batch := &Batch{Chunks: []Chunk{
		{Tokens: []int32{5, 6, 7}, Tables: [][]int32{{0}}, Logits: AllLogits},
		{Tokens: []int32{9, 10}, Tables: [][]int32{{1}}, Logits: LastLogits},
	}}
	logits, err := m.Step(kv, batch)
	if err != nil {
		t.Fatal(err)
	}
	rr, ok := logits.(RowReader)
	if !ok {
		t.Fatal("the step's logits are no RowReader")
	}
	all := make([]float32, logits.Rows()*vocab)
	if err := logits.Read(all); err != nil {
		t.Fatal(err)
	}
	if logits.Rows() != 4 {
		t.Fatalf("%d rows, want 4", logits.Rows())
	}
	// The model's gather buffers are reused, smaller and then larger.
	var got []float32
	for _, rows := range [][]int32{{3, 0, 2}, {1}, {0, 1, 2, 3, 3}} {
		got = make([]float32, len(rows)*vocab)
		if err := rr.ReadRows(rows, got); err != nil {
			t.Fatal(err)
		}
		for i, r := range rows {
			for c := range vocab {
				if got[i*vocab+c] != all[int(r)*vocab+c] {
					t.Fatalf("rows %v: row %d (read as %d), column %d: %v, Read has %v", rows, r, i, c, got[i*vocab+c], all[int(r)*vocab+c])
				}
			}
		}
	}
	if err := rr.ReadRows([]int32{4}, got[:vocab]); err == nil || !strings.Contains(err.Error(), "row 4 is outside the step's 4 rows") {
		t.Errorf("row 4 of 4: %v", err)
	}
	if err := rr.ReadRows([]int32{1}, got); err == nil || !strings.Contains(err.Error(), "for 1 rows") {
		t.Errorf("wrong destination size: %v", err)
	}
}
