#!/usr/bin/env bash
# Device checks for a machine with a real GPU (the `device` tool of this
# workplace, or any Linux x86-64 box with a Vulkan driver).
#
#   bench/device.sh prepare   # here: release build, every GPU test binary,
#                             # the examples and trm into .device/bundle.tar.xz
#   bench/device.sh run       # there: every GPU test binary (--include-ignored),
#                             # trm bench per schedule, PyTorch CUDA; tables on stdout
#
# With the device tool: run(command="bench/device.sh run", carry=[".device", ".gl"],
# timeout_s=600); expected to take about 4-5 minutes on an H200.
#
# The device machine has no network, so nothing is built there: `prepare`
# builds here and packs the stripped binaries (xz: ~100 MB of binaries that
# share most of their code, in a few MB) into `.device/` (ignored by git),
# which the device call carries. The GPU test binaries are every tests/*.rs
# named gpu_* and every other one that opens a GPU context (gpu::context(),
# gpu::engine(), GpuContext); the examples go beside them, where
# tests/examples.rs looks for them.
#
# `run` first runs `trm check --quick --json` (every kernel variant against
# the CPU engine) and refuses a software adapter (device_type Cpu: no GPU
# driver found), recording the adapter, its driver name and version; then
# runs each test binary with --include-ignored and records pass or fail,
# all before any timing; then `trm bench --json --batch 1,8,64,256,1024 --schedule S` for S in
# fused and spread, the precisions, both schedules again with the subgroup
# reductions off (TRM_GPU_SUBGROUPS=off), then benches/pytorch_reference.py --device cuda (float32
# eager, float32 CUDA graphs, bfloat16 eager) at the same batch sizes. It
# writes to $OUT (or ./device-out): rows.jsonl, tests.tsv, tests.log,
# bench.log, gpu.txt, check.json, table.md and bench/results/DATE-ADAPTER.json
# (the adapter and driver, every check line, row and test result; copy it
# into bench/results/). It exits non-zero if
# any test, bench or reference run failed, after printing the tables.
#
# Knobs (defaults in brackets): TRM_DEVICE_BATCHES [1,8,64,256,1024],
# TRM_DEVICE_SECONDS per row [3], TRM_DEVICE_BACKEND [vulkan],
# TRM_DEVICE_SCHEDULES [fused spread], TRM_DEVICE_TESTS (binary names)
# [all], TRM_DEVICE_TEST_ARGS [--include-ignored],
# TRM_DEVICE_TEST_TIMEOUT seconds per binary [150], TRM_DEVICE_TEST_BUDGET
# seconds for all of them [240]. Expected: tests 2-3 min, bench under a
# minute, PyTorch about a minute; at worst (everything timing out) about
# 9.3 min, inside the device tool's 10.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

