# layermesh: `make demo` and `make test` are the two commands a fresh machine needs.
SHELL := /bin/bash
export ORT_LIB ?= $(CURDIR)/third_party/onnxruntime/current/libonnxruntime.so.1
GO ?= go
TOOLS := $(CURDIR)/bin/tools
PKGS := ./...

.PHONY: all setup build test test-unit test-faults lint vet staticcheck fmt-check fuzz bench demo proto clean

all: build

setup:
	@./scripts/setup.sh

build: setup
	$(GO) build -o bin/meshnode ./cmd/meshnode
	$(GO) build -o bin/meshctl ./cmd/meshctl

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
	rm -rf bin
