"""ggml tensor encodings and a GGUF v3 writer, in numpy, for the reference scripts.

Shared by tools/hf_conformance.py (the model conformance fixtures) and
tools/train_demo.py (the demo model). Written from the ggml block
specifications and the GGUF specification (ggml's docs/gguf.md), independent
of orcd's Go code. GGUF.tensor returns the values as the file stores them
(dequantized), so that a reference model can be run with exactly the weights
orcd will read.
"""

import struct

import numpy as np

# ---------------------------------------------------------------- ggml types

F32, F16, Q8_0, BF16, MXFP4 = 0, 1, 8, 30, 39


def f16_bits(x):
    return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def bf16_bits(x):
    """Rounds float32 to bfloat16 (nearest, ties to even) and returns the bits."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def quant_q8_0(x):
    """Q8_0: blocks of 32 as an f16 scale d then 32 int8 q; value = d*q."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    d = (amax / 127).astype(np.float16)
    dd = d.astype(np.float32)
    inv = np.where(dd > 0, 1 / np.where(dd > 0, dd, 1), 0)
    q = np.clip(np.rint(b * inv[:, None]), -127, 127).astype(np.int8)
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
    deq = dd[:, None] * q.astype(np.float32)
    return raw.tobytes(), deq.reshape(x.shape)


# MXFP4 code points: nibble k means FP4_VALUES[k] × 2^(e-127).
FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def quant_mxfp4(x):
    """MXFP4: blocks of 32 as one E8M0 exponent byte e, then 16 bytes; element j
    is the low nibble of byte j, element j+16 its high nibble."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=1)
    e = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6)), -127) + 127
    e = np.clip(e, 0, 254).astype(np.uint8)
    scale = np.exp2(e.astype(np.float32) - 127)
    scaled = b / scale[:, None]
    # nearest code point (over all 16, which include both signs)
    codes = np.abs(scaled[:, :, None] - FP4_VALUES[None, None, :]).argmin(axis=2).astype(np.uint8)
    qs = codes[:, :16] | (codes[:, 16:] << 4)
    raw = np.concatenate([e[:, None], qs], axis=1)
    deq = FP4_VALUES[codes] * scale[:, None]
    return raw.tobytes(), deq.reshape(x.shape)


def store(x, typ):
    """Returns (bytes, dequantized float32) of x stored as typ."""
    x = np.ascontiguousarray(x, np.float32)
    if typ == F32:
        return x.tobytes(), x
    if typ == F16:
        bits = f16_bits(x)
        return bits.tobytes(), bits.view(np.float16).astype(np.float32)
    if typ == BF16:
        bits = bf16_bits(x)
        return bits.tobytes(), (bits.astype(np.uint32) << 16).view(np.float32)
    if typ == Q8_0:
        return quant_q8_0(x)
    if typ == MXFP4:
        return quant_mxfp4(x)
    raise ValueError(typ)


# ---------------------------------------------------------------- GGUF writer

GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STR, GGUF_ARR = 4, 5, 6, 7, 8, 9
ALIGN = 32


class GGUF:
    """A minimal GGUF v3 writer: metadata, then tensor infos, then aligned data."""

    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, numpy shape (outermost first), type, bytes)

    def u32(self, k, v):
        self.kv.append((k, GGUF_U32, struct.pack("<I", v)))

    def f32(self, k, v):
        self.kv.append((k, GGUF_F32, struct.pack("<f", v)))

    def bool(self, k, v):
        self.kv.append((k, GGUF_BOOL, struct.pack("<?", v)))

    def str(self, k, v):
        self.kv.append((k, GGUF_STR, self._s(v)))

    def strs(self, k, vs):
        body = struct.pack("<IQ", GGUF_STR, len(vs)) + b"".join(self._s(v) for v in vs)
        self.kv.append((k, GGUF_ARR, body))

    def i32s(self, k, vs):
        body = struct.pack("<IQ", GGUF_I32, len(vs)) + struct.pack("<%di" % len(vs), *vs)
        self.kv.append((k, GGUF_ARR, body))

    @staticmethod
    def _s(v):
        b = v.encode()
        return struct.pack("<Q", len(b)) + b

    def tensor(self, name, x, typ):
        """Stores numpy array x (outermost dim first) as typ; returns the
        dequantized values."""
        raw, deq = store(x, typ)
        self.tensors.append((name, x.shape, typ, raw))
        return deq

    def write(self, path):
        out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
        for k, t, body in self.kv:
            out += self._s(k) + struct.pack("<I", t) + body
        offset = 0
        offsets = []
        for name, shape, typ, raw in self.tensors:
            offsets.append(offset)
            dims = list(reversed(shape))  # ggml order: innermost first
            out += self._s(name) + struct.pack("<I", len(dims))
            out += struct.pack("<%dQ" % len(dims), *dims) + struct.pack("<IQ", typ, offset)
            offset += (len(raw) + ALIGN - 1) // ALIGN * ALIGN
        out += b"\0" * (-len(out) % ALIGN)
        for (name, shape, typ, raw), off in zip(self.tensors, offsets):
            out += raw + b"\0" * (-len(raw) % ALIGN)
        with open(path, "wb") as f:
            f.write(out)
