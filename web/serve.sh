#!/usr/bin/env bash
# Builds the Ringlab explorer (release wasm + wasm-bindgen, no Trunk) into dist/
# and serves it on 127.0.0.1:$PORT (default 8080). `--build-only` just builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PORT="${PORT:-8080}"

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown
WB=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/,""); print; exit}' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB" ]; then
  echo "installing wasm-bindgen-cli $WB (a few minutes, once)" >&2
  cargo install --locked wasm-bindgen-cli --version "$WB" \
    || cargo install wasm-bindgen-cli --version "$WB"
fi

cargo build --profile wasm-release --locked --target wasm32-unknown-unknown -p ringlab-web
rm -rf dist && mkdir -p dist
wasm-bindgen --target web --no-typescript --out-dir dist --out-name ringlab_web --remove-name-section \
  target/wasm32-unknown-unknown/wasm-release/ringlab-web.wasm
cp index.html dist/index.html
cp web/style.css dist/style.css
echo "built dist/: $(du -k dist/ringlab_web_bg.wasm | cut -f1) KiB of wasm, $(gzip -c dist/ringlab_web_bg.wasm | wc -c | awk '{printf "%d", $1/1024}') KiB gzipped"

[ "${1:-}" = "--build-only" ] && exit 0
echo "Ringlab explorer: http://127.0.0.1:$PORT/"
exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory dist
