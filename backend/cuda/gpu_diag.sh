#!/bin/bash
# Kernel diagnostics on the GPU machine: ptxas resource report (registers,
# spills) of the embedded kernels, the kernel benchmarks, and Nsight Compute
# on the decode and prefill hot spots. Usage (repo root): backend/cuda/gpu_diag.sh
# BIN names another folder of binaries (default bin/cuda).
set -u
BIN=${BIN:-bin/cuda}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export ORCD_CUDA_CACHE=/tmp/orcd-cuda-cache
(cd backend/cuda/kernels && cat common.cuh $(ls *.cu | sort)) >/tmp/kernels.cu
nvcc -arch=sm_90 -cubin -Xptxas -v -o /tmp/kernels.cubin /tmp/kernels.cu >"$OUT/ptxas.txt" 2>&1
echo "== ptxas (hot kernels)"
grep -A2 -E "Function properties for (mq_matvec_q8_0|mq_gateup_mxfp4|mq_down_mxfp4|matmul_mxfp4|matmul_q8_0|attn_partial_f32_r4|attn_partial_f16_r1)$" "$OUT/ptxas.txt" | grep -v "^--"
cd backend/cuda
echo "== benchmarks"
timeout 120 ../../$BIN/cuda.test -test.run NONE -test.bench "${BENCH:-.}" -test.benchtime 20x 2>&1 | grep -E "Benchmark|ok|FAIL" | tee "$OUT/bench.txt"
for k in ${NCU:-"mq_gateup_mxfp4:MoEDecode" "mq_down_mxfp4:MoEDecode" "mq_matvec_q8_0:QProj"}; do
  name=${k%%:*}; b=${k##*:}
  timeout 120 ncu --kernel-name "$name" --launch-skip 3 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
    ../../$BIN/cuda.test -test.run NONE -test.bench "$b" -test.benchtime 5x >"$OUT/ncu-$name.txt" 2>&1
  echo "== ncu $name"
  grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occupancy|Stall|Warp Cycles Per Issued|Issue Slots|Block Limit" "$OUT/ncu-$name.txt" | head -20
done
