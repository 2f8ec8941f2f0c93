// The C side of the ONNX Runtime backend. cgo cannot call through the function
// pointers of ORT's OrtApi table, so each call the backend needs has a small wrapper
// here. Every wrapper returns an OrtStatus* (NULL on success) that Go turns into an
// error with lm_status_message and releases with lm_status_release.
#ifndef LAYERMESH_ORT_SHIM_H
#define LAYERMESH_ORT_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include "onnxruntime_c_api.h"

// Provider codes passed from Go.
enum { LM_PROVIDER_CPU = 0, LM_PROVIDER_CUDA = 1, LM_PROVIDER_TENSORRT = 2 };

// lm_load opens the shared library, gets API version ORT_API_VERSION and creates the
// process-wide environment. It returns NULL or a malloc'd message.
char *lm_load(const char *path);
const char *lm_version(void);

const char *lm_status_message(OrtStatus *st);
int lm_status_code(OrtStatus *st);
void lm_status_release(OrtStatus *st);

// lm_provider_options carries the string options of the GPU providers a session appends
// (TensorRT sessions also get CUDA for the nodes TensorRT rejects).
typedef struct {
  const char *const *trt_keys;
  const char *const *trt_vals;
  size_t n_trt;
  const char *const *cuda_keys;
  const char *const *cuda_vals;
  size_t n_cuda;
} lm_provider_options;

// lm_session_options appends provider's execution provider: through the plugin
// registered for it with lm_plugin_register when there is one (the EP ABI), else
// through the legacy AppendExecutionProvider_*_V2 calls of a GPU build of the core.
OrtStatus *lm_session_options(int intra_threads, int provider, const lm_provider_options *po,
                              OrtSessionOptions **out);

// lm_plugin_check dlopens path and looks for the EP ABI's entry point. It returns NULL,
// or a malloc'd message with *kind 1 when the library does not load (dlerror's text
// names the missing dependency) and 2 when it loads but is no execution provider plugin.
char *lm_plugin_check(const char *path, int *kind);
// lm_plugin_register registers the plugin at path under name and keeps the devices it
// added (a GPU one first) as provider's; *n_devices is how many it added.
OrtStatus *lm_plugin_register(int provider, const char *name, const char *path,
                              size_t *n_devices);
int lm_plugin_registered(int provider);

// lm_ep_device_count and lm_ep_device_info list what GetEpDevices reports: one entry
// per execution provider and device pair. The strings belong to ORT.
OrtStatus *lm_ep_device_count(size_t *n);
void lm_ep_device_info(size_t i, const char **ep, const char **ep_vendor, int *hw_type,
                       uint32_t *vendor_id, uint32_t *device_id);
void lm_session_options_release(OrtSessionOptions *o);
// lm_session_options_profile lowers graph optimization to the basic level (the
// extended fusions rename the nodes they merge, and a profile must name the model's
// own nodes) and, with a non-empty prefix, turns on ORT's profiler, writing to a file
// named from it.
OrtStatus *lm_session_options_profile(OrtSessionOptions *o, const char *prefix);
// lm_session_end_profiling ends a profiled session's profile; *path (malloc'd, the
// caller's) is the file it wrote.
OrtStatus *lm_session_end_profiling(OrtSession *s, char **path);
OrtStatus *lm_session_create(const char *path, OrtSessionOptions *o, OrtSession **out);
OrtStatus *lm_session_create_bytes(const void *data, size_t len, OrtSessionOptions *o, OrtSession **out);
void lm_session_release(OrtSession *s);

// lm_io_info describes input (is_output == 0) or output idx of a session. name and
// dims are malloc'd and owned by the caller. For an optional holding a tensor,
// optional_tensor is 1 and elem_type and dims describe the tensor.
OrtStatus *lm_io_count(OrtSession *s, int is_output, size_t *out);
OrtStatus *lm_io_info(OrtSession *s, int is_output, size_t idx, char **name, int *onnx_type,
                      int *elem_type, int64_t **dims, size_t *rank, int *optional_tensor);

OrtStatus *lm_tensor_with_data(void *data, size_t len, const int64_t *shape, size_t rank,
                               int elem_type, OrtValue **out);
OrtStatus *lm_tensor_alloc(const int64_t *shape, size_t rank, int elem_type, OrtValue **out);
OrtStatus *lm_tensor_fill_strings(OrtValue *v, const char *const *s, size_t n);
void lm_value_release(OrtValue *v);

OrtStatus *lm_run_options(OrtRunOptions **out);
OrtStatus *lm_run_terminate(OrtRunOptions *o);
void lm_run_options_release(OrtRunOptions *o);
OrtStatus *lm_run(OrtSession *s, OrtRunOptions *ro, const char *const *in_names,
                  const OrtValue *const *in_vals, size_t n_in, const char *const *out_names,
                  size_t n_out, OrtValue **out_vals);

// lm_value_describe reports what an output value is. onnx_type is ONNX_TYPE_*; for a
// tensor, elem_type, dims (malloc'd, caller frees) and the data pointer are set.
// has_value is 0 for an empty optional.
OrtStatus *lm_value_describe(const OrtValue *v, int *has_value, int *onnx_type, int *elem_type,
                             int64_t **dims, size_t *rank, void **data, size_t *nbytes);
// lm_string_contents copies a string tensor's n elements into one malloc'd buffer
// (*buf) with n+1 offsets (*offsets, malloc'd).
OrtStatus *lm_string_contents(const OrtValue *v, size_t n, char **buf, size_t **offsets);

#endif
