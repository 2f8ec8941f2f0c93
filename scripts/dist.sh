#!/usr/bin/env bash
# Writes the release tarballs dist/layermesh-<version>-linux-<arch>.tar.gz for amd64 and
# arm64. Each unpacks to one folder holding what a device needs and nothing else:
#
#   meshnode, meshctl      built with cgo for that architecture (cross-compiled by
#                          Debian's gcc for the other one; `make setup` installs it)
#   libonnxruntime.so.1    ONNX Runtime 1.30.0 for that architecture, beside the
#                          binaries, where they look for it first
#   README.md              the README's sections on running a node and on ARM boards
#   licenses/              ONNX Runtime's licence statement (the npm tarball ships no
#                          licence file: its package.json and README.md say MIT and
#                          where the text is) and the licence files of every Go module
#                          linked into the binaries
#
# VERSION (default: git describe) names the tarballs and is linked into both binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
GO=${GO:-go}

# GOARCH -> the onnxruntime-node folder name and the C cross compiler. On an arm64
# host the roles swap: its own gcc builds arm64, the x86-64 cross gcc builds amd64.
declare -A NPM_ARCH=([amd64]=x64 [arm64]=arm64)
case "$(uname -m)" in
  x86_64) declare -A CC_FOR=([amd64]=gcc [arm64]=aarch64-linux-gnu-gcc) ;;
  aarch64|arm64) declare -A CC_FOR=([amd64]=x86_64-linux-gnu-gcc [arm64]=gcc) ;;
  *) echo "dist: unsupported build host $(uname -m)" >&2; exit 1 ;;
esac

# readme_excerpt prints the README's title paragraph and the sections a device's
# operator needs: running nodes, and running on ARM boards.
readme_excerpt() {
  awk '
    /^## / { seen = 1; keep = ($0 == "## Using it" || $0 == "## Running on ARM boards") }
    !seen || keep { print }
  ' README.md
}

# go_licences copies the licence and notice files of every module linked into the
# binaries (the standard library's is Go's own LICENSE) into dir/go/<module path>.
go_licences() {
  local goos=$1 goarch=$2 dir=$3
  GOOS=$goos GOARCH=$goarch CGO_ENABLED=1 $GO list -deps \
    -f '{{with .Module}}{{if not .Main}}{{.Path}}@{{.Version}} {{.Dir}}{{end}}{{end}}' \
    ./cmd/meshnode ./cmd/meshctl | sort -u | while read -r mod moddir; do
    [ -n "$moddir" ] || continue
    local out=$dir/go/${mod%@*}
    mkdir -p "$out"
    find "$moddir" -maxdepth 1 -type f \( -iname 'LICEN[CS]E*' -o -iname 'COPYING*' -o -iname 'NOTICE*' -o -iname 'PATENTS*' \) \
      -exec cp {} "$out/" \;
    echo "$mod" >> "$dir/go/MODULES"
  done
  cp "$($GO env GOROOT)/LICENSE" "$dir/go/GO-LICENSE"
}

mkdir -p dist
for goarch in amd64 arm64; do
  name=layermesh-$VERSION-linux-$goarch
  stage=$(mktemp -d)
  out=$stage/$name
  mkdir -p "$out/licenses/onnxruntime"
  for cmd in meshnode meshctl; do
    CGO_ENABLED=1 GOOS=linux GOARCH=$goarch CC=${CC_FOR[$goarch]} \
      $GO build -trimpath -ldflags "-X main.version=$VERSION -X github.com/layermesh/layermesh/node.Version=$VERSION" \
      -o "$out/$cmd" "./cmd/$cmd"
  done
  cp "third_party/onnxruntime/linux-${NPM_ARCH[$goarch]}/libonnxruntime.so.1" "$out/"
  cp third_party/onnxruntime/npm/package.json "$out/licenses/onnxruntime/package.json"
  cp third_party/onnxruntime/npm/README.md "$out/licenses/onnxruntime/README.md"
  readme_excerpt > "$out/README.md"
  go_licences linux "$goarch" "$out/licenses"
  tar -C "$stage" --owner=0 --group=0 --sort=name -czf "dist/$name.tar.gz" "$name"
  rm -rf "$stage"
  echo "dist: dist/$name.tar.gz"
done
