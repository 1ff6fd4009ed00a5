// Sampling on the device: one block draws the next token of one row of
// logits, so that a batch's whole vocabulary-sized rows never cross to the
// host, only the chosen ids.
//
// The pipeline is the engine's (engine/sampler.go): repetition penalty on
// the listed tokens, greedy when the temperature is 0, else tokens more
// than 30 temperatures below the best are dropped (probability < e^-30),
// then top-k (ties to the lower id), top-p (the shortest run of most likely
// tokens, ties to the lower id, whose mass reaches p), min-p (weight at
// least min_p times the best's), and one draw. Both select steps are radix
// selects over the logits' order-preserving 32-bit keys: four passes of a
// 256-bin histogram of counts (top-k) or of weights in fixed point (top-p,
// so that the sums are exact and the result does not depend on thread
// timing). The draw's number comes from a counter-based generator keyed by
// the request's seed and the token's position, so a row's token does not
// depend on the other rows of the batch.
//
// Threads own contiguous runs of the row (SAMPLE_THREADS of them), so that
// every order-dependent step (ties, the draw) walks tokens in id order: a
// run's total, an exclusive scan over the runs, then a walk within one.

#include "common.cuh"

#ifndef SAMPLE_THREADS // from Go as -DSAMPLE_THREADS (kernelDefines); this default serves standalone checks
#define SAMPLE_THREADS 1024
#endif
#define SAMPLE_NEGLIGIBLE 30.f
#define SAMPLE_FIXED 1099511627776.0 // 2^40: weights ≤ 1 in fixed point, a vocabulary of them fits 64 bits

#ifndef SAMPLE_PARAM_BYTES // from Go (kernelDefines); this default serves standalone checks
#define SAMPLE_PARAM_BYTES 40
#endif

// SampleParams mirrors the rows Sample (sample.go) writes: SAMPLE_PARAM_BYTES a row.
struct SampleParams {
    float temp, top_p, min_p, rep;
    int top_k, pad;
    unsigned long long seed, counter;
};
static_assert(sizeof(SampleParams) == SAMPLE_PARAM_BYTES, "SampleParams must match sample.go's rows");

