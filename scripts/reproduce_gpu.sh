#!/usr/bin/env bash
# Regenerates every GPU number of docs/results.md on one GPU machine, stage by stage.
#
#   ./scripts/reproduce_gpu.sh                 # every stage, in order
#   ./scripts/reproduce_gpu.sh accuracy latency # some stages
#
# Stages (each writes its raw results under benchmarks/results/ and prints its table):
#   kernels   block-sparse kernels against cuDNN (benchmarks.attention)
#   hopper    the kernel battery on the GPU (pytest -m gpu), then the mosaic_gpu check:
#             Llama-shape checks, timing, launch sweep
#   hopper_d64 the kernel at the real models' shapes (head dim 64; 14/2 and 9/3 heads): every
#             candidate launch checked, then timed against cuDNN, a 32/8/128 control beside;
#             then the launches that record block maps, Hopper's and Triton's
#   planner   planner overhead on a Llama-3.1-8B-shaped layer
#   methods   attention-level time of every method on profile-matched synthetic layers
#   latency   end-to-end prefill latency of the built-in models and the 8B-shaped model
#   accuracy  perplexity, fidelity and retrieval of every method (sharedsparse-evaluate),
#             then the report docs/evaluation_results.md and its figures
#   qwen_more Qwen threshold variants and 60-sample retrieval cells at 32K (they extend the
#             accuracy stage's cells), then the report
#   calibrate Qwen's sharing table at 16K and 32K tokens (SmolLM2's, at 4K and 8K, runs on a
#             CPU in an hour), copied into sharedsparse_jax/tables and the results; then Qwen
#             with YaRN x4 from 16K to 128K (its report into the results)
#   sharing   the paper's sharing ablation and gamma curves (benchmarks.sharing_ablation)
#   crossover the length from which planned prefill pays, stored in the shipped tables, and the
#             planner's cost per layer (benchmarks.crossover)
#   chunked   chunked against whole-prompt prefill, 32K-128K (benchmarks.chunked_prefill)
#   long      Qwen with YaRN x4 (docs/models.md): dense quality and every method's accuracy at
#             64K and 128K, then every method's end-to-end latency there
#   long_profiles Qwen's head profiles at 32K and (YaRN x4) 128K tokens, SharePrefill and
#             vertical-slash on the 32K one at a real depth (32 layers at 32K, 16 at 64K), and
#             every method on synthetic Llama-8B layers matched to the 128K one
#   scaleout  the sharded code path on one GPU (mesh data=1,model=1) against the plain one
# Every stage shows progress bars. `accuracy` resumes where it stopped (finished units are
# skipped); `methods` is rerun with --resume; `latency` merges into its results file.
# The built-in models and texts come from the cache ($SHAREDSPARSE_CACHE or
# ~/.cache/sharedsparse-jax); on a machine without network, copy the cache's gguf/ and data/
# directories there first (docs/usage.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
QWEN=qwen2.5-coder-0.5b-instruct
SMOLLM2=smollm2-135m-instruct
RESULTS=benchmarks/results

