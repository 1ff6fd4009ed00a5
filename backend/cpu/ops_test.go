package cpu

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"orcd/backend"
	"orcd/tensor"
)

func TestEmbedEveryType(t *testing.T) {
	for name, b := range backends() {
		for _, typ := range tensor.Types() {
			t.Run(fmt.Sprintf("%s/%s", name, typ), func(t *testing.T) {
				r := newRand(t)
				hidden, vocab := testIn(typ), 11
				raw := randWeightBytes(r, typ, hidden*vocab)
				table := must(b.Upload("tok", typ, []int{hidden, vocab}, raw))
				ids := []int32{3, 0, 10, 3, 7, 99} // only the first 5 are used
				dst := poisoned(t, b, 5, hidden)
				b.Embed(dst, table, ints(t, b, ids))
				full := dequant(t, typ, raw, hidden*vocab)
				var want []float64
				for _, id := range ids[:5] {
					want = append(want, full[int(id)*hidden:int(id+1)*hidden]...)
				}
				compare(t, "dst", read(t, b, dst), want, uniformTol(want, 0, 0))
			})
		}
	}
}

func TestEmbedBadID(t *testing.T) {
	b := New()
	table := must(b.Upload("tok", tensor.F32, []int{4, 3}, make([]byte, 48)))
	b.Embed(must(b.NewF32(2, 4)), table, ints(t, b, []int32{1, 3}))
	if err := b.Sync(); err == nil {
		t.Error("id 3 in a 3-row table: no error")
	}
	b.Embed(must(b.NewF32(2, 4)), table, ints(t, b, []int32{1}))
	if err := b.Sync(); err == nil {
		t.Error("2 rows from 1 id: no error")
	}
}

func TestAdd(t *testing.T) {
	for name, b := range backends() {
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			rows, cols := 5, 7000 // enough elements to be split across workers
			av, bv := randF32(r, rows*cols, 1), randF32(r, rows*cols, 1)
			want := make([]float64, len(av))
			for i := range want {
				want[i] = float64(av[i]) + float64(bv[i])
			}
			tol := uniformTol(want, 1e-7, 0)
			a, bb := activation(t, b, rows, cols, av), activation(t, b, rows, cols, bv)
			dst := poisoned(t, b, rows, cols)
			b.Add(dst, a, bb)
			compare(t, "dst", read(t, b, dst), want, tol)
			b.Add(a, a, bb) // aliasing the first input
			compare(t, "a+=b", read(t, b, a), want, tol)
			sum := read(t, b, a)
			b.Add(bb, a, bb) // aliasing the second input
			for i := range want {
				want[i] = float64(sum[i]) + float64(bv[i])
				tol[i] = 1e-7 * (math.Abs(float64(sum[i])) + math.Abs(float64(bv[i])))
			}
			compare(t, "b=a+b", read(t, b, bb), want, tol)
			b.Add(dst, a, must(b.NewF32(rows, cols-1)))
			if b.Sync() == nil {
				t.Error("mismatched shapes: no error")
			}
		})
	}
}

func TestCopyCols(t *testing.T) {
	b := New()
	r := newRand(t)
	rows, cols := 3, 12
	sv := randF32(r, rows*cols, 1)
	src := activation(t, b, rows, cols, sv)
	dst := poisoned(t, b, rows, 4)
	b.CopyCols(dst, src, 8)
	var want []float64
	for i := 0; i < rows; i++ {
		for c := 8; c < 12; c++ {
			want = append(want, float64(sv[i*cols+c]))
		}
	}
	compare(t, "dst", read(t, b, dst), want, uniformTol(want, 0, 0))
	b.CopyCols(dst, src, 9)
	if b.Sync() == nil {
		t.Error("columns 9..12 of 12: no error")
	}
}

