# layermesh: `make demo` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
export ORT_LIB ?= $(CURDIR)/third_party/onnxruntime/current/libonnxruntime.so.1
GO ?= go
TOOLS := $(CURDIR)/bin/tools
PKGS := ./...

.PHONY: all setup setup-gpu gpu-bundle build build-arm64 dist test test-unit test-arm64 test-faults lint vet staticcheck fmt-check fuzz bench demo proto clean

all: build

setup:
	@./scripts/setup.sh

# Optional, for nodes with an NVIDIA GPU, never part of setup or CI: ONNX Runtime
# 1.29.0 with its CUDA execution provider as a plugin library (pinned sha256) in
# third_party/onnxruntime-gpu/, and which CUDA/cuDNN libraries it needs here.
setup-gpu:
	@./scripts/setup-gpu.sh

# What scripts/gpu-check.sh needs on a GPU machine without Go or network, in dist/gpu/:
# stripped binaries, the GPU ORT build, and parts small enough to carry one at a time.
gpu-bundle: build setup-gpu
	@./scripts/gpu-bundle.sh

build: setup
	$(GO) build -o bin/meshnode ./cmd/meshnode
	$(GO) build -o bin/meshctl ./cmd/meshctl

# linux/arm64 binaries for ARM edge boards, cross-compiled with cgo (accel/ort) by
# Debian's aarch64 gcc (native gcc on an arm64 host), with the arm64 ONNX Runtime
# library beside them, where the binaries look for it first.
ARM64_CC := $(if $(filter aarch64 arm64,$(shell uname -m)),gcc,aarch64-linux-gnu-gcc)
build-arm64: setup
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=$(ARM64_CC) $(GO) build -o bin/linux-arm64/meshnode ./cmd/meshnode
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=$(ARM64_CC) $(GO) build -o bin/linux-arm64/meshctl ./cmd/meshctl
	cp third_party/onnxruntime/linux-arm64/libonnxruntime.so.1 bin/linux-arm64/

# Release tarballs for linux/amd64 and linux/arm64 in dist/.
dist: setup
	@./scripts/dist.sh

# The arm64 binaries under qemu-user: ELF checks, a single emulated node, and a mixed
# amd64 + arm64 mesh. Their own target because emulation is slow; CI runs it.
test-arm64: build build-arm64
	$(GO) vet -tags arm64emu ./test/arm64/
	$(GO) test -tags arm64emu -count=1 -timeout 10m ./test/arm64/

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

staticcheck: setup
	$(TOOLS)/staticcheck $(PKGS)

lint: fmt-check vet staticcheck

# The whole suite: lint, unit, in-process cluster and system tests (real meshnode
# processes). Fault scenarios and long benchmarks have their own targets.
test: build lint
	$(GO) test -count=1 -timeout 18m $(PKGS)

# Short fixed-time fuzzing of every network decoder, over the committed corpora.
FUZZTIME ?= 15s
fuzz: setup
	@./scripts/fuzz.sh $(FUZZTIME)

test-faults: build
	LAYERMESH_FAULTS=1 $(GO) test -v -count=1 -timeout 40m -run 'TestFault' ./test/faults/

bench: build
	@./scripts/bench.sh

demo: build
	@./scripts/demo.sh

proto:
	cp /usr/include/onnx/onnx.proto partition/onnxpb/onnx.proto
	cd partition/onnxpb && PATH=$(TOOLS):$$PATH protoc --go_out=. --go_opt=paths=source_relative \
		--go_opt=Monnx.proto=github.com/layermesh/layermesh/partition/onnxpb onnx.proto

clean:
	rm -rf bin dist
