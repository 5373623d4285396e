#!/usr/bin/env bash
# Device checks for a machine with a real GPU (the `device` tool of this
# workplace, or any Linux box with a Vulkan driver).
#
#   bench/device.sh prepare   # here: release build, stripped binaries into .device/
#   bench/device.sh run       # there: GPU tests + trm bench --json, table on stdout
#
# The device machine has no network, so nothing is built there: `prepare`
# copies the `trm` binary and the GPU test binaries (stripped, x86-64) into
# `.device/` (ignored by git), which the device call carries. `run` writes
# every JSON row and the test log to $OUT (or ./device-out) and prints the
# table; copy the rows into bench/results/ with the date and the adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

if [ "$mode" = prepare ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
  cargo build --release --bin trm
  mkdir -p .device
  cp "$CARGO_TARGET_DIR/release/trm" .device/trm
  # the GPU test binaries: compile without running, then copy them
  cargo test --release --no-run --test gpu_mixer --test gpu_cli --test gpu_faults 2>&1 |
    sed -n 's/.*Executable tests\/\([a-z_]*\)\.rs (\(.*\))/\1 \2/p' |
    while read -r name path; do cp "$path" ".device/$name"; done
  for f in .device/*; do strip "$f" 2>/dev/null || true; done
  du -sh .device
  exit 0
fi

out="${OUT:-$(pwd)/device-out}"
mkdir -p "$out"
# Vulkan and EGL loaders, where the machine lacks them (see the device README)
if ! ldconfig -p | grep -q libvulkan && [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
export NODEVICE_SELECT=1 TRM_SHARED_DIR="${TRM_SHARED_DIR:-$(pwd)/../shared}"

echo "== GPU tests"
for t in gpu_mixer gpu_cli gpu_faults; do
  if [ -x ".device/$t" ]; then
    TRM_BIN="$(pwd)/.device/trm" timeout 300 ".device/$t" --include-ignored 2>&1 |
      tee -a "$out/tests.log" | grep -E "^test result|FAILED|panicked" || true
  fi
done

echo "== trm bench"
timeout 300 .device/trm bench --json --batch 1,8,64 --seconds 5 | tee "$out/bench.jsonl"
python3 - "$out/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| backend | adapter | api | batch | net calls/s | puzzles/s | GFLOP/s | GPU ms/step |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    ms = r.get("gpu_ms_per_step")
    print(f"| {r['backend']} | {r['adapter']} | {r['api']} | {r['batch']} | {r['net_calls_per_s']:.1f} | "
          f"{r['puzzles_per_s']:.3f} | {r['gflops']:.1f} | {'-' if ms is None else f'{ms:.3f}'} |")
PY
