#!/usr/bin/env bash
# Every GPU check of the fast path in one command, within one 10-minute device call.
#
# On the GPU machine (repository root; carry .data, which holds Fashion-MNIST and the wheels of
# any pure-Python dependency the machine may lack):
#   MIMKD_DATA=.data bash benchmarks/gpu_check.sh
# Before that, on a machine with the dataset files and a package index, fill .data once:
#   bash benchmarks/gpu_check.sh --prepare
#
# Stages, most important first, each cut off by what is left of the budget (GPU_CHECK_BUDGET,
# default 560 s), so a slow compile costs the later stages rather than the whole call:
#   1 environment        GPU, driver, torch/triton, bf16; installs missing dependencies to .data/pylib
#   2 throughput         reference loop vs mimkd's trainer (bf16, channels_last, compile, folded
#                        teacher), KD and MIMKD, resnet32x4 -> resnet8x4, batch 64; then 4 packed runs
#   grid                 `mimkd reproduce configs/grids/gpu_proxy.yaml --jobs 8`: 3 CIFAR teachers and
#                        42 students (3 pairs x 7 methods x 2 seeds) on Fashion-MNIST as 3x32x32, sized
#                        for ~6-8 min (its file states the assumed speeds); prints its table and writes
#                        $OUT/gpu_proxy-<date>.md (commit it as results/gpu_proxy-<date>.md)
#   3 fashion            a real run: resnet32x4 teacher (2 epochs, eager) then MIMKD resnet8x4
#                        (compiled) on Fashion-MNIST as 3x32x32; accuracy, img/s, projected protocol
#   4 cuda graphs        MIMKD with compile_mode=reduce-overhead (mimkd path only)
#   5 overhead           MIMKD/KD step ratio and memory vs CRD
#   6 launcher           the same MIMKD run plain and through `torchrun --standalone
#                        --nproc-per-node=1` (needs stage fashion's teacher): the launcher's cost on
#                        one GPU (one process trains without a DDP wrapper; N > 1 needs N GPUs)
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu_check_out.
# GPU_CHECK_STAGES=environment,grid runs only the stages named (default: all, in the order above).
# The grid does not fit in one 560 s call after the throughput stage; give it its own call:
#   GPU_CHECK_STAGES=environment,grid GPU_CHECK_BUDGET=590 MIMKD_DATA=.data bash benchmarks/gpu_check.sh
# GPU_CHECK_SMOKE=1 runs every stage tiny on the CPU (a check of this script, not of speed).
set -u
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    source_dir=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
    mkdir -p .data/fashion-mnist .data/wheels
    cp "$source_dir"/*-ubyte.gz .data/fashion-mnist/
    # only what a torch machine may lack; numpy and pillow come with torch/torchvision there
    $PYTHON -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .data/wheels omegaconf matplotlib pyyaml tqdm
    rm -f .data/wheels/numpy-*.whl .data/wheels/pillow-*.whl
    du -sh .data
    exit 0
fi

BUDGET=${GPU_CHECK_BUDGET:-560}
[[ "${GPU_CHECK_SMOKE:-0}" == "1" ]] && BUDGET=${GPU_CHECK_BUDGET:-1200}
OUT_DIR=${OUT:-gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/mimkd_gpu_check}
mkdir -p "$OUT_DIR" "$WORK"
export MIMKD_DATA=${MIMKD_DATA:-.data}
export PYTHONPATH="$PWD/src:$PWD/.data/pylib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
start=$SECONDS
if [[ "${GPU_CHECK_SMOKE:-0}" == "1" ]]; then
    DEVICE=cpu
    STEPS=(--steps 2 --warmup 1 --data-size 1000 --teacher resnet8x4 --student resnet8)
    PACK=2 TEACHER_EPOCHS=1 STUDENT_EPOCHS=1 SUBSET=(data.train_subset=640 data.test_subset=256)
    TEACHER=resnet8x4 STUDENT=resnet8 COMPILE=false GRID_JOBS=2
    # the same grid file, tiny: one seed, two steps per run on 128 images
    GRID_SMOKE=(seeds=[0] epochs=1 max_steps=2 data.train_subset=128 data.test_subset=128
        teacher_overrides.epochs=1 teacher_overrides.max_steps=2
        teacher_overrides.data.train_subset=128 teacher_overrides.data.test_subset=128)
else
    DEVICE=cuda
    STEPS=()
    PACK=4 TEACHER_EPOCHS=2 STUDENT_EPOCHS=12 SUBSET=(data.train_subset=20000)
    TEACHER=resnet32x4 STUDENT=resnet8x4 COMPILE=true GRID_JOBS=8 GRID_SMOKE=()
fi

left() { echo $((BUDGET - (SECONDS - start))); }

# stage NAME MAX_SECONDS COMMAND...: run with a timeout of min(MAX, what is left), log to $OUT_DIR
stage() {
    local name=$1 max=$2
    shift 2
    local remain limit t0 rc
    if [[ -n "${GPU_CHECK_STAGES:-}" && ",$GPU_CHECK_STAGES," != *",$name,"* ]]; then
        return
    fi
    remain=$(($(left) - 5))
    limit=$((max < remain ? max : remain))
    if ((limit < 30)); then
        echo "## stage $name: skipped, ${remain}s of the budget left"
        return
    fi
    echo
    echo "## stage $name (up to ${limit}s; $(left)s of the budget left)"
    t0=$SECONDS
    export STAGE_LIMIT=$limit
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    echo "## stage $name: exit $rc after $((SECONDS - t0))s"
}

environment() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    echo "cpus: $(nproc)"
    $PYTHON - <<'PY'
import glob, importlib.metadata as md, os, sys, zipfile
# a wheel is a zip of importable folders: unpacking it onto PYTHONPATH needs no pip, no index
missing = []
for wheel in sorted(glob.glob(".data/wheels/*.whl")):
    dist = os.path.basename(wheel).split("-")[0].replace("_", "-")
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        missing.append(wheel)
        zipfile.ZipFile(wheel).extractall(".data/pylib")
print("unpacked to .data/pylib:", ", ".join(os.path.basename(w) for w in missing) or "nothing")
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}")
if torch.cuda.is_available():
    print(f"device {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA device: the stages below run on the CPU")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton missing: torch.compile cannot build GPU kernels (the fallback will warn)")
import mimkd
print(f"mimkd {mimkd.__version__} from {os.path.dirname(mimkd.__file__)}")
PY
}

fashion() {
    local teacher="$WORK/fashion_teacher" student="$WORK/fashion_mimkd"
    rm -rf "$teacher" "$student"
    local data=(data.name=fashion_mnist data.image_size=32 data.channels=3 data.augment=crop_flip
        data.batch_size=64 data.download=false progress=false log_every=100)
    local teacher_subset=()
    [[ "$DEVICE" == cpu ]] && teacher_subset=("${SUBSET[@]}")
    $PYTHON -m mimkd train model=$TEACHER "${data[@]}" "${teacher_subset[@]}" \
        epochs=$TEACHER_EPOCHS optim.lr=0.05 optim.schedule=cosine compile=false \
        device=$DEVICE run_dir="$teacher" || return 1
    $PYTHON -m mimkd distill method=mimkd model=$STUDENT "teacher=$teacher/best.pt" "${data[@]}" \
        "${SUBSET[@]}" epochs=$STUDENT_EPOCHS optim.lr=0.05 compile=$COMPILE device=$DEVICE \
        run_dir="$student" || return 1
    cp "$teacher/results.json" "$OUT_DIR/fashion_teacher_results.json"
    cp "$student/results.json" "$OUT_DIR/fashion_mimkd_results.json"
    cp "$student/metrics.jsonl" "$OUT_DIR/fashion_mimkd_metrics.jsonl"
    $PYTHON - "$student" <<'PY'
import json, statistics, sys
run = sys.argv[1]
results = json.load(open(f"{run}/results.json"))
records = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
# the first interval holds the compile; the rest are steady-state training
speeds = [r["images_per_second"] for r in records if r["kind"] == "interval"]
epochs = [r for r in records if r["kind"] == "epoch"]
speed = statistics.median(speeds[1:] or speeds)
steady_epoch = statistics.median(r["epoch_seconds"] for r in (epochs[1:] or epochs))
steps_per_epoch = epochs[0]["step"]
protocol_steps = 240 * 782
print(f"teacher -> MIMKD student on Fashion-MNIST 3x32x32 ({steps_per_epoch} steps/epoch, {len(epochs)} epochs):")
print(f"  teacher top-1 {results['teacher_accuracy']:.4f}; student best {results['best_accuracy']:.4f}"
      f" (epoch {results['best_epoch']}), last {results['last_accuracy']:.4f}")
print(f"  wall {results['wall_seconds']:.1f}s incl. compile; steady {speed:,.0f} img/s in training,"
      f" {steady_epoch:.2f}s per epoch of {steps_per_epoch} steps incl. evaluation")
print(f"  projected CIFAR-100 protocol (240 x 782 steps at batch 64): training steps alone"
      f" {protocol_steps * 64 / speed / 60:.1f} min; with this run's per-step epoch cost"
      f" {protocol_steps * steady_epoch / steps_per_epoch / 60:.1f} min")
PY
}

grid() {
    local out="$WORK/gpu_proxy" limit=${STAGE_LIMIT:-600} rc stamp
    # the runs stop 45 s before the stage does, so the table of what finished is always written
    timeout --signal=INT --kill-after=10 $((limit - 45)) $PYTHON -m mimkd reproduce \
        configs/grids/gpu_proxy.yaml out="$out" device=$DEVICE log_every=200 "${GRID_SMOKE[@]}" \
        --jobs $GRID_JOBS
    rc=$?
    $PYTHON -m mimkd report "$out" >/dev/null || return 1
    mkdir -p "$OUT_DIR/gpu_proxy"
    cp "$out"/report.md "$out"/results.csv "$out"/summary.json "$out"/plan.json \
        "$out"/invocations.jsonl "$out"/*.png "$OUT_DIR/gpu_proxy/" 2>/dev/null
    stamp=$(date -u +%F)
    {
        echo "# gpu_proxy grid, $stamp"
        echo
        echo "Measured by \`benchmarks/gpu_check.sh\` (stage grid, exit $rc) on:"
        echo
        echo '```'
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU"
        echo "cpus: $(nproc)"
        echo '```'
        echo
        echo "Run folders are not included; links below point into them."
        echo
        sed '1d' "$out/report.md"
    } >"$OUT_DIR/gpu_proxy-$stamp.md"
    echo
    sed -n '1,/^!\[overview\]/p' "$out/report.md" | grep -v '^!\['
    sed -n '/^## Teachers/,/^## Hardware/p' "$out/report.md" | sed '$d'
    echo "table: $OUT_DIR/gpu_proxy-$stamp.md (commit it as results/gpu_proxy-$stamp.md)"
    return $rc
}

launcher() {
    local teacher="$WORK/fashion_teacher/best.pt" steps=300 every=50
    [[ "$DEVICE" == cpu ]] && steps=6 every=2
    [[ -f "$teacher" ]] || { echo "no teacher: run stage fashion first"; return 1; }
    local data=(data.name=fashion_mnist data.image_size=32 data.channels=3 data.augment=crop_flip
        data.batch_size=64 data.download=false "${SUBSET[@]}" progress=false log_every=$every)
    local run=(method=mimkd model=$STUDENT "teacher=$teacher" "${data[@]}" epochs=1
        max_steps=$steps optim.lr=0.05 compile=$COMPILE device=$DEVICE)
    rm -rf "$WORK/plain" "$WORK/torchrun"
    $PYTHON -m mimkd distill "${run[@]}" run_dir="$WORK/plain" || return 1
    $PYTHON -m torch.distributed.run --standalone --nproc-per-node=1 -m mimkd distill \
        "${run[@]}" run_dir="$WORK/torchrun" || return 1
    $PYTHON - "$WORK/plain" "$WORK/torchrun" <<'PY'
import json, statistics, sys
speeds = {}
for run in sys.argv[1:]:
    records = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    values = [r["images_per_second"] for r in records if r["kind"] == "interval"]
    speeds[run] = statistics.median(values[1:] or values)  # the first interval holds the compile
plain, launched = speeds.values()
print(f"MIMKD steady img/s: plain {plain:,.0f}, torchrun 1 process {launched:,.0f}"
      f" (ratio {launched / plain:.3f})")
PY
}

# a stage that is a shell function runs as `bash gpu_check.sh --stage NAME`, so timeout can kill it
if [[ "${1:-}" == "--stage" ]]; then
    "$2"
    exit $?
fi

echo "# mimkd GPU check: $(date -u +%FT%TZ), budget ${BUDGET}s, output in $OUT_DIR"
stage environment 90 bash "$SCRIPT" --stage environment
stage throughput 300 $PYTHON benchmarks/throughput.py --device $DEVICE --steps 400 --warmup 40 \
    "${STEPS[@]}" --pack $PACK --json "$OUT_DIR/throughput.json"
stage grid 590 bash "$SCRIPT" --stage grid
stage fashion 200 bash "$SCRIPT" --stage fashion
stage cuda_graphs 120 $PYTHON benchmarks/throughput.py --device $DEVICE --steps 400 --warmup 60 \
    "${STEPS[@]}" --methods mimkd --skip-reference --compile-mode reduce-overhead \
    --json "$OUT_DIR/throughput_cuda_graphs.json"
stage overhead 120 $PYTHON benchmarks/overhead.py --device $DEVICE --steps 300 --warmup 40 \
    "${STEPS[@]:0:4}" --repeats 2 --json "$OUT_DIR/overhead.json"
stage launcher 200 bash "$SCRIPT" --stage launcher
echo
echo "# done in $((SECONDS - start))s of ${BUDGET}s"