func TestLayerNorm(t *testing.T) {
	for name, b := range backends() {
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			rows, cols := 6, 77
			xv := randF32(r, rows*cols, 3)
			for i := range xv {
				xv[i] += 5 // a large mean makes a one-pass variance lose precision
			}
			wv, bv := randF32(r, cols, 1), randF32(r, cols, 1)
			const eps = 1e-5
			want := make([]float64, rows*cols)
			for i := 0; i < rows; i++ {
				row := xv[i*cols : (i+1)*cols]
				var mean, v float64
				for _, x := range row {
					mean += float64(x) / float64(cols)
				}
				for _, x := range row {
					v += (float64(x) - mean) * (float64(x) - mean) / float64(cols)
				}
				for c, x := range row {
					want[i*cols+c] = (float64(x)-mean)/math.Sqrt(v+eps)*float64(wv[c]) + float64(bv[c])
				}
			}
			x := activation(t, b, rows, cols, xv)
			w := must(b.Upload("w", tensor.F32, []int{cols}, f32Bytes(wv)))
			bias := must(b.Upload("b", tensor.F32, []int{cols}, f32Bytes(bv)))
			dst := poisoned(t, b, rows, cols)
			b.LayerNorm(dst, x, w, bias, eps)
			tol := uniformTol(want, 1e-6, 1e-6)
			compare(t, "dst", read(t, b, dst), want, tol)
			b.LayerNorm(x, x, w, bias, eps)
			compare(t, "in place", read(t, b, x), want, tol)
		})
	}
}

func TestRMSNorm(t *testing.T) {
	for name, b := range backends() {
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			rows, cols := 6, 77
			xv, wv := randF32(r, rows*cols, 3), randF32(r, cols, 1)
			const eps = 1e-5
			want := make([]float64, rows*cols)
			for i := 0; i < rows; i++ {
				row := xv[i*cols : (i+1)*cols]
				var ms float64
				for _, x := range row {
					ms += float64(x) * float64(x) / float64(cols)
				}
				for c, x := range row {
					want[i*cols+c] = float64(x) / math.Sqrt(ms+eps) * float64(wv[c])
				}
			}
			x := activation(t, b, rows, cols, xv)
			w := must(b.Upload("w", tensor.F32, []int{cols}, f32Bytes(wv)))
			dst := poisoned(t, b, rows, cols)
			b.RMSNorm(dst, x, w, eps)
			tol := uniformTol(want, 1e-6, 1e-7)
			compare(t, "dst", read(t, b, dst), want, tol)
			b.RMSNorm(x, x, w, eps)
			compare(t, "in place", read(t, b, x), want, tol)
		})
	}
}

// TestAddRMSNorm checks the fused op against Add then RMSNorm.
func TestAddRMSNorm(t *testing.T) {
	for name, b := range backends() {
		t.Run(name, func(t *testing.T) {
			r := newRand(t)
			rows, cols := 5, 64
			xv, dv, wv := randF32(r, rows*cols, 3), randF32(r, rows*cols, 1), randF32(r, cols, 1)
			const eps = 1e-5
			w := must(b.Upload("w", tensor.F32, []int{cols}, f32Bytes(wv)))
			delta := activation(t, b, rows, cols, dv)

			x1 := activation(t, b, rows, cols, xv)
			want := poisoned(t, b, rows, cols)
			b.Add(x1, x1, delta)
			b.RMSNorm(want, x1, w, eps)
			wantX, wantDst := read(t, b, x1), read(t, b, want)

			x2 := activation(t, b, rows, cols, xv)
			dst := poisoned(t, b, rows, cols)
			b.AddRMSNorm(dst, x2, delta, w, eps)
			for what, pair := range map[string][2][]float32{"x": {read(t, b, x2), wantX}, "dst": {read(t, b, dst), wantDst}} {
				for i := range pair[1] {
					if pair[0][i] != pair[1][i] {
						t.Fatalf("%s[%d] = %v, Add then RMSNorm gives %v", what, i, pair[0][i], pair[1][i])
					}
				}
			}
		})
	}
}

