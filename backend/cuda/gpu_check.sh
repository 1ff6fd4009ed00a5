#!/bin/bash
# The batch run on the GPU machine: cuda tests, then `orcd bench` on a
# synthetic gpt-oss-20b. Binaries are built on the development machine:
#   CGO_ENABLED=0 go test -c -o bin/cuda/cuda.test ./backend/cuda
#   CGO_ENABLED=0 go test -c -o bin/cuda/engine.test ./engine
#   CGO_ENABLED=0 go test -c -tags nodemo -o bin/cuda/orcd.test ./cmd/orcd
#   CGO_ENABLED=0 go build -tags nodemo -o bin/cuda/orcd ./cmd/orcd
# (nodemo leaves the 20 MB built-in model out: the trip carries at most 64 MiB.)
# Usage (repo root): backend/cuda/gpu_check.sh [tests|bench|all]; logs go to $OUT.
# BIN names another folder of binaries; KBENCH is a -test.bench pattern of
# kernel benchmarks to run after the tests.
set -u
what=${1:-all}
BIN=${BIN:-bin/cuda}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export ORCD_CUDA_CACHE=/tmp/orcd-cuda-cache
summary=$OUT/summary.txt
: >"$summary"
if [ "$what" != bench ]; then
  (cd backend/cuda && timeout 300 ../../$BIN/cuda.test -test.v -test.timeout 290s ${TESTRUN:+-test.run "$TESTRUN"}) >"$OUT/test.log" 2>&1
  echo "tests rc=$?" >>"$summary"
  grep -E "^(--- |ok|FAIL|PASS|panic)|relative error|max relative|steady" "$OUT/test.log" | head -60 >>"$summary"
  if [ -x $BIN/engine.test ]; then
    # The device sampler against the host sampler's distribution.
    (cd engine && timeout 120 ../$BIN/engine.test -test.v -test.run Device) >"$OUT/engine.log" 2>&1
    echo "engine tests rc=$?" >>"$summary"
    grep -E "^(--- |ok|FAIL|PASS|panic)|chi-square|drew" "$OUT/engine.log" | head -30 >>"$summary"
  fi
  if [ -x $BIN/orcd.test ]; then
    # Batch invariance end to end: serve on cuda, streams alone and together.
    (cd cmd/orcd && timeout 300 ../../$BIN/orcd.test -test.v -test.run 'CUDA$') >"$OUT/orcd-test.log" 2>&1
    echo "orcd cuda tests rc=$?" >>"$summary"
    grep -E "^(--- |ok|FAIL|PASS|panic)|streams differ|batched" "$OUT/orcd-test.log" | head -30 >>"$summary"
  fi
fi
if [ -n "${KBENCH:-}" ]; then
  (cd backend/cuda && timeout 120 ../../$BIN/cuda.test -test.run NONE -test.bench "$KBENCH" -test.benchtime 200x) >"$OUT/kbench.log" 2>&1
  grep -E "^Benchmark|FAIL|panic" "$OUT/kbench.log" >>"$summary"
fi
if [ "$what" != tests ]; then
  model=/tmp/gpt-oss-20b-synth.gguf
  [ -f $model ] || { /usr/bin/time -f "synth %e s" $BIN/orcd synth --preset gpt-oss-20b -o $model >"$OUT/synth.log" 2>&1; tail -2 "$OUT/synth.log" >>"$summary"; }
  cat $model >/dev/null # warm the page cache for the load-time figure
  timeout 240 $BIN/orcd bench --model $model --device cuda -p 512,2048 -n 128 --reps ${REPS:-3} --max-batch 2048 --ctx-size ${CTX:-4096} ${BENCH_ARGS:-} >"$OUT/bench.md" 2>"$OUT/bench.log"
  echo "bench rc=$?" >>"$summary"
  cat "$OUT/bench.md" >>"$summary"
  grep -E "loaded|error|Error" "$OUT/bench.log" | head -5 >>"$summary"
  if [ -n "${LONGCTX:-}" ]; then
    # VRAM with a full 131,072-token KV cache (f16 above 16k tokens).
    timeout 120 $BIN/orcd bench --model $model --device cuda -p 2048 -n 64 --reps 1 --max-batch 512 --ctx-size 131072 >"$OUT/bench-131k.md" 2>"$OUT/bench-131k.log"
    echo "bench 131k rc=$?" >>"$summary"
    cat "$OUT/bench-131k.md" >>"$summary"
  fi
  if [ -n "${SERVE:-}" ]; then
    # Smoke test of `orcd serve --device cuda`: health, one job, shutdown.
    $BIN/orcd serve --model $model --device cuda --port 18080 --log-format text >"$OUT/serve.log" 2>&1 &
    pid=$!
    for i in $(seq 90); do curl -sf localhost:18080/health >"$OUT/health.json" 2>/dev/null && break; sleep 1; done
    echo "health: $(cat "$OUT/health.json")" >>"$summary"
    curl -sN localhost:18080/execute -H 'Content-Type: application/json' \
      -d '{"job_id":"j1","prompt":"Once upon a time","max_tokens":64,"seed":7}' >"$OUT/execute.txt" 2>&1
    grep -A1 -E "event: (started|metrics|end|error)" "$OUT/execute.txt" >>"$summary"
    curl -s -X POST -H 'Content-Type: application/json' localhost:18080/shutdown >>"$summary"
    wait $pid
    echo "serve rc=$?" >>"$summary"
  fi
  if [ -n "${LOADTEST:-}" ]; then
    # Continuous batching: `orcd loadtest` against `orcd serve` (LOADTEST is
    # a list of concurrency levels), 512-token prompts, 256 output tokens.
    $BIN/orcd serve --model $model --device cuda --port 18080 --ctx-size 4096 --log-format text ${SERVE_ARGS:-} >"$OUT/serve-load.log" 2>&1 &
    pid=$!
    for i in $(seq 90); do curl -sf localhost:18080/health >/dev/null 2>&1 && break; sleep 1; done
    for c in $LOADTEST; do
      timeout 240 $BIN/orcd loadtest --url http://127.0.0.1:18080 --concurrency $c --requests $((c * ${ROUNDS:-2})) --warmup $c \
        --prompt-tokens 512 --output-tokens 256 --format json >"$OUT/load-$c.json" 2>"$OUT/load-$c.log"
      echo "loadtest c=$c rc=$?" >>"$summary"
      grep -E '"(completed|failed|duration_seconds|output_tokens_per_second|total_tokens_per_second)"|"p50"' "$OUT/load-$c.json" | tr -d ' \n' >>"$summary"
      echo >>"$summary"
    done
    curl -s localhost:18080/metrics | grep -E "^orcd_(preempt|kv_blocks|prefix_cache_hit_rate|step_tokens_(sum|count)|step_sequences_(sum|count))" >>"$summary"
    curl -s -X POST -H 'Content-Type: application/json' localhost:18080/shutdown >/dev/null
    wait $pid
    echo "serve rc=$?" >>"$summary"
  fi
  if [ -n "${PROFILE:-}" ]; then
    ORCD_CUDA_PROFILE=1 timeout 120 $BIN/orcd bench --model $model --device cuda -p 2048 -n 16 --reps 1 --max-batch 2048 >"$OUT/profile.md" 2>"$OUT/profile.log"
    echo "profile rc=$?" >>"$summary"
    grep -A16 "kernel profile of" "$OUT/profile.log" | grep -v "^--" >>"$summary"
  fi
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >>"$summary"
cat "$summary"
