// Mixture-of-experts routing and the glue around the expert matmuls.

#define MOE_MAX_K 32

// moe_topk: one warp per token. Picks the k largest router logits (ties to
// the lower index), softmaxes them, and writes the (expert, weight) pairs
// sorted by expert so every later sum runs in ascending expert order.
extern "C" __global__ void moe_topk(int* ids, float* wts, const float* logits, int n, int nexp, int k) {
    int lane = threadIdx.x & 31;
    int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= n) return;
    const float* lg = logits + (i64)t * nexp;
    int chosen[MOE_MAX_K];
    float val[MOE_MAX_K];
    for (int j = 0; j < k; j++) {
        float best = NEG_INF;
        int bi = 0x7fffffff;
        for (int e = lane; e < nexp; e += 32) {
            bool taken = false;
            for (int c = 0; c < j; c++) taken |= chosen[c] == e;
            float v = lg[e];
            if (!taken && (v > best || (v == best && e < bi))) {
                best = v;
                bi = e;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi = oi;
            }
        }
        chosen[j] = bi;
        val[j] = best;
    }
    if (lane != 0) return;
    float sum = 0.f, top = val[0];
    for (int j = 0; j < k; j++) {
        val[j] = expf(val[j] - top);
        sum += val[j];
    }
    // insertion sort by expert id
    for (int j = 1; j < k; j++)
        for (int c = j; c > 0 && chosen[c - 1] > chosen[c]; c--) {
            int ti = chosen[c]; chosen[c] = chosen[c - 1]; chosen[c - 1] = ti;
            float tv = val[c]; val[c] = val[c - 1]; val[c - 1] = tv;
        }
    for (int j = 0; j < k; j++) {
        ids[t * k + j] = chosen[j];
        wts[t * k + j] = val[j] / sum;
    }
}

// moe_group: one block. Counting-sorts the n*k assignments by expert:
// starts[e]..starts[e+1]-1 are expert e's rows of the grouped buffers,
// xrows[r] is the token of grouped row r, and slot_row[a] the grouped row of
// assignment a = t*k + slot. counts must hold nexp ints.
extern "C" __global__ void moe_group(int* starts, int* xrows, int* slot_row, int* counts, const int* ids, int n,
                                     int k, int nexp) {
    int na = n * k;
    for (int e = threadIdx.x; e < nexp; e += blockDim.x) counts[e] = 0;
    __syncthreads();
    for (int a = threadIdx.x; a < na; a += blockDim.x) atomicAdd(&counts[ids[a]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int e = 0; e < nexp; e++) {
            starts[e] = s;
            s += counts[e];
            counts[e] = starts[e]; // becomes the fill cursor
        }
        starts[nexp] = s;
    }
    __syncthreads();
    for (int a = threadIdx.x; a < na; a += blockDim.x) {
        int r = atomicAdd(&counts[ids[a]], 1);
        xrows[r] = a / k;
        slot_row[a] = r;
    }
}

// moe_swiglu: g[i] = clamped_swiglu(g[i], u[i]) over n values.
extern "C" __global__ void moe_swiglu(float* g, const float* u, i64 n, float alpha, float limit) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        g[i] = clamped_swiglu(g[i], u[i], alpha, limit);
}

// moe_combine: dst[t] = Σ_slot wts[t][slot]·y[slot_row[t*k+slot]], one block per token.
extern "C" __global__ void moe_combine(float* dst, const float* y, const float* wts, const int* slot_row, int k,
                                       int hidden) {
    int t = blockIdx.x;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float s = 0.f;
        for (int j = 0; j < k; j++) s += wts[t * k + j] * y[(i64)slot_row[t * k + j] * hidden + c];
        dst[(i64)t * hidden + c] = s;
    }
}