stage_kernels() { "$PYTHON" -m benchmarks.attention; }
stage_hopper() {
  SHAREDSPARSE_TEST_PLATFORM=gpu "$PYTHON" -m pytest -m gpu tests/kernels -q
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip compare sweep \
    --out "$RESULTS/mosaic_gpu_check_h200.json"
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip checks sweep --densities 1.0 0.5 0.2 0.1 0.05 \
    --out "$RESULTS/mosaic_gpu_compare_h200.json"
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip checks compare --sweep-configs default one_item q3 \
    --sweep-seq-lens 32768 131072 --sweep-densities 1.0 0.2 0.1 0.05 --rounds 11 \
    --out "$RESULTS/mosaic_gpu_repeats_h200.json"
  "$PYTHON" -m benchmarks.diagnostics.mosaic_gpu_timeline --out "$RESULTS/mosaic_gpu_timeline_h200.json"
  "$PYTHON" -m benchmarks.diagnostics.mosaic_gpu_schedule_model  # CPU: the makespan model on that timeline
}
stage_hopper_d64() {
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip checks compare \
    --shapes 14/2/64:8192,32768 9/3/64:8192,32768 14/2/64:131072 32/8/128:32768 \
    --check-shapes 14/2/64 9/3/64 --layout random --sweep-densities 1.0 0.4 0.3 0.1 \
    --sweep-configs default q2_s2 q2_s3 q2_s4 q2_s6 q3_s3 q3_s5 q2_s3_nosched q2_s3_wg1 one_item \
    --rounds 7 --out "$RESULTS/mosaic_gpu_d64_h200.json"
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip checks sweep --recording --layout random \
    --shapes 14/2/64:32768,131072 32/8/128:32768 --densities 1.0 0.1 --rounds 5 \
    --out "$RESULTS/mosaic_gpu_recording_h200.json"
  # The 8K cells timed one dispatch per call as well (results section 7, "timed back to back").
  "$PYTHON" -m benchmarks.mosaic_gpu_check --skip checks compare --single-calls \
    --shapes 14/2/64:8192 9/3/64:8192 --layout random --sweep-densities 1.0 0.4 0.1 \
    --sweep-configs default one_item --rounds 7 --out "$RESULTS/mosaic_gpu_d64_single_h200.json"
}
stage_planner() { "$PYTHON" -m benchmarks.planner_overhead --profile-launches; }
stage_methods() {
  local profile
  for profile in "$SMOLLM2" "$QWEN"; do
    local out="$RESULTS/method_attention_h200.json" figure=docs/figures/method_attention_h200.png
    if [ "$profile" = "$QWEN" ]; then
      out="$RESULTS/method_attention_qwen_h200.json"
      figure=docs/figures/method_attention_qwen_h200.png
    fi
    "$PYTHON" -m benchmarks.method_attention --resume --out "$out" \
      --profile "benchmarks/profiles/$profile.json"
    "$PYTHON" -m benchmarks.method_attention --plot "$out" "$figure"
  done
}
stage_latency() {
  "$PYTHON" -m benchmarks.prefill_latency --out "$RESULTS/prefill_latency_h200.json"
}
stage_accuracy() {
  local evaluate=("$PYTHON" -m sharedsparse_cli.evaluate --out-dir "$RESULTS/accuracy" --no-report)
  "${evaluate[@]}" --checkpoint "$QWEN" --tasks text --windows 4
  "${evaluate[@]}" --checkpoint "$QWEN" --tasks passkey niah_multikey_1 vt \
    --retrieval-lengths 8K 32K --samples 20
  "${evaluate[@]}" --checkpoint "$SMOLLM2" --tasks text passkey --text-lengths 1K 2K 4K 8K \
    --retrieval-lengths 1K --windows 4 --samples 20
  "${evaluate[@]}" --checkpoint "$QWEN" --tasks niah_single_2 niah_multivalue niah_multiquery \
    --retrieval-lengths 8K 32K --samples 12
  "${evaluate[@]}" --checkpoint "$SMOLLM2" --tasks text --text-lengths 4K 8K --windows 4 \
    --variants g90=default,gamma=0.9 g99=default,gamma=0.99 \
    b256=default,min_budget=256,streaming_window=256
  "${evaluate[@]}" --checkpoint "$SMOLLM2" --tasks text passkey niah_single_2 vt --variants small \
    --text-lengths 1K 2K --retrieval-lengths 1K --windows 4 --samples 60
  "$PYTHON" -m sharedsparse_cli.evaluate --report-only --out-dir "$RESULTS/accuracy" \
    --report docs/evaluation_results.md --figures docs/figures
}

stage_qwen_more() {
  local evaluate=("$PYTHON" -m sharedsparse_cli.evaluate --out-dir "$RESULTS/accuracy" --no-report)
  "${evaluate[@]}" --checkpoint "$QWEN" --tasks text --text-lengths 8K 32K --windows 4 \
    --variants g90=default,gamma=0.9 g99=default,gamma=0.99
  "${evaluate[@]}" --checkpoint "$QWEN" --tasks passkey niah_multikey_1 niah_multiquery vt \
    niah_single_2 niah_multivalue --retrieval-lengths 32K --samples 60
  "$PYTHON" -m sharedsparse_cli.evaluate --report-only --out-dir "$RESULTS/accuracy" \
    --report docs/evaluation_results.md --figures docs/figures
}

