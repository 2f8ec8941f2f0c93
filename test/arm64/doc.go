// Package arm64 holds the system tests of the linux/arm64 build, run on an amd64 host
// under qemu-user: the cross-compiled binaries are aarch64 ELF, an emulated meshnode
// answers a model as the native one does, and a mesh of two native nodes and one
// emulated node places the light stage of a split model on the slow emulated node and
// still answers like one ONNX Runtime session on the whole model.
//
// The tests carry the build tag arm64emu: emulation is slow for `make test` on two
// cores, so `make test-arm64` (which CI runs) builds bin/linux-arm64 first and runs
// them. `make setup` installs what they need (the aarch64 cross gcc and libc, the
// arm64 libstdc++ that ONNX Runtime links against, qemu-user-static); a missing piece
// fails them, it never skips them.
package arm64
