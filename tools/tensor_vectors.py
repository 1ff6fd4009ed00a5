#!/usr/bin/env python3
"""Reference vectors for orcd's tensor package (tensor/testdata/tensor_vectors.json).

Written from the ggml block-format definitions (ggml-common.h block structs,
the dequantize_row_* and quantize_row_{q8_0,mxfp4}_ref semantics), not from
orcd's Go code, using only the Python standard library so it runs anywhere:

  python3 tools/tensor_vectors.py > tensor/testdata/tensor_vectors.json

Float32 arithmetic is emulated by rounding every operation's float64 result
to float32 (struct 'f'). For +, -, * and / of float32 operands that equals
the float32 operation, because float64 holds the exact product/sum of two
float32s or rounds it innocuously (53 >= 2*24+2 bits). f16 encoding uses
struct 'e', CPython's own round-half-even binary16 packer.
"""
import json
import math
import random
import struct

SEED = 20261125


def f32(x):
    """Round a Python float to the nearest float32 (ties to even)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # rounds beyond the largest float32
        return math.copysign(math.inf, x)


def bits32(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def from_bits32(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def f16(h):
    """Decode binary16 bits (exact)."""
    return struct.unpack("<e", struct.pack("<H", h))[0]


def f16_bits(x):
    """Encode to binary16 bits, round half to even, overflow to +-Inf."""
    try:
        return struct.unpack("<H", struct.pack("<e", x))[0]
    except OverflowError:
        return 0xFC00 if x < 0 else 0x7C00


def u16(b, off):
    return b[off] | b[off + 1] << 8


# f16 scales worth covering: 1, smallest and largest subnormal, largest
# normal, negative, -0, +0; plus random normal ones.
SPECIAL_SCALES = [0x3C00, 0x0001, 0x03FF, 0x7BFF, 0xB800, 0x8000, 0x0000]


def pick_scale(rng, i):
    if i < len(SPECIAL_SCALES):
        return SPECIAL_SCALES[i]
    return rng.randrange(0x0400, 0x7C00) | rng.choice([0, 0x8000])  # random normal


def put16(b, off, v):
    b[off] = v & 0xFF
    b[off + 1] = v >> 8


# ---- dequantization, one block at a time ------------------------------------

def deq_q4_0(b):
    d = f16(u16(b, 0))
    y = [0.0] * 32
    for j in range(16):
        y[j] = f32(((b[2 + j] & 15) - 8) * d)
        y[j + 16] = f32(((b[2 + j] >> 4) - 8) * d)
    return y


def deq_q4_1(b):
    d, m = f16(u16(b, 0)), f16(u16(b, 2))
    y = [0.0] * 32
    for j in range(16):
        y[j] = f32(f32((b[4 + j] & 15) * d) + m)
        y[j + 16] = f32(f32((b[4 + j] >> 4) * d) + m)
    return y


def fifth_bits(b, off):
    return b[off] | b[off + 1] << 8 | b[off + 2] << 16 | b[off + 3] << 24


def deq_q5_0(b):
    d = f16(u16(b, 0))
    qh = fifth_bits(b, 2)
    y = [0.0] * 32
    for j in range(16):
        lo = (b[6 + j] & 15) | ((qh >> j) & 1) << 4
        hi = (b[6 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4
        y[j] = f32((lo - 16) * d)
        y[j + 16] = f32((hi - 16) * d)
    return y


def deq_q5_1(b):
    d, m = f16(u16(b, 0)), f16(u16(b, 2))
    qh = fifth_bits(b, 4)
    y = [0.0] * 32
    for j in range(16):
        lo = (b[8 + j] & 15) | ((qh >> j) & 1) << 4
        hi = (b[8 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4
        y[j] = f32(f32(lo * d) + m)
        y[j + 16] = f32(f32(hi * d) + m)
    return y


def deq_q8_0(b):
    d = f16(u16(b, 0))
    return [f32(((q ^ 0x80) - 0x80) * d) for q in b[2:34]]


def k4_scale_min(s, j):
    """6-bit scale and min of sub-block j from the 12 packed bytes."""
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 15) | (s[j - 4] >> 6) << 4, (s[j + 4] >> 4) | (s[j] >> 6) << 4


def deq_q4_k(b):
    d, dmin = f16(u16(b, 0)), f16(u16(b, 2))
    s, qs = b[4:16], b[16:144]
    y = []
    for sub in range(8):
        sc, m = k4_scale_min(s, sub)
        dl, ml = f32(d * sc), f32(dmin * m)
        pair = qs[32 * (sub // 2): 32 * (sub // 2) + 32]
        for l in range(32):
            q = pair[l] & 15 if sub % 2 == 0 else pair[l] >> 4
            y.append(f32(f32(dl * q) - ml))
    return y


def deq_q5_k(b):
    d, dmin = f16(u16(b, 0)), f16(u16(b, 2))
    s, qh, qs = b[4:16], b[16:48], b[48:176]
    y = []
    for sub in range(8):
        sc, m = k4_scale_min(s, sub)
        dl, ml = f32(d * sc), f32(dmin * m)
        pair = qs[32 * (sub // 2): 32 * (sub // 2) + 32]
        for l in range(32):
            q = pair[l] & 15 if sub % 2 == 0 else pair[l] >> 4
            q |= ((qh[l] >> sub) & 1) << 4
            y.append(f32(f32(dl * q) - ml))
    return y


def deq_q6_k(b):
    ql, qh, sc = b[0:128], b[128:192], b[192:208]
    d = f16(u16(b, 208))
    y = [0.0] * 256
    for e in range(256):
        half, r = divmod(e, 128)       # r in 0..127 within the half
        quarter, l = divmod(r, 32)     # which of the four 32-element rows
        lo_byte = ql[64 * half + l + (32 if quarter in (1, 3) else 0)]
        low4 = lo_byte & 15 if quarter in (0, 1) else lo_byte >> 4
        high2 = (qh[32 * half + l] >> (2 * quarter)) & 3
        q = (low4 | high2 << 4) - 32
        scale = (sc[e // 16] ^ 0x80) - 0x80
        y[e] = f32(f32(d * scale) * q)
    return y


E2M1_DOUBLED = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


def deq_mxfp4(b):
    d = math.ldexp(1.0, b[0] - 128)  # E8M0 half scale, exact (2^-128 .. 2^127)
    y = [0.0] * 32
    for j in range(16):
        y[j] = f32(E2M1_DOUBLED[b[1 + j] & 15] * d)
        y[j + 16] = f32(E2M1_DOUBLED[b[1 + j] >> 4] * d)
    return y


# type -> (block bytes, elements, decoder, offsets of f16 scale fields)
TYPES = {
    "Q4_0": (18, 32, deq_q4_0, [0]),
    "Q4_1": (20, 32, deq_q4_1, [0, 2]),
    "Q5_0": (22, 32, deq_q5_0, [0]),
    "Q5_1": (24, 32, deq_q5_1, [0, 2]),
    "Q8_0": (34, 32, deq_q8_0, [0]),
    "Q4_K": (144, 256, deq_q4_k, [0, 2]),
    "Q5_K": (176, 256, deq_q5_k, [0, 2]),
    "Q6_K": (210, 256, deq_q6_k, [208]),
    "MXFP4": (17, 32, deq_mxfp4, []),
}


def dequant_cases(rng):
    cases = []
    for name, (size, _, decode, scale_offs) in TYPES.items():
        nblocks = 9 if size < 100 else 4
        blocks = bytearray()
        want = []
        for i in range(nblocks):
            b = bytearray(rng.randrange(256) for _ in range(size))
            for k, off in enumerate(scale_offs):
                put16(b, off, pick_scale(rng, i if k == 0 else rng.randrange(16)))
            if name == "MXFP4":
                b[0] = [0, 1, 2, 127, 128, 254, 255, rng.randrange(256), rng.randrange(256)][i]
            blocks += b
            want += [bits32(v) for v in decode(bytes(b))]
        cases.append({"type": name, "blocks": blocks.hex(), "want": want})
    return cases


# ---- quantization ------------------------------------------------------------

def quant_q8_0(x):
    amax = max(abs(v) for v in x)
    d = f32(amax / 127)
    inv = f32(1 / d) if d else 0.0
    out = bytearray(struct.pack("<H", f16_bits(d)))
    for v in x:
        p = f32(v * inv)
        q = int(math.floor(abs(p) + 0.5))  # round half away from zero
        q = -q if p < 0 else q
        out.append(q & 0xFF)
    return out


def quant_mxfp4(x):
    amax = max(abs(v) for v in x)
    e = 0
    if amax > 0:
        # floor(log2f(amax)) with a correctly rounded float32 log2.
        e = max(0, math.floor(f32(math.log2(amax))) - 2 + 127)
    d = math.ldexp(1.0, e - 128)
    codes = []
    for v in x:
        best, best_err = 0, None
        for code, k in enumerate(E2M1_DOUBLED):
            err = abs(f32(f32(k * d) - v))
            if best_err is None or err < best_err:
                best, best_err = code, err
        codes.append(best)
    return bytearray([e] + [codes[j] | codes[j + 16] << 4 for j in range(16)])


def quant_inputs(rng, kind):
    """Blocks of 32 float32 values: random magnitudes, plus grids that hit ties."""
    blocks = []
    for i in range(24):
        scale = 10 ** rng.uniform(-6, 6)
        if kind == "MXFP4" and i >= 16:
            # Values on a quarter-step grid of a power-of-two scale, so many
            # fall exactly between two codes.
            s = math.ldexp(1.0, rng.randrange(-140, 120))
            xs = [f32(rng.randrange(-28, 29) * 0.25 * s) for _ in range(32)]
        elif kind == "Q8_0" and i >= 16:
            # amax 127 makes d = 1, so halves are exact ties.
            xs = [f32(rng.randrange(-254, 255) / 2) for _ in range(31)] + [127.0]
        else:
            xs = [f32(rng.gauss(0, 1) * scale) for _ in range(32)]
        blocks.append(xs)
    return blocks


def quant_cases(rng):
    cases = []
    for name, quant in (("Q8_0", quant_q8_0), ("MXFP4", quant_mxfp4)):
        x, want = [], bytearray()
        for xs in quant_inputs(rng, name):
            x += [bits32(v) for v in xs]
            want += quant(xs)
        cases.append({"type": name, "x": x, "want": want.hex()})
    return cases


def f16_case(rng):
    """float32 values around binary16's range and their binary16 encodings."""
    x, want = [], []
    for _ in range(3000):
        exp = rng.randrange(95, 146)  # float32 exponent field: 2^-32 .. 2^18
        b = rng.getrandbits(1) << 31 | exp << 23 | rng.getrandbits(23)
        if rng.random() < 0.3:
            b &= ~0x1FFF  # low 13 bits clear: exact or near a tie
            b |= rng.choice([0x1000, 0x0FFF, 0x1001, 0])
        v = from_bits32(b)
        x.append(b)
        want.append(f16_bits(v))
    return {"x": x, "want": want}


def main():
    rng = random.Random(SEED)
    doc = {
        "source": "tools/tensor_vectors.py (Python standard library, from the ggml format spec)",
        "seed": SEED,
        "dequantize": dequant_cases(rng),
        "quantize": quant_cases(rng),
        "f16": f16_case(rng),
    }
    print(json.dumps(doc, separators=(",", ":")))


if __name__ == "__main__":
    main()
