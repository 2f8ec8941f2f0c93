#!/usr/bin/env bash
# Optional: fetches an ONNX Runtime build whose CUDA execution provider is a plugin
# library (ORT's EP ABI), for nodes with an NVIDIA GPU. Never part of `make setup` or
# CI: the plugin alone is a 179 MB download.
#
# Two npm packages of one release (npm pack, never npm install), each checked against
# a pinned sha256, as are the libraries taken from them:
#  - com.github.asus4.onnxruntime: the ORT 1.29.0 core, libonnxruntime.so (28 MB), a
#    CPU build without the legacy CUDA append;
#  - com.github.asus4.onnxruntime.linux-x64-gpu: libonnxruntime_providers_cuda.so
#    (229 MB, exports CreateEpFactories: a plugin), libonnxruntime_providers_shared.so
#    and libonnxruntime_providers_tensorrt.so (a legacy provider library, not a plugin).
# They go together into third_party/onnxruntime-gpu/<ORT version>/: a core and a plugin
# of different ORT versions are never mixed (a 1.30 core with this 1.29 plugin crashed
# in Slice). `current` points at the version fetched last.
#
# Then it prints which CUDA/cuDNN libraries the plugin needs and whether this machine
# has them. Use: meshnode --ort-lib third_party/onnxruntime-gpu/current/libonnxruntime.so.1
# --accel cuda (the plugin beside the core is picked up; --ep-lib cuda=PATH names one).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PKG_VERSION=0.4.9
ORT_GPU_VERSION=1.29.0
CORE_PKG=com.github.asus4.onnxruntime
GPU_PKG=com.github.asus4.onnxruntime.linux-x64-gpu
declare -A TGZ_SHA=(
  [$CORE_PKG]=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
  [$GPU_PKG]=2b459e0c17f340c92970c10ed86de4f37a3009f93c14053e6ad4334cbb6be412
)
declare -A LIB_SHA=(
  [libonnxruntime.so]=5715f06d8992ca8eeeddcce43df3a7d38f97d537052126f558e912cb312460ca
  [libonnxruntime_providers_cuda.so]=56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037
  [libonnxruntime_providers_shared.so]=c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772
  [libonnxruntime_providers_tensorrt.so]=ef6071798a339038ad66c428fb1a809cf8e499bffc3b6870e4e8bc4f4c6a6320
)
declare -A LIB_PKG=(
  [libonnxruntime.so]=$CORE_PKG
  [libonnxruntime_providers_cuda.so]=$GPU_PKG
  [libonnxruntime_providers_shared.so]=$GPU_PKG
  [libonnxruntime_providers_tensorrt.so]=$GPU_PKG
)

log() { echo "setup-gpu: $*"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

[ "$(uname -m)" = x86_64 ] || { log "the GPU packages are built for linux/x86_64 only, not $(uname -m)" >&2; exit 1; }
dest="$root/third_party/onnxruntime-gpu/$ORT_GPU_VERSION"
cache="$root/.cache/npm/onnxruntime-gpu"
mkdir -p "$dest" "$cache"

have_all=1
for lib in "${!LIB_SHA[@]}"; do
  [ -f "$dest/$lib" ] && [ "$(sha "$dest/$lib")" = "${LIB_SHA[$lib]}" ] || have_all=0
done
if [ $have_all = 0 ]; then
  avail=$(df -Pm "$root" | awk 'NR==2 {print $4}')
  [ "$avail" -ge 1200 ] || { log "needs about 1.2 GB free under $root for the download and unpacking, $avail MB free" >&2; exit 1; }
  for pkg in "$CORE_PKG" "$GPU_PKG"; do
    tgz="$cache/$pkg-$PKG_VERSION.tgz"
    if ! [ -f "$tgz" ] || [ "$(sha "$tgz")" != "${TGZ_SHA[$pkg]}" ]; then
      log "fetching $pkg@$PKG_VERSION (npm pack)"
      rm -f "$tgz"
      (cd "$cache" && npm pack --silent "$pkg@$PKG_VERSION" >/dev/null)
    fi
    got=$(sha "$tgz")
    [ "$got" = "${TGZ_SHA[$pkg]}" ] || { log "sha256 of $tgz is $got, not the pinned ${TGZ_SHA[$pkg]}; refusing it" >&2; rm -f "$tgz"; exit 1; }
  done
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  for lib in "${!LIB_SHA[@]}"; do
    tar --no-same-owner -xzf "$cache/${LIB_PKG[$lib]}-$PKG_VERSION.tgz" -C "$tmp" "package/Plugins/Linux/x64/$lib"
    got=$(sha "$tmp/package/Plugins/Linux/x64/$lib")
    [ "$got" = "${LIB_SHA[$lib]}" ] || { log "sha256 of $lib is $got, not the pinned ${LIB_SHA[$lib]}; refusing it" >&2; exit 1; }
    mv "$tmp/package/Plugins/Linux/x64/$lib" "$dest/$lib"
  done
  tar --no-same-owner -xzf "$cache/$CORE_PKG-$PKG_VERSION.tgz" -C "$tmp" package/LICENSE package/package.json
  mv "$tmp/package/LICENSE" "$tmp/package/package.json" "$dest/"
  rm -rf "$cache"
fi
# meshnode looks for libonnxruntime.so.1 beside its binary; the package names it
# libonnxruntime.so.
ln -sfn libonnxruntime.so "$dest/libonnxruntime.so.1"
ln -sfn "$ORT_GPU_VERSION" "$root/third_party/onnxruntime-gpu/current"
got_version=$(strings "$dest/libonnxruntime.so" | grep -m1 -x "$ORT_GPU_VERSION" || true)
[ -n "$got_version" ] || { log "the core in $dest does not say it is ORT $ORT_GPU_VERSION; refusing to pair it with this plugin" >&2; exit 1; }
log "ONNX Runtime $ORT_GPU_VERSION core and CUDA plugin in $dest"

# What the plugin needs, and whether this machine has it. cuDNN is not a NEEDED entry:
# the CUDA provider dlopens libcudnn.so.9 when a session first uses it.
plugin="$dest/libonnxruntime_providers_cuda.so"
missing=0
while read -r lib; do
  where=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
  if [ -z "$where" ]; then
    for d in ${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH//:/ }}; do [ -e "$d/$lib" ] && where="$d/$lib" && break; done
  fi
  if [ -n "$where" ]; then log "  needs $lib: found at $where"; else log "  needs $lib: MISSING"; missing=1; fi
done < <(readelf -d "$plugin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; echo libcudnn.so.9)
if [ $missing = 1 ]; then
  log "this machine lacks libraries the CUDA plugin needs (CUDA 13 runtime: cuBLAS, cuRAND, cudart; cuDNN 9; libcuda from the NVIDIA driver);"
  log "meshnode --accel cuda will say which one, --accel auto falls back to the CPU"
else
  log "every library the CUDA plugin needs is present"
fi
