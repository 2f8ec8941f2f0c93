package ort

// This file is the only one that touches cgo types. The backend talks to ONNX Runtime's
// C API (version 24, the one onnxruntime_go v1.27.0 is built against) through the small
// shim in ort_shim.c instead of through onnxruntime_go's Value types, because those
// cannot carry what conformance needs: onnxruntime_go v1.27.0 rejects rank-0 tensors
// (Shape.Validate), copies only one byte per element of an ORT-allocated float16 or
// bfloat16 output, and refuses zero-element custom-typed tensors. The header in
// include/ is onnxruntime_go v1.27.0's copy of onnxruntime_c_api.h (MIT, Microsoft).

/*
#cgo CFLAGS: -I${SRCDIR}/include -O2
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "ort_shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/layermesh/layermesh/accel"
	"github.com/layermesh/layermesh/accel/tensor"
)

// ortError is an error status from ONNX Runtime.
type ortError struct {
	code int
	msg  string
}

func (e *ortError) Error() string { return e.msg }

// statusErr converts and releases an OrtStatus; nil stays nil.
func statusErr(st *C.OrtStatus) error {
	if st == nil {
		return nil
	}
	e := &ortError{code: int(C.lm_status_code(st)), msg: C.GoString(C.lm_status_message(st))}
	C.lm_status_release(st)
	return e
}

// ortLog receives ONNX Runtime's own log lines (component=onnxruntime). lastORTError
// keeps the latest error line: ORT often returns a terse status ("Failed to load
// shared library") and logs the useful part (which file, why) separately.
var (
	ortLog       atomic.Pointer[slog.Logger]
	lastORTError struct {
		sync.Mutex
		msg string
	}
)

//export lmGoLog
func lmGoLog(severity C.int, category, location, message *C.char) {
	msg := C.GoString(message)
	level := slog.LevelInfo
	switch {
	case severity >= C.ORT_LOGGING_LEVEL_ERROR:
		level = slog.LevelError
		lastORTError.Lock()
		lastORTError.msg = msg
		lastORTError.Unlock()
	case severity == C.ORT_LOGGING_LEVEL_WARNING:
		level = slog.LevelWarn
	case severity <= C.ORT_LOGGING_LEVEL_VERBOSE:
		level = slog.LevelDebug
	}
	log := ortLog.Load()
	if log == nil {
		log = slog.Default().With("component", "onnxruntime")
	}
	log.Log(context.Background(), level, msg, "category", C.GoString(category), "at", C.GoString(location))
}

// takeLastORTError returns and clears the latest error ORT logged.
func takeLastORTError() string {
	lastORTError.Lock()
	defer lastORTError.Unlock()
	m := lastORTError.msg
	lastORTError.msg = ""
	return m
}

// loadLibrary opens the ONNX Runtime library at path and creates the environment.
func loadLibrary(path string) (version string, err error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if msg := C.lm_load(cpath); msg != nil {
		defer C.free(unsafe.Pointer(msg))
		return "", errors.New(C.GoString(msg))
	}
	return C.GoString(C.lm_version()), nil
}

// providerCode maps a concrete provider to the shim's code.
func providerCode(p accel.Provider) C.int {
	switch p {
	case accel.ProviderCUDA:
		return C.LM_PROVIDER_CUDA
	case accel.ProviderTensorRT:
		return C.LM_PROVIDER_TENSORRT
	default:
		return C.LM_PROVIDER_CPU
	}
}

// ortSession is one ORT session. Its methods are not safe for concurrent use; the
// pool hands each one to a single Run at a time.
type ortSession struct {
	s *C.OrtSession
}

// cStrings is a NUL-terminated C copy of some Go strings, in one C array.
type cStrings struct {
	arr  unsafe.Pointer
	strs []*C.char
}

func newCStrings(ss []string) *cStrings {
	c := &cStrings{arr: C.calloc(C.size_t(len(ss)+1), C.size_t(unsafe.Sizeof(uintptr(0))))}
	a := unsafe.Slice((**C.char)(c.arr), len(ss)+1)
	for i, s := range ss {
		a[i] = C.CString(s)
		c.strs = append(c.strs, a[i])
	}
	return c
}

func (c *cStrings) ptr() **C.char { return (**C.char)(c.arr) }

func (c *cStrings) free() {
	for _, s := range c.strs {
		C.free(unsafe.Pointer(s))
	}
	C.free(c.arr)
}

// sessionOptions builds ORT session options for provider p with its string options.
func sessionOptions(threads int, p accel.Provider, options ProviderOptions) (*C.OrtSessionOptions, error) {
	po := (*C.lm_provider_options)(C.calloc(1, C.size_t(unsafe.Sizeof(C.lm_provider_options{}))))
	defer C.free(unsafe.Pointer(po))
	for _, side := range []struct {
		provider   accel.Provider
		keys, vals ***C.char
		n          *C.size_t
	}{
		{accel.ProviderTensorRT, (***C.char)(unsafe.Pointer(&po.trt_keys)), (***C.char)(unsafe.Pointer(&po.trt_vals)), &po.n_trt},
		{accel.ProviderCUDA, (***C.char)(unsafe.Pointer(&po.cuda_keys)), (***C.char)(unsafe.Pointer(&po.cuda_vals)), &po.n_cuda},
	} {
		keys, vals := options.pairs(side.provider)
		ck, cv := newCStrings(keys), newCStrings(vals)
		defer ck.free()
		defer cv.free()
		*side.keys, *side.vals, *side.n = ck.ptr(), cv.ptr(), C.size_t(len(keys))
	}
	var opts *C.OrtSessionOptions
	if err := statusErr(C.lm_session_options(C.int(threads), providerCode(p), po, &opts)); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", accel.ErrProviderUnavailable, p, err)
	}
	return opts, nil
}

// pluginLoadError tells a plugin file that does not load (a missing dependency, a file
// that is no shared library) from one that loads but is no EP plugin.
func pluginLoadError(path string) error {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var kind C.int
	msg := C.lm_plugin_check(cpath, &kind)
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	sentinel := ErrPluginLoad
	if kind == 2 {
		sentinel = ErrNotPlugin
	}
	return fmt.Errorf("%w: %s: %s", sentinel, path, C.GoString(msg))
}

// registerPlugin registers the EP plugin at path for provider p and returns how many
// devices it offers.
func registerPlugin(p accel.Provider, path string) (int, error) {
	cname, cpath := C.CString("layermesh-"+string(p)), C.CString(path)
	defer C.free(unsafe.Pointer(cname))
	defer C.free(unsafe.Pointer(cpath))
	var n C.size_t
	if err := statusErr(C.lm_plugin_register(providerCode(p), cname, cpath, &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// hardwareTypes names ORT's OrtHardwareDeviceType values.
var hardwareTypes = map[int]string{0: "cpu", 1: "gpu", 2: "npu"}

// epDevices lists the execution provider and device pairs ORT knows.
func epDevices() ([]EPDevice, error) {
	var n C.size_t
	if err := statusErr(C.lm_ep_device_count(&n)); err != nil {
		return nil, err
	}
	out := make([]EPDevice, int(n))
	for i := range out {
		var ep, vendor *C.char
		var hw C.int
		var vendorID, deviceID C.uint32_t
		C.lm_ep_device_info(C.size_t(i), &ep, &vendor, &hw, &vendorID, &deviceID)
		out[i] = EPDevice{EP: C.GoString(ep), EPVendor: C.GoString(vendor), Hardware: hardwareTypes[int(hw)],
			VendorID: uint32(vendorID), DeviceID: uint32(deviceID)}
	}
	return out, nil
}

// newOrtSession creates a session from a model path, or from model bytes when path is
// empty (used by the provider probe).
// A profiled session (see profiling) optimizes at the basic level only.
func newOrtSession(path string, model []byte, threads int, p accel.Provider, options ProviderOptions, prof profiling) (*ortSession, error) {
	opts, err := sessionOptions(threads, p, options)
	if err != nil {
		return nil, err
	}
	defer C.lm_session_options_release(opts)
	if prof.basic {
		cprefix := C.CString(prof.prefix)
		defer C.free(unsafe.Pointer(cprefix))
		if err := statusErr(C.lm_session_options_profile(opts, cprefix)); err != nil {
			return nil, err
		}
	}
	var s *C.OrtSession
	var st *C.OrtStatus
	if path != "" {
		cpath := C.CString(path)
		defer C.free(unsafe.Pointer(cpath))
		st = C.lm_session_create(cpath, opts, &s)
	} else {
		var pin runtime.Pinner
		pin.Pin(&model[0])
		st = C.lm_session_create_bytes(unsafe.Pointer(&model[0]), C.size_t(len(model)), opts, &s)
		pin.Unpin()
	}
	if err := statusErr(st); err != nil {
		return nil, err
	}
	return &ortSession{s: s}, nil
}

// endProfiling ends the profile of a session opened with a profile prefix and returns
// the path of the file ORT wrote.
func (s *ortSession) endProfiling() (string, error) {
	var p *C.char
	if err := statusErr(C.lm_session_end_profiling(s.s, &p)); err != nil {
		return "", err
	}
	defer C.free(unsafe.Pointer(p))
	return C.GoString(p), nil
}

func (s *ortSession) release() {
	if s.s != nil {
		C.lm_session_release(s.s)
		s.s = nil
	}
}

// ioInfo is what ORT reports about one input or output.
type ioInfo struct {
	accel.TensorInfo
	isTensor bool
	kind     string // ONNX value kind for messages: tensor, sequence, map, optional...
}

var onnxTypeNames = map[int]string{0: "unknown", 1: "tensor", 2: "sequence", 3: "map", 4: "opaque", 5: "sparse tensor", 6: "optional"}

func (s *ortSession) ioInfos(output bool) ([]ioInfo, error) {
	isOut := C.int(0)
	if output {
		isOut = 1
	}
	var n C.size_t
	if err := statusErr(C.lm_io_count(s.s, isOut, &n)); err != nil {
		return nil, err
	}
	infos := make([]ioInfo, int(n))
	for i := range infos {
		var name *C.char
		var onnxType, elem, optTensor C.int
		var dims *C.int64_t
		var rank C.size_t
		st := C.lm_io_info(s.s, isOut, C.size_t(i), &name, &onnxType, &elem, &dims, &rank, &optTensor)
		if name != nil {
			infos[i].Name = C.GoString(name)
			C.free(unsafe.Pointer(name))
		}
		if dims != nil {
			infos[i].Shape = append([]int64{}, unsafe.Slice((*int64)(unsafe.Pointer(dims)), int(rank))...)
			C.free(unsafe.Pointer(dims))
		}
		if err := statusErr(st); err != nil {
			return nil, err
		}
		infos[i].isTensor = onnxType == C.ONNX_TYPE_TENSOR || optTensor != 0
		infos[i].kind = onnxTypeNames[int(onnxType)]
		if optTensor != 0 {
			infos[i].kind = "optional tensor"
		}
		if infos[i].isTensor {
			infos[i].DType = tensor.DType(elem)
			if infos[i].Shape == nil {
				infos[i].Shape = []int64{}
			}
		}
	}
	return infos, nil
}

// cValues holds the C-side inputs of one run and releases them together.
type cValues struct {
	vals   []*C.OrtValue
	cstrs  []*C.char
	pinner runtime.Pinner
	// pinned are the Go buffers the values read in place, [start, end).
	pinned [][2]uintptr
}

// aliases says whether [p, p+n) overlaps a Go buffer the values read in place.
func (c *cValues) aliases(p unsafe.Pointer, n uintptr) bool {
	a := uintptr(p)
	for _, r := range c.pinned {
		if a < r[1] && a+n > r[0] {
			return true
		}
	}
	return false
}

func (c *cValues) release() {
	for _, v := range c.vals {
		if v != nil {
			C.lm_value_release(v)
		}
	}
	for _, s := range c.cstrs {
		C.free(unsafe.Pointer(s))
	}
	c.pinner.Unpin()
}

// elementAligned returns data itself when its first byte sits at a multiple of the
// element size (at most 8, a complex128's alignment in C), else an aligned copy. A tensor cut from a KServe binary body starts
// wherever the one before it ended, and ONNX Runtime's kernels read a float* or
// int64_t* as C++ does, which assumes natural alignment: amd64 and arm64 forgive an
// unaligned load in plain code, but not every instruction a compiler may choose for
// it does, so ONNX Runtime never gets one. A Go allocation of n bytes is aligned to
// the largest power of two up to 8 that divides n, enough for every element size.
func elementAligned(data []byte, size int) []byte {
	align := uintptr(min(size, 8))
	if align <= 1 || uintptr(unsafe.Pointer(&data[0]))%align == 0 {
		return data
	}
	return append(make([]byte, 0, len(data)), data...)
}

// add wraps t (already validated) as an OrtValue. Numeric data is pinned and used in
// place, not copied; it must not change until release.
func (c *cValues) add(t *tensor.Tensor) error {
	var v *C.OrtValue
	var shapePtr *C.int64_t
	shape := append([]int64(nil), t.Shape...)
	if len(shape) > 0 {
		c.pinner.Pin(&shape[0])
		shapePtr = (*C.int64_t)(unsafe.Pointer(&shape[0]))
	}
	rank := C.size_t(len(shape))
	var err error
	switch {
	case t.DType == tensor.String:
		err = statusErr(C.lm_tensor_alloc(shapePtr, rank, C.int(t.DType), &v))
		if err == nil && len(t.Strings) > 0 {
			ptrs := (*[1 << 30]*C.char)(C.malloc(C.size_t(len(t.Strings)) * C.size_t(unsafe.Sizeof(uintptr(0)))))[:len(t.Strings):len(t.Strings)]
			c.cstrs = append(c.cstrs, (*C.char)(unsafe.Pointer(&ptrs[0])))
			for i, s := range t.Strings {
				ptrs[i] = C.CString(s)
				c.cstrs = append(c.cstrs, ptrs[i])
			}
			err = statusErr(C.lm_tensor_fill_strings(v, &ptrs[0], C.size_t(len(ptrs))))
		}
	case len(t.Data) == 0:
		err = statusErr(C.lm_tensor_alloc(shapePtr, rank, C.int(t.DType), &v))
	default:
		data := elementAligned(t.Data, t.DType.Size())
		c.pinner.Pin(&data[0])
		start := uintptr(unsafe.Pointer(&data[0]))
		c.pinned = append(c.pinned, [2]uintptr{start, start + uintptr(len(data))})
		err = statusErr(C.lm_tensor_with_data(unsafe.Pointer(&data[0]), C.size_t(len(data)), shapePtr, rank, C.int(t.DType), &v))
	}
	if v != nil {
		c.vals = append(c.vals, v)
	}
	if err != nil {
		return fmt.Errorf("input %q: %w", t.Name, err)
	}
	return nil
}

// runOptions lets a context cancel a run in flight.
type runOptions struct {
	ro *C.OrtRunOptions
}

func newRunOptions() (*runOptions, error) {
	var ro *C.OrtRunOptions
	if err := statusErr(C.lm_run_options(&ro)); err != nil {
		return nil, err
	}
	return &runOptions{ro: ro}, nil
}

func (r *runOptions) terminate() { _ = statusErr(C.lm_run_terminate(r.ro)) }
func (r *runOptions) release()   { C.lm_run_options_release(r.ro) }

// run executes the session; outputs come back as Go tensors named after outNames.
func (s *ortSession) run(ro *runOptions, inNames []string, inVals []*C.OrtValue, outNames, keep []string, pinned *cValues) ([]tensor.Tensor, []accel.Held, error) {
	all := append(slices.Clone(outNames), keep...)
	cnames := make([]*C.char, 0, len(inNames)+len(all))
	defer func() {
		for _, p := range cnames {
			C.free(unsafe.Pointer(p))
		}
	}()
	// The name and value arrays live in C memory: cgo forbids passing Go memory that
	// holds Go pointers to C.
	ptrSize := C.size_t(unsafe.Sizeof(uintptr(0)))
	arr := func(n int) unsafe.Pointer {
		if n == 0 {
			n = 1
		}
		return C.calloc(C.size_t(n), ptrSize)
	}
	inNameArr, inValArr, outNameArr, outValArr := arr(len(inNames)), arr(len(inNames)), arr(len(all)), arr(len(all))
	defer C.free(inNameArr)
	defer C.free(inValArr)
	defer C.free(outNameArr)
	defer C.free(outValArr)
	inN := unsafe.Slice((**C.char)(inNameArr), len(inNames))
	inV := unsafe.Slice((**C.OrtValue)(inValArr), len(inNames))
	outN := unsafe.Slice((**C.char)(outNameArr), len(all))
	outV := unsafe.Slice((**C.OrtValue)(outValArr), len(all))
	for i, n := range inNames {
		inN[i] = C.CString(n)
		cnames = append(cnames, inN[i])
		inV[i] = inVals[i]
	}
	for i, n := range all {
		outN[i] = C.CString(n)
		cnames = append(cnames, outN[i])
	}
	st := C.lm_run(s.s, ro.ro, (**C.char)(inNameArr), (**C.OrtValue)(inValArr), C.size_t(len(inNames)),
		(**C.char)(outNameArr), C.size_t(len(all)), (**C.OrtValue)(outValArr))
	defer func() {
		for _, v := range outV {
			if v != nil {
				C.lm_value_release(v)
			}
		}
	}()
	if err := statusErr(st); err != nil {
		return nil, nil, err
	}
	out := make([]tensor.Tensor, len(outNames))
	for i, v := range outV[:len(outNames)] {
		t, err := goTensor(v, outNames[i])
		if err != nil {
			return nil, nil, err
		}
		out[i] = t
	}
	held := make([]accel.Held, 0, len(keep))
	fail := func(err error) ([]tensor.Tensor, []accel.Held, error) {
		for _, h := range held {
			h.Release()
		}
		return nil, nil, err
	}
	for i := range keep {
		h, err := holdValue(&outV[len(outNames)+i], keep[i], pinned)
		if err != nil {
			return fail(err)
		}
		held = append(held, h)
	}
	return out, held, nil
}

// heldValue is an OrtValue kept between runs (accel.Held).
type heldValue struct {
	mu sync.Mutex
	v  *C.OrtValue
	// data is v's tensor data, in ONNX Runtime's memory until v is released.
	data  unsafe.Pointer
	dtype tensor.DType
	shape []int64
	bytes int64
}

// holdValue takes the output *slot (which it leaves nil, so the run's cleanup does
// not release it) as a held value. An output that reads a Go input buffer in place
// (a graph that hands an input straight on) is copied into ONNX Runtime's memory
// first: that buffer is unpinned when the run returns.
func holdValue(slot **C.OrtValue, name string, pinned *cValues) (*heldValue, error) {
	v := *slot
	var hasValue, onnxType, elem C.int
	var dims *C.int64_t
	var rank, nbytes C.size_t
	var data unsafe.Pointer
	st := C.lm_value_describe(v, &hasValue, &onnxType, &elem, &dims, &rank, &data, &nbytes)
	h := &heldValue{dtype: tensor.DType(elem), shape: []int64{}}
	if dims != nil {
		h.shape = append(h.shape, unsafe.Slice((*int64)(unsafe.Pointer(dims)), int(rank))...)
		C.free(unsafe.Pointer(dims))
	}
	if err := statusErr(st); err != nil {
		return nil, fmt.Errorf("output %q: %w", name, err)
	}
	if hasValue == 0 || onnxType != C.ONNX_TYPE_TENSOR || !h.dtype.Valid() || h.dtype == tensor.String {
		return nil, fmt.Errorf("%w: output %q cannot be held (ONNX type %d, element type %d)", accel.ErrUnsupportedOutput, name, int(onnxType), int(elem))
	}
	h.bytes = int64(nbytes)
	if nbytes > 0 && pinned.aliases(data, uintptr(nbytes)) {
		c, err := allocHeld(h.dtype, h.shape)
		if err == nil && c.bytes != h.bytes {
			c.Release()
			err = fmt.Errorf("%d bytes allocated for %d", c.bytes, nbytes)
		}
		if err != nil {
			return nil, fmt.Errorf("output %q: copying it out of an input: %w", name, err)
		}
		copy(c.bytesView(), unsafe.Slice((*byte)(data), int(nbytes)))
		return c, nil
	}
	*slot = nil
	h.v, h.data = v, data
	heldBytes.Add(h.bytes)
	return h, nil
}

// heldBytes counts the bytes of the values held now, over every session.
var heldBytes atomic.Int64

// HeldBytes is the bytes of tensors kept in ONNX Runtime's memory between runs
// (accel.Held values not yet released), over every session of the process. The
// stage runtime's state accounting counts the same values per session; a value
// nobody releases shows here and nowhere else.
func HeldBytes() int64 { return heldBytes.Load() }

// allocHeld allocates an uninitialized tensor in ONNX Runtime's memory.
func allocHeld(dtype tensor.DType, shape []int64) (*heldValue, error) {
	var shapePtr *C.int64_t
	if len(shape) > 0 {
		shapePtr = (*C.int64_t)(C.malloc(C.size_t(len(shape)) * 8))
		defer C.free(unsafe.Pointer(shapePtr))
		copy(unsafe.Slice((*int64)(unsafe.Pointer(shapePtr)), len(shape)), shape)
	}
	var v *C.OrtValue
	if err := statusErr(C.lm_tensor_alloc(shapePtr, C.size_t(len(shape)), C.int(dtype), &v)); err != nil {
		return nil, err
	}
	var hasValue, onnxType, elem C.int
	var dims *C.int64_t
	var rank, nbytes C.size_t
	var data unsafe.Pointer
	err := statusErr(C.lm_value_describe(v, &hasValue, &onnxType, &elem, &dims, &rank, &data, &nbytes))
	C.free(unsafe.Pointer(dims))
	if err != nil {
		C.lm_value_release(v)
		return nil, err
	}
	heldBytes.Add(int64(nbytes))
	return &heldValue{v: v, data: data, dtype: dtype, shape: slices.Clone(shape), bytes: int64(nbytes)}, nil
}

// bytesView is the value's data as a byte slice over ONNX Runtime's memory: valid
// while the value is not released, which its user ensures (h.mu, or owning h).
func (h *heldValue) bytesView() []byte {
	if h.bytes == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(h.data), int(h.bytes))
}

func (h *heldValue) DType() tensor.DType { return h.dtype }
func (h *heldValue) Shape() []int64      { return slices.Clone(h.shape) }
func (h *heldValue) Bytes() int64        { return h.bytes }

func (h *heldValue) released() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.v == nil
}

// Tensor copies the value into Go memory.
func (h *heldValue) Tensor(name string) (tensor.Tensor, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.v == nil {
		return tensor.Tensor{}, fmt.Errorf("%w: held value %q was released", accel.ErrSessionClosed, name)
	}
	return goTensor(h.v, name)
}

// ReadAt copies the value's bytes from off into p.
func (h *heldValue) ReadAt(p []byte, off int64) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.v == nil:
		return 0, fmt.Errorf("%w: held value was released", accel.ErrSessionClosed)
	case off < 0:
		return 0, fmt.Errorf("%w: read at offset %d", accel.ErrInputMismatch, off)
	case off >= h.bytes:
		return 0, io.EOF
	}
	n := copy(p, unsafe.Slice((*byte)(unsafe.Add(h.data, off)), int(h.bytes-off)))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Release frees the OrtValue; later calls do nothing.
func (h *heldValue) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.v != nil {
		C.lm_value_release(h.v)
		h.v, h.data = nil, nil
		heldBytes.Add(-h.bytes)
	}
}

// goTensor copies an ORT output value into a tensor.Tensor.
func goTensor(v *C.OrtValue, name string) (tensor.Tensor, error) {
	var hasValue, onnxType, elem C.int
	var dims *C.int64_t
	var rank, nbytes C.size_t
	var data unsafe.Pointer
	st := C.lm_value_describe(v, &hasValue, &onnxType, &elem, &dims, &rank, &data, &nbytes)
	t := tensor.Tensor{Name: name, DType: tensor.DType(elem), Shape: []int64{}}
	if dims != nil {
		t.Shape = append(t.Shape, unsafe.Slice((*int64)(unsafe.Pointer(dims)), int(rank))...)
		C.free(unsafe.Pointer(dims))
	}
	if err := statusErr(st); err != nil {
		return tensor.Tensor{}, fmt.Errorf("output %q: %w", name, err)
	}
	if hasValue == 0 {
		return tensor.Tensor{}, fmt.Errorf("%w: output %q is an empty optional", accel.ErrUnsupportedOutput, name)
	}
	if onnxType != C.ONNX_TYPE_TENSOR {
		return tensor.Tensor{}, fmt.Errorf("%w: output %q is a %s", accel.ErrUnsupportedOutput, name, onnxTypeNames[int(onnxType)])
	}
	if !t.DType.Valid() {
		return tensor.Tensor{}, fmt.Errorf("%w: output %q has element type %d", accel.ErrUnsupportedOutput, name, int(elem))
	}
	n, err := tensor.NumElements(t.Shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("output %q: %w", name, err)
	}
	if t.DType == tensor.String {
		var buf *C.char
		var offs *C.size_t
		st := C.lm_string_contents(v, C.size_t(n), &buf, &offs)
		defer C.free(unsafe.Pointer(buf))
		defer C.free(unsafe.Pointer(offs))
		if err := statusErr(st); err != nil {
			return tensor.Tensor{}, fmt.Errorf("output %q: %w", name, err)
		}
		o := unsafe.Slice((*C.size_t)(offs), int(n)+1)
		t.Strings = make([]string, n)
		for i := range t.Strings {
			t.Strings[i] = C.GoStringN((*C.char)(unsafe.Add(unsafe.Pointer(buf), o[i])), C.int(o[i+1]-o[i]))
		}
		return t, nil
	}
	want := n * int64(t.DType.Size())
	if int64(nbytes) != want {
		return tensor.Tensor{}, fmt.Errorf("output %q: Backend reports %d bytes for %v of %s, want %d", name, nbytes, t.Shape, t.DType, want)
	}
	// Appending to nil allocates without zeroing what the copy overwrites (make would
	// clear it first: for a 25 MB output, as long again as the copy).
	t.Data = []byte{}
	if want > 0 {
		t.Data = append([]byte(nil), unsafe.Slice((*byte)(data), int(want))...)
	}
	return t, nil
}
