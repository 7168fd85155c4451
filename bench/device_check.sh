#!/usr/bin/env bash
# One short run on a lent GPU machine (16 CPUs, 1 GPU): the --gpu worker path and a scaling
# sweep of sync training over 2/4/8 workers. Writes summaries under $OUT (default /tmp/out).
# Usage there (after the install line of ../shared/hooks/device-wheels.sh):
#   bash bench/device_check.sh
# That machine lacks the runtime dependency crc32c (the Raft storage checksum); add its wheel
# to .whl/ here before carrying it:
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl crc32c
set -uo pipefail
# The repacked Ray wheel loses the executable bit of its binaries (gcs_server, raylet).
find "$(python3 -c "import ray, os; print(os.path.dirname(ray.__file__))")/core/src" -type f -exec chmod +x {} + 2>/dev/null
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled RAY_DISABLE_USAGE_STATS=1
python3 - <<'PY' > "$OUT/env.txt" 2>&1
import torch, ray, numpy
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("ray", ray.__version__, "numpy", numpy.__version__)
PY
cat "$OUT/env.txt"
DATA=${DATA:-synthetic:784x10x65536x2048}
run() {  # name, extra args...
  local name=$1; shift
  timeout 80 python3 -m jobs.train --model mlp --data "$DATA" --epochs 1 --replicas 3 \
    --optimizer sgd --lr 0.01 --out "$OUT/$name" --job "$name" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(python3 -c "import json,sys; s=json.load(open('$OUT/$name/summary.json')); print('samples_per_s=%.0f acc=%.3f rounds=%d' % (s['samples_per_s'], s['final_test_accuracy'], s['rounds']))" 2>/dev/null)"
  python3 - "$OUT/$name/metrics.jsonl" <<'PY' 2>/dev/null
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
steady = rows[3:] or rows
devices = sorted({d for r in rows for d in r.get("devices", [])})
print(f"  devices={devices} steady-state median samples/s="
      f"{statistics.median(r['samples_per_s'] for r in steady):.0f} over {len(steady)} rounds; "
      f"median compute_s={statistics.median(r['compute_s'] for r in steady):.4f} "
      f"commit_s={statistics.median(r['commit_s'] for r in steady):.4f}")
PY
}
run gpu-w2 --workers 2 --global-batch 2048 --gpu 0.5
for w in ${WORKERS_SWEEP:-2 4 8}; do
  run cpu-w$w --workers $w --global-batch $((1024 * w))
done
run gpu-w8 --workers 8 --global-batch 8192 --gpu 0.125
rm -rf "$OUT"/*/raft "$OUT"/*/checkpoints
