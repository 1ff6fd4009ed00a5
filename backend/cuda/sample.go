package cuda

import (
	"encoding/binary"
	"math"
	"unsafe"

	"orcd/backend"
)

var _ backend.Sampler = (*Backend)(nil)

// Sample draws one token per row on the device (sample.cu) and reads back
// the ids.
func (b *Backend) Sample(logits backend.Tensor, rows []backend.SampleParams, ids []int32) error {
	const op = "Sample"
	lt := b.f32(logits, op, "logits")
	n := len(rows)
	if lt == nil || n == 0 {
		return b.Err()
	}
	vocab := backend.Cols(lt)
	if n > backend.Rows(lt) || len(ids) < n {
		b.failf("%s: %d rows from logits %v into %d ids", op, n, lt.dims, len(ids))
		return b.Err()
	}
	// One upload: the rows' parameters, the offsets of their penalized
	// tokens (n+1), the tokens, then room for the ids.
	pens := 0
	for _, r := range rows {
		pens += len(r.Penalized)
	}
	paramOff, offOff := 0, n*sampleParamBytes
	idsOff := offOff + 4*(n+1)
	outOff := idsOff + 4*pens
	buf := make([]byte, outOff)
	le := binary.LittleEndian
	at := 0
	for i, r := range rows {
		p := buf[paramOff+i*sampleParamBytes:]
		le.PutUint32(p[0:], math.Float32bits(r.Temperature))
		le.PutUint32(p[4:], math.Float32bits(r.TopP))
		le.PutUint32(p[8:], math.Float32bits(r.MinP))
		le.PutUint32(p[12:], math.Float32bits(r.RepetitionPenalty))
		le.PutUint32(p[16:], uint32(r.TopK))
		le.PutUint64(p[24:], r.Seed)
		le.PutUint64(p[32:], r.Counter)
		le.PutUint32(buf[offOff+4*i:], uint32(at))
		for _, t := range r.Penalized {
			if t < 0 || int(t) >= vocab {
				b.failf("%s: row %d: penalized token %d outside the vocabulary [0, %d)", op, i, t, vocab)
				return b.Err()
			}
			le.PutUint32(buf[idsOff+4*at:], uint32(t))
			at++
		}
	}
	le.PutUint32(buf[offOff+4*n:], uint32(at))
	ws, ok := b.workspace(op, "sample", int64(outOff+4*n))
	if !ok {
		return b.Err()
	}
	b.writeRaw(ws, unsafe.Pointer(&buf[0]), len(buf), op)
	func() {
		defer b.bind()()
		b.sampleRows(ws+uintptr(outOff), lt.ptr, vocab, ws+uintptr(paramOff), ws+uintptr(offOff), ws+uintptr(idsOff), n)
	}()
	if !b.failed() {
		b.readRaw(unsafe.Pointer(&ids[0]), ws+uintptr(outOff), 4*n, op)
	}
	return b.Err()
}
