#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for SECONDS (default 600),
# one libFuzzer process each, with AddressSanitizer, debug assertions and
# overflow checks (cargo-fuzz's defaults).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      # targets: model_file official batch arc engine
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# stable with RUSTC_BOOTSTRAP=1 (set here). Each target starts from its
# committed seeds (fuzz/seeds/<target>) and fixed crash inputs
# (fuzz/regressions/<target>) and grows fuzz/corpus/<target>; crashes land
# in fuzz/artifacts/<target>, logs in fuzz/artifacts/logs/<target>.log. A
# crash input, once fixed, belongs in fuzz/regressions/<target>/crash-*,
# where `cargo test --test fuzz_regressions` replays it.
#
# Environment: FUZZ_TARGET_DIR (cargo's target dir, default fuzz/target),
# FUZZ_ARGS (extra libFuzzer flags).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(model_file official batch arc engine)
fi

export RUSTC_BOOTSTRAP=1
# a false leak report of thread exit that the engine target's pools race
# with (fuzz/lsan.supp); any other leak is still a finding
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
target_dir="${FUZZ_TARGET_DIR:-fuzz/target}"
build=(--target-dir "$target_dir" --codegen-units 16)

cargo fuzz build "${build[@]}" || exit 1

mkdir -p fuzz/artifacts/logs
status=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target" "fuzz/regressions/$target"
  log="fuzz/artifacts/logs/$target.log"
  echo "== $target: ${seconds}s, log in $log"
  # -rss_limit_mb / -malloc_limit_mb: a lying header must not make us
  # allocate what it claims; 512 MiB is far above any legitimate input of
  # max_len bytes. The engine target's products run faer, whose x86 kernels
  # reserve a buffer of twice the reported L3 cache on each thread's first
  # large product, whatever the input (960 MiB on this machine's CPUs).
  malloc_limit=512
  if [ "$target" = engine ]; then malloc_limit=1024; fi
  cargo fuzz run "${build[@]}" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=16384 \
    -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" ${FUZZ_ARGS:-} \
    >"$log" 2>&1
  code=$?
  if [ $code -ne 0 ]; then
    status=$code
    echo "   FOUND A CRASH (exit $code): see $log and fuzz/artifacts/$target/"
  fi
  # The last status line (executions, coverage) and libFuzzer's totals.
  grep -E '^#[0-9]+' "$log" | tail -1
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log"
  echo "   corpus: $(find "fuzz/corpus/$target" -type f | wc -l) inputs"
done
exit $status
