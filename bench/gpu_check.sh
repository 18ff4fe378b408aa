#!/usr/bin/env bash
# Pretraining speed on one GPU, offline, in one go (not yet run on a GPU; estimated 5 to 8 minutes on an H200):
#   1. bench/pretrain_throughput.py --compile: the stage's Trainer + GPT2LMHeadModel against a minimal PyTorch GPT;
#   2. a short real run of recipes/gpu-124m.yaml (tokenizer, then `accelerate launch pipeline/pretrain.py`) on a
#      corpus written here from the installed transformers package's source files, since nothing can be downloaded;
#   3. the benchmark again without torch.compile;
# then the tokens/s of each side by side. Logs go to $OUT (or /tmp/gpu_check). Nothing is written to hub/ or runs/.
#
#   bash bench/gpu_check.sh                      # STEPS=60 real steps; BENCH=0 skips 1 and 3; RECIPE=... another
#
# Needs torch with CUDA, transformers, accelerate, tokenizers, datasets and trl==1.12.0. Wheels found in .whl/ are
# installed first (into /tmp/site), e.g. for a machine without datasets and trl, made on a machine with pip:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d .whl \
#       datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 trl==1.12.0
set -uo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-60}
recipe=${RECIPE:-recipes/gpu-124m.yaml}
logs=${OUT:-/tmp/gpu_check}
work=$(mktemp -d)
mkdir -p "$logs"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ "${BENCH:-1}" != 0 ]; then
    echo "== benchmark, compiled"
    python3 bench/pretrain_throughput.py --compile 2>&1 | tee "$logs/bench_compiled.log" | grep -v "^\[transformers\]"
fi

echo "== real run: $recipe, $steps steps, on $work/corpus.txt"
python3 - "$recipe" "$work" <<'PY'
import pathlib, sys, transformers, yaml
recipe, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
size = 0
with open(work / "corpus.txt", "w", encoding="utf-8") as corpus:
    for path in sorted(pathlib.Path(transformers.__file__).parent.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        corpus.write(text + "\n\n")
        size += len(text)
        if size > 16_000_000:
            break
settings = yaml.safe_load(recipe.read_text())
settings.update(run_name="gpu-check", hub_dir=str(work / "hub"), output_root=str(work / "runs"))
(work / "gpu-check.yaml").write_text(yaml.safe_dump(settings))
print(f"corpus: {size / 1e6:.1f} MB of Python source")
PY
data=(--text_sources "$work/corpus.txt" --max_eval_examples 1)
# min_frequency 1 lets 16 MB of text fill GPT-2's 50,257 tokens, so the model is the benchmark's, vocabulary included.
python3 tokenizer/train.py --config "$work/gpu-check.yaml" "${data[@]}" --min_frequency 1 2>&1 \
    | tee "$logs/tokenizer.log" | tail -2
python3 -m accelerate.commands.launch --config_file accelerate_config.yaml pipeline/pretrain.py \
    --config "$work/gpu-check.yaml" "${data[@]}" --max_steps "$steps" --logging_steps 10 --save_strategy no \
    > "$logs/pretrain.log" 2>&1
grep -E "^model:|summary|^error" "$logs/pretrain.log"

if [ "${BENCH:-1}" != 0 ]; then
    echo "== benchmark, eager"
    python3 bench/pretrain_throughput.py 2>&1 | tee "$logs/bench_eager.log" | grep -v "^\[transformers\]"
fi

echo "== tokens/s"
python3 - "$logs" <<'PY'
import pathlib, re, sys
logs = pathlib.Path(sys.argv[1])
def read(name):
    path = logs / name
    return path.read_text(errors="ignore") if path.is_file() else ""
for name in ("bench_compiled.log", "bench_eager.log"):
    for line in read(name).splitlines():
        if line.startswith(("pipeline (", "minimal ", "ratio ")):
            print(f"{name.removesuffix('.log'):15} {line}")
logged = re.findall(r"'tokens_per_second': '([^']+)'(?:, 'mfu': '([^']+)')?", read("pretrain.log"))
if logged:
    rate, mfu = logged[-1]
    print(f"{'real run':15} last logging window (10 steps, after compiling): {float(rate):,.0f} tokens/s"
          + (f", MFU {float(mfu):.1%}" if mfu else ""))
else:
    print(f"real run: no tokens/s logged; see {logs / 'pretrain.log'}")
PY
rm -rf "$work"