func TestGELU(t *testing.T) {
	b := NewWithThreads(3)
	r := newRand(t)
	rows, cols := 4, 3001
	xv := randF32(r, rows*cols, 3)
	xv[0], xv[1], xv[2] = 0, -20, 20
	want := make([]float64, len(xv))
	for i, x := range xv {
		v := float64(x)
		want[i] = 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
	}
	x := activation(t, b, rows, cols, xv)
	dst := poisoned(t, b, rows, cols)
	b.GELU(dst, x)
	compare(t, "dst", read(t, b, dst), want, uniformTol(want, 1e-6, 1e-7))
}

func TestRoPE(t *testing.T) {
	for name, b := range backends() {
		for _, mode := range []backend.RoPEMode{backend.RoPENeoX, backend.RoPENormal} {
			t.Run(fmt.Sprintf("%s/mode=%d", name, mode), func(t *testing.T) {
				r := newRand(t)
				heads, headDim := 3, 10
				cols := heads * headDim
				pos := []int32{0, 1, 7, 130, 5000}
				rows := len(pos)
				half := headDim / 2
				inv := make([]float32, half)
				for i := range inv {
					inv[i] = float32(math.Pow(10000, -2*float64(i)/float64(headDim)))
				}
				const mscale = 1.3
				xv := randF32(r, rows*cols, 1)
				want := make([]float64, len(xv))
				for i, p := range pos {
					for h := 0; h < heads; h++ {
						base := i*cols + h*headDim
						for k := 0; k < half; k++ {
							// Pair k: (k, k+half) in NeoX, (2k, 2k+1) in Normal.
							e0, e1 := base+k, base+k+half
							if mode == backend.RoPENormal {
								e0, e1 = base+2*k, base+2*k+1
							}
							// The angle is the float32 product, as in HF's float32 path.
							angle := float64(float32(p) * inv[k])
							c, s := mscale*math.Cos(angle), mscale*math.Sin(angle)
							a, bb := float64(xv[e0]), float64(xv[e1])
							want[e0] = a*c - bb*s
							want[e1] = bb*c + a*s
						}
					}
				}
				x := activation(t, b, rows, cols, xv)
				b.RoPE(x, ints(t, b, pos), activation(t, b, 1, half, inv), backend.RoPEParams{HeadDim: headDim, Mode: mode, MScale: mscale})
				compare(t, "x", read(t, b, x), want, uniformTol(want, 1e-6, 1e-6))
				b.RoPE(x, ints(t, b, pos), activation(t, b, 1, half, inv), backend.RoPEParams{HeadDim: 7, Mode: mode, MScale: mscale})
				if b.Sync() == nil {
					t.Error("odd headDim: no error")
				}
			})
		}
	}
}

func TestStoreKV(t *testing.T) {
	b := New()
	r := newRand(t)
	capRows, cols := 5, 6
	kc, vc := must(b.NewKVCache(capRows, cols)), must(b.NewKVCache(capRows, cols))
	kv, vv := randF32(r, 2*cols, 1), randF32(r, 2*cols, 1)
	b.StoreKV(kc, vc, activation(t, b, 2, cols, kv), activation(t, b, 2, cols, vv), ints(t, b, []int32{4, 1}))
	gotK, gotV := read(t, b, kc), read(t, b, vc)
	for c := 0; c < cols; c++ {
		if gotK[4*cols+c] != kv[c] || gotK[1*cols+c] != kv[cols+c] || gotV[4*cols+c] != vv[c] || gotV[cols+c] != vv[cols+c] {
			t.Fatalf("column %d: rows not stored at slots 4 and 1", c)
		}
		if gotK[c] != 0 || gotV[2*cols+c] != 0 {
			t.Fatalf("column %d: an unused slot was written", c)
		}
	}
	b.StoreKV(kc, vc, activation(t, b, 1, cols, kv), activation(t, b, 1, cols, vv), ints(t, b, []int32{5}))
	if b.Sync() == nil {
		t.Error("slot 5 of 5: no error")
	}
}

