#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has neither Go nor a
# network, into dist/gpu/: stripped meshnode and meshctl, and the GPU ONNX Runtime build
# of make setup-gpu with its CUDA plugin xz-compressed and cut into parts of at most
# PART_MB MiB (default 60), so that each part fits a transfer limited to 64 MiB. The
# check joins the parts itself. Prints the sizes and the order to carry them in.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-60}
src=third_party/onnxruntime-gpu/current
out=dist/gpu
[ -f "$src/libonnxruntime_providers_cuda.so" ] || { echo "gpu-bundle: run make setup-gpu first" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out/bin" "$out/ort"
go build -trimpath -ldflags "-s -w" -o "$out/bin/meshnode" ./cmd/meshnode
go build -trimpath -ldflags "-s -w" -o "$out/bin/meshctl" ./cmd/meshctl
xz -9 -T0 -c "$src/libonnxruntime.so" >"$out/ort/libonnxruntime.so.1.xz"
xz -9 -T0 -c "$src/libonnxruntime_providers_cuda.so" | split -b "${PART_MB}M" -a 1 - "$out/ort/libonnxruntime_providers_cuda.so.xz.part-"
cp "$src/LICENSE" "$src/package.json" "$out/ort/"
echo "gpu-bundle: $out:"
find "$out" -type f -printf '  %p %s bytes\n' | sort
echo "gpu-bundle: carry $out/bin and $out/ort/libonnxruntime.so.1.xz with the first part, then one part per call;"
echo "gpu-bundle: then: xz -dk $out/ort/libonnxruntime.so.1.xz && scripts/gpu-check.sh $out/bin $out/ort"
