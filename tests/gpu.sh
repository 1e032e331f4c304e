#!/usr/bin/env bash
# tests/gpu.sh — the one GPU check, run once from the repo root on a machine with an NVIDIA GPU (no internet):
#
#     bash tests/gpu.sh            # 145 s on an H200 (2026-11-26, before the lengths and sample-rows stages); at most 8 minutes (the stages' timeouts)
#
# 1. the machine: nvidia-smi, python / torch / triton / transformers versions;
# 2. the test files with CUDA tests (compiled Triton kernels against their references, sampling, training,
#    one tiny SePT run on the GPU). TRITON_INTERPRET=0: conftest.py would otherwise switch on Triton's CPU
#    interpreter, and the kernels under test must be the compiled ones;
# 3. bench.py at GPU sizes (the lengths rows: static batches and the refilling stream at ragged lengths),
#    the 1.5B sampling rows with 256 new tokens (transformers' generate at ~25-40 ms per
#    step would spend minutes on 1,024) and the decode-step roofline at the 2K context of the target;
# 4. the rows --sample-batch 0 takes for the 1.5B shape at the paper's lengths, allocated and captured.
# Writes $OUT/bench.json and $OUT/gpu.log ($OUT: the folder the device tool brings back; ./ when unset).
# A failing stage does not stop the next one; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.}"
mkdir -p "$OUT"
if [ "$OUT" = "." ]; then JSON=bench-gpu.json; LOG=gpu.log; else JSON="$OUT/bench.json"; LOG="$OUT/gpu.log"; fi
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TOKENIZERS_PARALLELISM=false
PY=$(command -v python3 || command -v python)  # the GPU image: python3 holds torch
status=0

stage() {  # stage NAME SECONDS COMMAND...: run with a hard timeout, report its status and time, keep going
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "=== $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    [ $rc -eq 124 ] && echo "=== $name: TIMED OUT after ${limit}s"
    echo "=== $name: exit $rc in $((SECONDS - t0))s"
    [ $status -eq 0 ] && status=$rc
    return 0
}

{
    stage nvidia-smi 15 nvidia-smi
    stage versions 30 $PY -c "import sys, torch, triton, transformers as t; print('python', sys.version.split()[0],
        'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers',
        t.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
    stage tests 135 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_sample.py \
        tests/test_train.py tests/test_model.py tests/test_sept_loop.py::test_whole_run_writes_every_output
    # The JSON is rewritten after every row: what was measured survives the timeout. The lengths row runs at a
    # third of the paper's cap (1,024 prompts through 256 rows, answers up to 1,024 tokens: about a minute).
    stage bench 255 $PY bench.py --only kernels,sampling,lengths,training,round --out "$JSON" \
        --gpu-sizes 1,128,256 --gpu-prompt-tokens 512 --gpu-new-tokens 256 --decode-context 2048 --ragged-cap 1024
    # --sample-batch 0 (the paper presets) at the paper's lengths: the rows sept_loop would take for the 1.5B shape
    # beside its fp32 master weights and bf16 sampling copy; then, with training's reserve held, those rows allocated,
    # their decode step captured and run once
    stage sample-rows 45 $PY -c "import torch, bench, model, sample, train
master = model.empty_model(bench.SHAPES['qwen2.5-1.5b'], torch.device('cuda'), torch.float32)
sampler = sample.make_sampler(master, torch.bfloat16)
reserve = train.memory_to_come(train.make_optimizer(master, train.TrainConfig()))  # as sept_loop.main
rows = sample.rows_that_fit(sampler, 256 + 3072, reserve)
print('--sample-batch 0, 1.5B shape, 256 + 3,072 positions:', rows, 'rows; free, total:', torch.cuda.mem_get_info())
held = torch.empty(reserve, dtype=torch.uint8, device='cuda')  # what training will take
sample.static_rows(sampler, rows, 256 + 3072).static()
torch.cuda.synchronize()
print('allocated, captured and run beside the reserve; free, total:', torch.cuda.mem_get_info())"
    echo "=== done in ${SECONDS}s, status $status; $JSON and $LOG"
    exit $status  # the braces run in a subshell (the pipe): hand the status out through the pipeline
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