// sample_key maps a float to a uint32 whose unsigned order is the float
// order.
__device__ __forceinline__ u32 sample_key(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// sample_uniform is a number in [0, 1) from (seed, counter): splitmix64
// of the pair, 53 bits.
__device__ __forceinline__ double sample_uniform(unsigned long long seed, unsigned long long counter) {
    unsigned long long z = seed + (counter + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    z = z * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

// Block-wide reductions and an exclusive scan over one value a thread;
// every thread gets the result.
__device__ double sample_sum(double v, double* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = 0;
    for (int w = 0; w < SAMPLE_THREADS / 32; w++) t += sh[w];
    return t;
}

__device__ double sample_exscan(double v, double* sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double x = v;
    for (int o = 1; o < 32; o <<= 1) {
        double y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    double before = 0;
    for (int w = 0; w < warp; w++) before += sh[w];
    return before + x - v;
}

// sample_unkey is the float whose sample_key is k.
__device__ __forceinline__ float sample_unkey(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k ^ 0x80000000u) : ~k);
}

// sample_state is what the filters decided, the same in every thread.
struct sample_state {
    float floor, invT, minw;
    u32 kkey;       // top-k: keys above survive, and the first ktie ties
    int ktie;       // -1: no top-k cut
    u32 pkey;       // top-p: likewise
    long long ptie; // -1: no top-p cut
};

// sample_kept reports whether token i (logit l) survives top-k and, with
// upto_p, top-p. tk and tp count the ties at the two cuts met so far in id
// order (from the thread's exclusive scan of the runs before its own).
__device__ __forceinline__ bool sample_kept(const sample_state& s, float l, int& tk, long long& tp, bool upto_p) {
    if (!(l >= s.floor)) return false;
    u32 k = sample_key(l);
    if (s.ktie >= 0) {
        if (k < s.kkey) return false;
        if (k == s.kkey && tk++ >= s.ktie) return false;
    }
    if (upto_p && s.ptie >= 0) {
        if (k < s.pkey) return false;
        if (k == s.pkey && tp++ >= s.ptie) return false;
    }
    return true;
}

// sample_fixed is a weight in the fixed point of top-p's sums.
__device__ __forceinline__ unsigned long long sample_fixed(float l, float m, float invT) {
    return (unsigned long long)((double)expf((l - m) * invT) * SAMPLE_FIXED);
}

// sample_pick finds, for a 256-bin histogram of the keys under the current
// prefix, the highest bin b whose keys with those above reach want, and
// returns it with what the bins above hold (every thread gets both).
__device__ u32 sample_pick(const unsigned long long* hist, unsigned long long want, unsigned long long& above,
                           u32* shu, unsigned long long* shl) {
    if (threadIdx.x == 0) {
        unsigned long long a = 0;
        int b = 255;
        for (; b > 0 && a + hist[b] < want; b--) a += hist[b];
        shu[0] = b;
        shl[0] = a;
    }
    __syncthreads();
    u32 b = shu[0];
    above = shl[0];
    __syncthreads();
    return b;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(int* ids, float* logits, int vocab, const SampleParams* params, const int* pen_off, const int* pen_ids) {
    __shared__ double shd[32];
    __shared__ unsigned long long hist[256];
    __shared__ unsigned long long shl[2];
    __shared__ u32 shu[1];
    __shared__ int shi[32];
    __shared__ float shf[32];
    __shared__ int chosen;
    const int row = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const SampleParams P = params[row];
    float* x = logits + (long long)row * vocab;
    const int run = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int lo = min(vocab, tid * run), hi = min(vocab, lo + run);

    // Repetition penalty, from the original logit of each listed token (the
    // list has each token once).
    if (P.rep != 1.f)
        for (int i = pen_off[row] + tid; i < pen_off[row + 1]; i += SAMPLE_THREADS) {
            float l = x[pen_ids[i]];
            x[pen_ids[i]] = l > 0.f ? l / P.rep : l * P.rep;
        }
    __syncthreads();

    // The largest logit (NaN ignored) and its first id.
    float m = NEG_INF;
    int am = 0x7fffffff;
    for (int i = lo; i < hi; i++)
        if (x[i] > m) m = x[i], am = i;
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        int a2 = __shfl_xor_sync(0xffffffffu, am, o);
        if (m2 > m || (m2 == m && a2 < am)) m = m2, am = a2;
    }
    if (lane == 0) shf[warp] = m, shi[warp] = am;
    __syncthreads();
    m = shf[0], am = shi[0];
    for (int w = 1; w < SAMPLE_THREADS / 32; w++)
        if (shf[w] > m || (shf[w] == m && shi[w] < am)) m = shf[w], am = shi[w];
    if (am == 0x7fffffff) am = 0;
    if (P.temp == 0.f || isinf(m)) {
        if (tid == 0) ids[row] = am;
        return;
    }

    sample_state s;
    s.invT = 1.f / P.temp;
    s.floor = m - SAMPLE_NEGLIGIBLE * P.temp;
    s.minw = P.min_p;
    s.ktie = -1;
    s.ptie = -1;
    unsigned long long above;

    // Top-k: the k-th largest key among the tokens above the floor; of the
    // tokens with that key, the lowest ids are taken.
    int tkBase = 0;
    if (P.top_k > 0) {
        int n = 0;
        for (int i = lo; i < hi; i++) n += x[i] >= s.floor;
        if ((int)sample_sum((double)n, shd) > P.top_k) {
            u32 prefix = 0, mask = 0;
            unsigned long long want = P.top_k;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int b = tid; b < 256; b += SAMPLE_THREADS) hist[b] = 0;
                __syncthreads();
                for (int i = lo; i < hi; i++) {
                    float l = x[i];
                    u32 k = sample_key(l);
                    if (l >= s.floor && (k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255], 1ull);
                }
                __syncthreads();
                prefix |= sample_pick(hist, want, above, shu, shl) << shift;
                mask |= 255u << shift;
                want -= above;
            }
            s.kkey = prefix;
            s.ktie = (int)want;
            int ties = 0;
            for (int i = lo; i < hi; i++) ties += x[i] >= s.floor && sample_key(x[i]) == s.kkey;
            tkBase = (int)sample_exscan((double)ties, shd);
        }
    }

    // Top-p: the key where the most likely survivors' weights reach p of
    // their total, in fixed point (integer sums, exact in any order).
    long long tpBase = 0;
    if (P.top_p < 1.f) {
        if (tid == 0) shl[1] = 0;
        __syncthreads();
        unsigned long long z = 0;
        int tk = tkBase;
        long long tp = 0;
        for (int i = lo; i < hi; i++)
            if (sample_kept(s, x[i], tk, tp, false)) z += sample_fixed(x[i], m, s.invT);
        atomicAdd(&shl[1], z);
        __syncthreads();
        unsigned long long want = max((unsigned long long)((double)P.top_p * (double)shl[1]), 1ull);
        __syncthreads();
        u32 prefix = 0, mask = 0;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += SAMPLE_THREADS) hist[b] = 0;
            __syncthreads();
            tk = tkBase;
            for (int i = lo; i < hi; i++) {
                float l = x[i];
                u32 k = sample_key(l);
                if (sample_kept(s, l, tk, tp, false) && (k & mask) == prefix)
                    atomicAdd(&hist[(k >> shift) & 255], sample_fixed(l, m, s.invT));
            }
            __syncthreads();
            prefix |= sample_pick(hist, want, above, shu, shl) << shift;
            mask |= 255u << shift;
            want -= above;
        }
        // Ties at the cut weigh the same: take, lowest ids first, as many
        // as it takes to reach p.
        unsigned long long w = max(sample_fixed(sample_unkey(prefix), m, s.invT), 1ull);
        s.pkey = prefix;
        s.ptie = max((long long)((want + w - 1) / w), 1ll);
        long long ties = 0;
        tk = tkBase;
        for (int i = lo; i < hi; i++)
            if (sample_kept(s, x[i], tk, tp, false) && sample_key(x[i]) == s.pkey) ties++;
        tpBase = (long long)sample_exscan((double)ties, shd);
    }

    // The draw: the survivors' weights in id order (min-p drops those
    // under min_p times the best, which weighs 1), one number scaled by
    // their total, found first among the runs and then within one.
    double mass = 0;
    int tk = tkBase;
    long long tp = tpBase;
    for (int i = lo; i < hi; i++) {
        float l = x[i];
        if (!sample_kept(s, l, tk, tp, true)) continue;
        float w = expf((l - m) * s.invT);
        if (w >= s.minw) mass += w;
    }
    double before = sample_exscan(mass, shd);
    double total = sample_sum(mass, shd);
    double target = sample_uniform(P.seed, P.counter) * total;
    if (tid == 0) chosen = -1;
    __syncthreads();
    if (target >= before && target < before + mass) {
        double acc = before;
        int last = -1;
        tk = tkBase;
        tp = tpBase;
        for (int i = lo; i < hi; i++) {
            float l = x[i];
            if (!sample_kept(s, l, tk, tp, true)) continue;
            float w = expf((l - m) * s.invT);
            if (w < s.minw) continue;
            last = i;
            acc += w;
            if (target < acc) break;
        }
        chosen = last;
    }
    __syncthreads();
    if (tid == 0) ids[row] = chosen >= 0 ? chosen : am; // a rounding gap at the top: the best token
}
