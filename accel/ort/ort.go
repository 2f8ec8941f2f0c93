// Package ort is the ONNX Runtime backend of accel, and the module's only cgo package:
// it loads libonnxruntime at run time (dlopen, so a binary starts without it) and talks
// to its C API through the shim in ort_shim.c. New settles the execution provider once
// per backend; sessions are pooled so that concurrent Run calls do not queue behind one
// ORT session. Import it only where models actually run (cmd/*, node, tests); other
// packages take an accel.Backend from their caller.
package ort

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/partition/onnxpb"
)

// libraryRelPath is where `make setup` puts the ONNX Runtime library, relative to the
// repository root.
const libraryRelPath = "third_party/onnxruntime/current/libonnxruntime.so.1"

// Config configures the ONNX Runtime backend.
type Config struct {
	// LibraryPath is the ONNX Runtime shared library; "" means DefaultLibraryPath.
	LibraryPath string
	// Provider is the execution provider; "" means ProviderAuto.
	Provider accel.Provider
	// IntraOpThreads is the default intra-op thread count of each session; 0 means
	// the number of cores.
	IntraOpThreads int
	// Logger receives the backend's logs; nil means slog.Default().
	Logger *slog.Logger
	// PluginLibraries names execution provider plugin libraries (ORT's EP ABI) by the
	// provider they serve; a provider without one also finds its plugin beside the
	// core library, and else uses the core's own (legacy) provider, if built in.
	PluginLibraries map[accel.Provider]string
	// ProviderOptions pass through to the GPU providers.
	ProviderOptions ProviderOptions
}

// libraryName is the ONNX Runtime library's file name, as a release tarball puts it
// beside the binaries.
const libraryName = "libonnxruntime.so.1"

// ErrBigEndianHost is returned by New on a big-endian machine.
var ErrBigEndianHost = errors.New("ONNX Runtime backend needs a little-endian host")

// hostLittleEndian reports whether this machine stores integers little-endian. Tensor
// data travels (wire codec, KServe binary extension, ONNX raw_data) as little-endian
// bytes and is handed to ONNX Runtime as it is, which reads it in the host's order:
// that is right on amd64 and arm64 (and every platform the onnxruntime-node tarball
// ships for) and would silently read every tensor wrong on a big-endian host, so New
// refuses one instead.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// DefaultLibraryPath finds the ONNX Runtime library: $ORT_LIB if set, else
// libonnxruntime.so.1 beside the executable (an unpacked release tarball, or
// bin/linux-arm64 after make build-arm64), else
// third_party/onnxruntime/current/libonnxruntime.so.1 in the working directory or any
// directory above it, else the same path under the executable's parent directory (a
// binary in bin/ of a checkout). The library beside the binary comes before the
// checkout's because it is the one built for the binary's architecture: current is
// the host's, which an arm64 binary run from an amd64 checkout cannot load.
func DefaultLibraryPath() (string, error) {
	if p := os.Getenv("ORT_LIB"); p != "" {
		return p, nil
	}
	exe, err := os.Executable()
	if err != nil {
		exe = ""
	}
	wd, err := os.Getwd()
	if err != nil {
		wd = ""
	}
	return findLibrary(exe, wd)
}

