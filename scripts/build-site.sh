#!/usr/bin/env bash
# Builds the console's browser side into target/site: what `cargo leptos build --release
# --split` did, step by step, with tools that are quick to get (see the Makefile):
#   1. cargo builds the frontend crate for wasm32 (profile wasm-release; relocations kept
#      so the module can be cut, see .cargo/config.toml),
#   2. doppel-wasm-split cuts it at the lazy routes (tools/wasm-split),
#   3. wasm-bindgen writes the JS glue, wasm-opt shrinks every module,
#   4. esbuild minifies the glue, lightningcss prefixes and minifies the style sheet,
#   5. public/ is copied to the site root.
# The new pkg/ is assembled next to the old one and swapped in at the end, so a server
# running meanwhile never serves half a build.
# Env: LEPTOS_OUTPUT_NAME (file names, default doppel), WASM_SPLIT (the split tool).
set -euo pipefail
cd "$(dirname "$0")/.."

name=${LEPTOS_OUTPUT_NAME:-doppel}
split_tool=${WASM_SPLIT:-target/tools/release/doppel-wasm-split}
site=target/site
pkg=$site/pkg
front=target/front
profile=wasm-release
bin=end2end/node_modules/.bin

# Rust flags come from .cargo/config.toml (erase_components, which the server must share,
# and the relocations the split needs); a RUSTFLAGS variable would replace them.
cargo build --package=frontend --lib --target=wasm32-unknown-unknown --no-default-features \
  --profile=$profile --target-dir=$front
wasm=$front/wasm32-unknown-unknown/$profile/frontend.wasm

next=$pkg.next
rm -rf "$next"
mkdir -p "$next"
main=$("$split_tool" "$wasm" "$next" "$name")
wasm-bindgen --target=web --keep-lld-exports --no-demangle --no-typescript \
  --out-name="$name" --out-dir="$next" "$main"
# The server's hydration script asks for /pkg/<name>.wasm.
mv "$next/${name}_bg.wasm" "$next/$name.wasm"
for module in "$next"/*.wasm; do
  "$bin/wasm-opt" --quiet -Oz --enable-bulk-memory --enable-nontrapping-float-to-int "$module" -o "$module"
done
# wasm-bindgen imports the split loader once per chunk under one key; the duplicates are
# the same module, so the warning about them says nothing.
"$bin/esbuild" --minify --log-level=warning --log-override:duplicate-object-key=silent --allow-overwrite "$next/$name.js" --outfile="$next/$name.js"
# The same browsers cargo-leptos targeted (browserquery in Cargo.toml).
"$bin/lightningcss" --minify --targets defaults style/main.css -o "$next/$name.css"
cp -r public/. "$site/"
rm -rf "$pkg"
mv "$next" "$pkg"
ls -l "$pkg" | awk 'NR > 1 { printf "  %-48s %9d B\n", $9, $5 }'