stage_calibrate() {
  "$PYTHON" -m sharedsparse_cli.calibrate --checkpoint "$QWEN" --lengths 16384 32768 \
    --map-block-size 128 --second-length 8192 --out-dir calibration
  cp "calibration/${QWEN}_table.json" "sharedsparse_jax/tables/$QWEN.json"
  cp "calibration/${QWEN}_report.json" "$RESULTS/calibration/$QWEN.json"
  cp calibration/calibration_"$QWEN"_*.png docs/figures/
  # Austen's novels hold four disjoint 128K windows: 3 + 1 per source.
  "$PYTHON" -m sharedsparse_cli.calibrate --checkpoint "$QWEN" --yarn-factor 4 \
    --lengths 16384 32768 65536 131072 --samples 3 --heldout 1 --map-block-size 128 \
    --second-length 8192 --out-dir calibration
  cp "calibration/${QWEN}+yarn4_report.json" "$RESULTS/calibration/${QWEN}+yarn4.json"
  cp "calibration/${QWEN}+yarn4_table.json" "$RESULTS/calibration/raw/"
  cp calibration/calibration_"$QWEN"+yarn4_*.png docs/figures/
}
stage_sharing() {
  "$PYTHON" -m benchmarks.sharing_ablation --out "$RESULTS/sharing_ablation_h200.json"
  "$PYTHON" -m benchmarks.sharing_ablation --plot "$RESULTS/sharing_ablation_h200.json" \
    docs/figures/sharing_ablation_h200.png
}
stage_crossover() {
  "$PYTHON" -m benchmarks.crossover --write-tables --out "$RESULTS/crossover_h200.json"
}
stage_chunked() {
  "$PYTHON" -m benchmarks.chunked_prefill --out "$RESULTS/chunked_prefill_h200.json"
}
stage_long() {
  "$PYTHON" -m sharedsparse_cli.evaluate --out-dir "$RESULTS/accuracy" --no-report \
    --checkpoint "$QWEN" --yarn-factor 4 --tasks text passkey niah_single_2 niah_multikey_1 \
    --text-lengths 64K 128K --retrieval-lengths 64K 128K --windows 2 --samples 20
  "$PYTHON" -m benchmarks.prefill_latency --models qwen --yarn-factor 4 --lengths 65536 131072 \
    --out "$RESULTS/prefill_latency_h200.json"
}
stage_long_profiles() {
  local common=(--model "$QWEN" --map-block-size 128)
  "$PYTHON" -m benchmarks.attention_profiles "${common[@]}" --length 32768 \
    --out "benchmarks/profiles/${QWEN}_32768.json"
  "$PYTHON" -m benchmarks.attention_profiles "${common[@]}" --length 131072 --yarn-factor 4 \
    --out "benchmarks/profiles/${QWEN}+yarn4_131072.json"
  local layers_of_32k=(--profile "benchmarks/profiles/${QWEN}_32768.json" --methods shareprefill
    vertical_slash)
  "$PYTHON" -m benchmarks.method_attention "${layers_of_32k[@]}" --seq-lens 32768 --layers 32 \
    --out "$RESULTS/method_attention_qwen32k_32layers_h200.json"
  "$PYTHON" -m benchmarks.method_attention "${layers_of_32k[@]}" --seq-lens 65536 --layers 16 \
    --out "$RESULTS/method_attention_qwen64k_16layers_h200.json"
  local out="$RESULTS/method_attention_qwen128k_h200.json"
  "$PYTHON" -m benchmarks.method_attention --resume --out "$out" \
    --profile "benchmarks/profiles/${QWEN}+yarn4_131072.json"
  "$PYTHON" -m benchmarks.method_attention --plot "$out" docs/figures/method_attention_qwen128k_h200.png
}
stage_scaleout() {
  local common=(--models qwen llama8b --lengths 8192 32768 --methods dense shareprefill \
    vertical_slash --fresh)
  "$PYTHON" -m benchmarks.prefill_latency "${common[@]}" --out "$RESULTS/scaleout_plain_h200.json"
  "$PYTHON" -m benchmarks.prefill_latency "${common[@]}" --mesh data=1,model=1 \
    --out "$RESULTS/scaleout_mesh1x1_h200.json"
}

ALL=(kernels hopper hopper_d64 planner methods latency accuracy qwen_more calibrate sharing crossover chunked
  long long_profiles scaleout)
STAGES=("${@:-${ALL[@]}}")
for stage in "${STAGES[@]}"; do
  if ! declare -F "stage_$stage" >/dev/null; then
    echo "unknown stage '$stage'; stages: ${ALL[*]}" >&2
    exit 2
  fi
done
for stage in "${STAGES[@]}"; do
  echo "== $stage"
  "stage_$stage"
done