// findLibrary is DefaultLibraryPath's search after $ORT_LIB, for the executable exe
// and working directory wd ("" for one that is unknown).
func findLibrary(exe, wd string) (string, error) {
	var tried []string
	if exe != "" {
		p := filepath.Join(filepath.Dir(exe), libraryName)
		if fileExists(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if wd != "" {
		for dir := wd; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, libraryRelPath)
			if fileExists(p) {
				return p, nil
			}
			if parent := filepath.Dir(dir); parent == dir {
				break
			}
		}
		tried = append(tried, libraryRelPath+" above "+wd)
	}
	if exe != "" {
		p := filepath.Join(filepath.Dir(filepath.Dir(exe)), libraryRelPath)
		if fileExists(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("%w: ORT_LIB is unset and none of %q exists (run make setup, or set ORT_LIB / --ort-lib)", accel.ErrLibraryNotFound, tried)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// The ONNX Runtime library and its environment are process-wide: a process can load
// one library once. runtimeState records which. Lock order: runtimeState.mu, then
// lastORTError (probeProvider reads ORT's log while holding runtimeState.mu).
var runtimeState struct {
	mu      sync.Mutex
	path    string
	version string
	err     error
	probed  map[accel.Provider]error // provider probe results, cached across backends
	plugins map[accel.Provider]pluginState
}

// loadRuntime loads the library at path once per process.
func loadRuntime(path string) (string, error) {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	if runtimeState.path != "" {
		if runtimeState.path != path {
			return "", fmt.Errorf("onnx runtime already loaded from %s; cannot also load %s", runtimeState.path, path)
		}
		return runtimeState.version, runtimeState.err
	}
	if !fileExists(path) {
		return "", fmt.Errorf("%w: %s does not exist", accel.ErrLibraryNotFound, path)
	}
	runtimeState.path = path
	runtimeState.version, runtimeState.err = loadLibrary(path)
	if runtimeState.err != nil {
		runtimeState.err = fmt.Errorf("load onnx runtime %s: %w", path, runtimeState.err)
	}
	runtimeState.probed = map[accel.Provider]error{}
	runtimeState.plugins = map[accel.Provider]pluginState{}
	return runtimeState.version, runtimeState.err
}

// Backend is the ONNX Runtime backend; New returns it as an accel.Backend.
type Backend struct {
	provider accel.Provider
	options  ProviderOptions
	threads  int
	log      *slog.Logger
}

// New loads ONNX Runtime (once per process) and settles the execution provider:
// auto takes the first of TensorRT, CUDA, CPU that can create a session, and logs why
// each GPU provider could not; an explicit GPU provider that cannot is an error
// wrapping ErrProviderUnavailable (and ErrPluginLoad or ErrNotPlugin when its plugin
// library is at fault). A GPU provider comes from its plugin library (ORT's EP ABI:
// Config.PluginLibraries, else the plugin beside the core library), else from the
// core itself where it is a GPU build with the legacy provider append.
func New(cfg Config) (accel.Backend, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "accel")
	if !hostLittleEndian {
		return nil, fmt.Errorf("%w: %s/%s", ErrBigEndianHost, runtime.GOOS, runtime.GOARCH)
	}
	path := cfg.LibraryPath
	if path == "" {
		p, err := DefaultLibraryPath()
		if err != nil {
			return nil, err
		}
		path = p
	}
	ortLog.CompareAndSwap(nil, log.With("component", "onnxruntime"))
	version, err := loadRuntime(path)
	if err != nil {
		return nil, err
	}
	threads := cfg.IntraOpThreads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	o := &Backend{threads: threads, options: cfg.ProviderOptions, log: log}
	switch p := cfg.Provider; p {
	case accel.ProviderAuto, "":
		for _, cand := range []accel.Provider{accel.ProviderTensorRT, accel.ProviderCUDA} {
			err := setUpProvider(cand, cfg.PluginLibraries, cfg.ProviderOptions)
			if err == nil {
				o.provider = cand
				break
			}
			log.Info("execution provider not usable", "provider", cand, "reason", err)
		}
		if o.provider == "" {
			o.provider = accel.ProviderCPU
			log.Info("no GPU execution provider loads: falling back to the CPU", "provider", o.provider)
		}
	case accel.ProviderCPU:
		o.provider = accel.ProviderCPU
	case accel.ProviderCUDA, accel.ProviderTensorRT:
		if err := setUpProvider(p, cfg.PluginLibraries, cfg.ProviderOptions); err != nil {
			return nil, err
		}
		o.provider = p
	default:
		return nil, fmt.Errorf("%w: unknown provider %q (want auto, cpu, cuda or tensorrt)", accel.ErrProviderUnavailable, p)
	}
	log.Info("onnx runtime ready", "library", path, "version", version, "provider", o.provider, "intra_op_threads", threads)
	return o, nil
}

// probeProvider creates a session for a one-node model with provider p. Appending a
// GPU provider fails when its library (libonnxruntime_providers_cuda.so, CUDA, cuDNN,
// TensorRT) is missing; creating the session fails when no device answers.
func probeProvider(p accel.Provider, opts ProviderOptions) error {
	runtimeState.mu.Lock()
	defer runtimeState.mu.Unlock()
	if err, ok := runtimeState.probed[p]; ok {
		return err
	}
	model, err := probeModel()
	if err == nil {
		takeLastORTError()
		var s *ortSession
		s, err = newOrtSession("", model, 1, p, opts, profiling{})
		if err == nil {
			s.release()
		} else {
			if !errors.Is(err, accel.ErrProviderUnavailable) {
				err = fmt.Errorf("%w: %s: %w", accel.ErrProviderUnavailable, p, err)
			}
			err = explainProvider(err, p, takeLastORTError())
		}
	}
	runtimeState.probed[p] = err
	return err
}

// providerLibraries are the ORT plugin libraries a GPU provider loads from the folder
// of libonnxruntime.so; each in turn needs its vendor libraries (CUDA, cuDNN, TensorRT).
var providerLibraries = map[accel.Provider][]string{
	accel.ProviderCUDA:     {"libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"},
	accel.ProviderTensorRT: {"libonnxruntime_providers_shared.so", "libonnxruntime_providers_tensorrt.so", "libonnxruntime_providers_cuda.so"},
}

// explainProvider adds what ORT logged and which provider libraries are missing to a
// provider failure, so that the operator learns what to install.
func explainProvider(err error, p accel.Provider, logged string) error {
	dir := filepath.Dir(runtimeState.path)
	var missing []string
	for _, lib := range providerLibraries[p] {
		if !fileExists(filepath.Join(dir, lib)) {
			missing = append(missing, lib)
		}
	}
	if len(missing) > 0 {
		err = fmt.Errorf("%w; missing %s in %s: the ONNX Runtime library there has no %s provider built in; name its plugin with --ep-lib %s=PATH (make setup-gpu fetches one), or point --ort-lib/ORT_LIB at a GPU build of ONNX Runtime", err, strings.Join(missing, ", "), dir, p, p)
	}
	if logged = strings.TrimSpace(logged); logged != "" {
		err = fmt.Errorf("%w (onnxruntime: %s)", err, logged)
	}
	return err
}

// probeModel is y = Identity(x) on a float32 [1] tensor.
func probeModel() ([]byte, error) {
	tensorType := func(name string) *onnxpb.ValueInfoProto {
		return &onnxpb.ValueInfoProto{
			Name: proto.String(name),
			Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
				ElemType: proto.Int32(int32(onnxpb.TensorProto_FLOAT)),
				Shape:    &onnxpb.TensorShapeProto{Dim: []*onnxpb.TensorShapeProto_Dimension{{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: 1}}}},
			}}},
		}
	}
	m := &onnxpb.ModelProto{
		IrVersion:   proto.Int64(8),
		OpsetImport: []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{
			Name:   proto.String("probe"),
			Node:   []*onnxpb.NodeProto{{OpType: proto.String("Identity"), Input: []string{"x"}, Output: []string{"y"}}},
			Input:  []*onnxpb.ValueInfoProto{tensorType("x")},
			Output: []*onnxpb.ValueInfoProto{tensorType("y")},
		},
	}
	return proto.Marshal(m)
}

// Provider is the execution provider this backend's sessions use.
func (o *Backend) Provider() accel.Provider { return o.provider }

// HeldBytes is the bytes of tensors held in ONNX Runtime's memory between runs, over
// every session of the process (accel.HeldCounter).
func (o *Backend) HeldBytes() int64 { return HeldBytes() }

// Close releases nothing: the ONNX Runtime environment lives for the process, and each
// Session is closed by its owner.
func (o *Backend) Close() error { return nil }

// Open loads the model at path into opts.PoolSize sessions (at least one).
func (o *Backend) Open(ctx context.Context, path string, opts accel.SessionOptions) (accel.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.PoolSize < 0 || opts.IntraOpThreads < 0 {
		return nil, fmt.Errorf("open %s: negative pool size or thread count", path)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open model: %w", err)
	}
	// A failed open returns a nil Session, not a nil *ortPool inside one: callers
	// test the Session against nil.
	p, err := openPool(ctx, o, path, opts, profiling{})
	if err != nil {
		return nil, err
	}
	return p, nil
}
