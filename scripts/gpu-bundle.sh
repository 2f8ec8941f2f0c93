#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has neither Go nor a
# network, into dist/gpu/: stripped meshnode and meshctl, and the GPU ONNX Runtime build
# of make setup-gpu with its CUDA plugin xz-compressed and cut into parts of at most
# PART_MB MiB (default 56), so that each part, with the 5 MiB working tree, fits a
# transfer limited to 64 MiB. The check joins the parts itself. Prints the sizes and
# the order to carry them in.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-56}
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
echo "gpu-bundle: carry one plugin part per call (the last with $out/ort/libonnxruntime.so.1.xz), then"
echo "gpu-bundle: $out/bin in the call that runs: scripts/gpu-check.sh $out/bin $out/ort \$OUT/gpu-check"
