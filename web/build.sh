#!/usr/bin/env bash
# Builds the page's files into web/pkg: the bindings crate for wasm32,
# wasm-bindgen's JavaScript for it (the CLI's version must equal the
# wasm-bindgen crate's, pinned in web/Cargo.toml), and the bundled
# sudoku-easy model and sample puzzles. Then serve web/ (README, "In the
# browser"). CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
pinned="$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' web/Cargo.toml)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" != "$pinned" ]; then
  echo "web/build.sh: needs wasm-bindgen $pinned (found ${have:-none}):" >&2
  echo "  cargo install wasm-bindgen-cli --version $pinned" >&2
  exit 1
fi
cargo build --release --target wasm32-unknown-unknown -p trm-web
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  "$target/wasm32-unknown-unknown/release/trm_web.wasm"
cp data/sudoku-easy/model.safetensors data/sudoku-easy/puzzles.txt web/pkg/
echo "built web/pkg; serve it with: python3 -m http.server -d web --bind 127.0.0.1 8000  (then open http://localhost:8000)"