# tests/*.rs binaries that run GPU tests
gpu_tests() {
  local f name
  for f in tests/*.rs; do
    name="$(basename "$f" .rs)"
    case "$name" in
      gpu_*) echo "$name" ;;
      *) if grep -qE 'gpu::(context|engine|engine_on|limited_context)\(|GpuContext' "$f"; then echo "$name"; fi ;;
    esac
  done
}

if [ "$mode" = prepare ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
  mapfile -t tests < <(gpu_tests)
  [ "${#tests[@]}" -gt 0 ] || { echo "no GPU test binaries found in tests/" >&2; exit 1; }
  echo "GPU test binaries: ${tests[*]}"
  rm -rf .device
  mkdir -p .device/stage/deps .device/stage/examples
  args=()
  for t in "${tests[@]}"; do args+=(--test "$t"); done
  # build everything, then copy what cargo reports it built
  cargo build --release --bin trm --examples --message-format=json-render-diagnostics >.device/build.json
  cargo test --release --no-run "${args[@]}" --message-format=json-render-diagnostics >>.device/build.json
  python3 - .device/build.json "${tests[@]}" <<'PY' >.device/artifacts.txt
import json, sys
wanted = set(sys.argv[2:])
seen = {}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind, name = m["target"]["kind"][0], m["target"]["name"]
    if kind == "test" and name in wanted:
        seen[("deps", name)] = m["executable"]
    elif kind == "example":
        seen[("examples", name)] = m["executable"]
    elif kind == "bin" and name == "trm":
        seen[(".", "trm")] = m["executable"]
missing = wanted - {n for (d, n) in seen if d == "deps"}
if missing or (".", "trm") not in seen:
    sys.exit(f"cargo did not report the binaries of: {sorted(missing) or 'trm'}")
for (folder, name), path in sorted(seen.items()):
    print(folder, name, path)
PY
  while read -r folder name path; do
    cp "$path" ".device/stage/$folder/$name"
    strip ".device/stage/$folder/$name"
  done <.device/artifacts.txt
  du -sh .device/stage
  tar -C .device/stage -cf - . | xz -9 -T1 >.device/bundle.tar.xz
  rm -rf .device/stage .device/build.json
  ls -la .device
  exit 0
fi

if [ "$mode" != run ]; then
  echo "usage: bench/device.sh prepare|run" >&2
  exit 2
fi

out="${OUT:-$(pwd)/device-out}"
mkdir -p "$out"
batches="${TRM_DEVICE_BATCHES:-1,8,64,256,1024}"
seconds="${TRM_DEVICE_SECONDS:-3}"
backend="${TRM_DEVICE_BACKEND:-vulkan}"
schedules="${TRM_DEVICE_SCHEDULES:-fused spread}"
test_args="${TRM_DEVICE_TEST_ARGS---include-ignored}"
test_timeout="${TRM_DEVICE_TEST_TIMEOUT:-150}"
test_budget="${TRM_DEVICE_TEST_BUDGET:-240}"
failed=()

# the binaries `prepare` packed
if [ -f .device/bundle.tar.xz ]; then
  rm -rf .device/deps .device/examples .device/trm
  if command -v xz >/dev/null; then
    tar -C .device -xJf .device/bundle.tar.xz
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      .device/bundle.tar.xz .device
  fi
fi
[ -x .device/trm ] || { echo "no .device/trm: run bench/device.sh prepare first" >&2; exit 1; }

# Vulkan and EGL loaders, where the machine lacks them (see the device README)
if ! ldconfig -p | grep -q libvulkan && [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt" || true
export NODEVICE_SELECT=1 TRM_BIN="$(pwd)/.device/trm"
: >"$out/tests.tsv"
: >"$out/tests.log"
: >"$out/rows.jsonl"
: >"$out/bench.log"

# The adapter first: `trm check` (every kernel variant against the CPU
# engine on it) names it, its driver and its type. A software adapter
# (lavapipe, SwiftShader: device_type Cpu) means the machine's GPU driver
# was not found, and its timings would be passed off as a GPU's: refused.
echo "== the adapter (trm check)"
check_rc=0
timeout 150 .device/trm check --backend "$backend" --quick --json >"$out/check.json" \
  2>>"$out/tests.log" || check_rc=$?
adapter_field() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' \
    "$out/check.json" "$1" 2>/dev/null || true
}
device_type="$(adapter_field device_type)"
echo "adapter: $(adapter_field adapter), driver: $(adapter_field driver) $(adapter_field driver_info), type: ${device_type:-unknown}"
if [ "$device_type" = Cpu ] || [ -z "$device_type" ]; then
  echo "refusing to measure: the adapter is ${device_type:-not found} (a software renderer, or no GPU driver); see .device/ and the device README" >&2
  exit 1
fi
[ "$check_rc" = 0 ] || failed+=("trm check (exit status $check_rc; $out/check.json)")

echo "== GPU tests ($test_args)"
if [ -n "${TRM_DEVICE_TESTS:-}" ]; then
  read -r -a names <<<"$TRM_DEVICE_TESTS"
else
  names=()
  for f in .device/deps/*; do [ -x "$f" ] && names+=("$(basename "$f")"); done
fi
[ "${#names[@]}" -gt 0 ] || failed+=("no test binaries in .device/deps")
tests_start=$SECONDS
for t in "${names[@]}"; do
  echo "-- $t" | tee -a "$out/tests.log"
  start=$SECONDS
  # each binary gets its timeout, or what is left of the budget for all
  limit=$((test_budget - (start - tests_start)))
  [ "$limit" -le "$test_timeout" ] || limit=$test_timeout
  ran=yes
  if [ "$limit" -lt 10 ]; then
    rc=124 ran=no
    echo "not run: the tests' budget of ${test_budget} s is spent" >>"$out/tests.log"
  else
    set +e
    # shellcheck disable=SC2086 # test_args is a word list
    timeout "$limit" ".device/deps/$t" $test_args >>"$out/tests.log" 2>&1
    rc=$?
    set -e
  fi
  took=$((SECONDS - start))
  # the last `test result:` line of this binary, and the names of failed tests
  summary="$(sed -n "/^-- $t\$/,\$p" "$out/tests.log" | grep -E '^test result:' | tail -1 || true)"
  if [ "$rc" = 0 ]; then
    result=pass
  else
    result=FAIL
    # no `test result:` line: the last line it printed says why
    [ -n "$summary" ] || summary="$(sed -n "/^-- $t\$/,\$p" "$out/tests.log" | grep -v '^\s*$' | tail -1 | tr '\t' ' ' | cut -c1-200)"
    [ "$rc" = 124 ] && [ "$ran" = yes ] && summary="timed out (limit ${limit} s); $summary"
    failed+=("test binary $t (exit status $rc)")
    sed -n "/^-- $t\$/,\$p" "$out/tests.log" | grep -E '^test .* FAILED$|panicked' | head -20 || true
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$t" "$result" "$rc" "$took" "$summary" >>"$out/tests.tsv"
  echo "$t: $result in ${took} s: $summary"
done

# Runs one bench command, its JSON rows appended to rows.jsonl and its
# stderr to bench.log; a failure is recorded under `label` (and the log's
# tail shown) instead of stopping the script, so the report still comes.
bench_rows() {
  local label="$1" rc=0
  shift
  "$@" >>"$out/rows.jsonl" 2>>"$out/bench.log" || rc=$?
  if [ "$rc" != 0 ]; then
    failed+=("$label (exit status $rc)")
    tail -5 "$out/bench.log"
  fi
}

echo "== trm bench (backend $backend, batch $batches)"
for s in $schedules; do
  bench_rows "trm bench --schedule $s" timeout 75 .device/trm bench --json --backend "$backend" \
    --batch "$batches" --schedule "$s" --seconds "$seconds"
done

echo "== trm bench at each weight precision (auto schedule)"
bench_rows "trm bench --precision" timeout 150 .device/trm bench --json --backend "$backend" \
  --batch "$batches" --precision f16,bf16,int8 --seconds "$seconds"

echo "== trm bench with the reductions in workgroup memory (TRM_GPU_SUBGROUPS=off)"
bench_rows "trm bench TRM_GPU_SUBGROUPS=off" env TRM_GPU_SUBGROUPS=off timeout 45 .device/trm bench \
  --json --backend "$backend" --batch 1,64,1024 --schedule fused,spread --seconds "$seconds"

echo "== PyTorch reference (CUDA)"
if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  # shellcheck disable=SC2046 # one argument per batch size
  bench_rows "benches/pytorch_reference.py --device cuda" env PYTHONUNBUFFERED=1 timeout 120 \
    python3 benches/pytorch_reference.py --device cuda --batch $(tr ',' ' ' <<<"$batches") \
    --seconds "$seconds"
else
  echo "no PyTorch with CUDA here: no reference rows"
fi

python3 bench/device_report.py --rows "$out/rows.jsonl" --tests "$out/tests.tsv" \
  --gpu "$out/gpu.txt" --check "$out/check.json" --out "$out"

if [ "${#failed[@]}" -gt 0 ]; then
  echo
  echo "FAILED:"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "all tests passed"