// TestTensorBookkeeping checks Allocated, Free, Close and the sticky error.
func TestTensorBookkeeping(t *testing.T) {
	b := New()
	x := must(b.NewF32(3, 4))
	ids := must(b.NewI32(5))
	w := must(b.Upload("w", tensor.Q8_0, []int{32, 2}, make([]byte, 68)))
	if got, want := b.Allocated(), int64(48+20+68); got != want {
		t.Errorf("Allocated = %d, want %d", got, want)
	}
	if got := x.Dims(); len(got) != 2 || got[0] != 4 || got[1] != 3 || backend.Rows(x) != 3 || backend.Cols(x) != 4 {
		t.Errorf("Dims = %v, want [4 3]", got)
	}
	b.Free(x)
	b.Free(x) // twice is harmless
	b.Free(nil)
	if got, want := b.Allocated(), int64(20+68); got != want {
		t.Errorf("after Free: Allocated = %d, want %d", got, want)
	}
	b.GELU(x, x)
	err := b.Err()
	if err == nil {
		t.Fatal("op on a freed tensor: no error")
	}
	b.Add(ids, ids, ids) // a second failure must not replace the first
	if got := b.ReadF32(w, make([]float32, 1)); got == nil || got.Error() != err.Error() {
		t.Errorf("ReadF32 error = %v, want the first error %v", got, err)
	}
	if b.Sync() == nil || b.Sync() != nil {
		t.Error("Sync must return the error once and then clear it")
	}
	if _, err := b.Upload("w", tensor.Q8_0, []int{32, 2}, make([]byte, 67)); err == nil {
		t.Error("Upload with a short buffer: no error")
	}
	if _, err := b.Upload("w", tensor.Q8_0, []int{31, 2}, make([]byte, 68)); err == nil {
		t.Error("Upload with a partial block: no error")
	}
	b.Close()
	if got := b.Allocated(); got != 0 {
		t.Errorf("after Close: Allocated = %d", got)
	}
}

// TestParallelCoversRange checks that parallel hands out every index exactly
// once, with worker ids below the thread count, for awkward sizes.
func TestParallelCoversRange(t *testing.T) {
	for _, threads := range []int{1, 2, 3, 7} {
		b := NewWithThreads(threads)
		for _, n := range []int{0, 1, 5, 16, 17, 100, 1001} {
			for _, minChunk := range []int{0, 1, 4, 16, 2000} {
				hits := make([]int32, n)
				var bad atomic.Bool
				b.parallel(n, minChunk, func(worker, lo, hi int) {
					if worker < 0 || worker >= threads || lo >= hi {
						bad.Store(true)
					}
					for i := lo; i < hi; i++ {
						atomic.AddInt32(&hits[i], 1)
					}
				})
				for i, h := range hits {
					if h != 1 {
						t.Fatalf("threads %d, n %d, minChunk %d: index %d run %d times", threads, n, minChunk, i, h)
					}
				}
				if bad.Load() {
					t.Fatalf("threads %d, n %d, minChunk %d: bad worker id or empty chunk", threads, n, minChunk)
				}
			}
		}
	}
}

// TestParallelConcurrentCalls runs parallel from several goroutines at once
// on one backend, so that calls find its helper goroutines busy with
// another call, spinning, or gone (after a pause longer than helperSpin),
// and checks that each call still covers its range exactly once.
func TestParallelConcurrentCalls(t *testing.T) {
	b := NewWithThreads(3)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if i%50 == 49 {
					time.Sleep(2 * helperSpin)
				}
				n := 1 + (g*37+i*11)%300
				hits := make([]int32, n)
				b.parallel(n, 1, func(_, lo, hi int) {
					for j := lo; j < hi; j++ {
						atomic.AddInt32(&hits[j], 1)
					}
				})
				for j, h := range hits {
					if h != 1 {
						errs <- fmt.Sprintf("goroutine %d call %d: index %d of %d run %d times", g, i, j, n, h)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
