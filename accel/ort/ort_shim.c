#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort_shim.h"
#include "_cgo_export.h"

static const OrtApiBase *api_base;
static const OrtApi *api;
static OrtEnv *env;
static OrtAllocator *allocator;
static OrtMemoryInfo *cpu_memory;

static char *dup_message(const char *prefix, const char *msg) {
  size_t n = strlen(prefix) + strlen(msg) + 3;
  char *out = malloc(n);
  if (out) snprintf(out, n, "%s: %s", prefix, msg);
  return out;
}

// log_to_go hands ORT's log lines to Go's slog instead of ORT's coloured stderr.
static void ORT_API_CALL log_to_go(void *param, OrtLoggingLevel severity, const char *category,
                                   const char *logid, const char *code_location,
                                   const char *message) {
  (void)param;
  (void)logid;
  lmGoLog((int)severity, (char *)category, (char *)code_location, (char *)message);
}

char *lm_load(const char *path) {
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *e = dlerror();
    return dup_message("dlopen", e ? e : "unknown error");
  }
  typedef const OrtApiBase *(*get_base_fn)(void);
  get_base_fn get_base = (get_base_fn)dlsym(lib, "OrtGetApiBase");
  if (!get_base) {
    dlclose(lib);
    return dup_message("dlsym OrtGetApiBase", "symbol missing (not an ONNX Runtime library?)");
  }
  api_base = get_base();
  api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    char msg[128];
    snprintf(msg, sizeof msg, "library version %s does not provide C API %d",
             api_base->GetVersionString(), ORT_API_VERSION);
    dlclose(lib);
    return strdup(msg);
  }
  OrtStatus *st = api->CreateEnvWithCustomLogger(log_to_go, NULL, ORT_LOGGING_LEVEL_WARNING,
                                                 "layermesh", &env);
  if (st) {
    char *out = dup_message("CreateEnv", api->GetErrorMessage(st));
    api->ReleaseStatus(st);
    return out;
  }
  st = api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &cpu_memory);
  if (st) {
    char *out = dup_message("CreateCpuMemoryInfo", api->GetErrorMessage(st));
    api->ReleaseStatus(st);
    return out;
  }
  st = api->GetAllocatorWithDefaultOptions(&allocator);
  if (st) {
    char *out = dup_message("GetAllocatorWithDefaultOptions", api->GetErrorMessage(st));
    api->ReleaseStatus(st);
    return out;
  }
  return NULL;
}

const char *lm_version(void) { return api_base ? api_base->GetVersionString() : ""; }

const char *lm_status_message(OrtStatus *st) { return api->GetErrorMessage(st); }
int lm_status_code(OrtStatus *st) { return (int)api->GetErrorCode(st); }
void lm_status_release(OrtStatus *st) { api->ReleaseStatus(st); }

// The EP devices of the plugin registered for each provider code. They belong to the
// environment, which lives for the process.
#define LM_MAX_EP_DEVICES 16
static const OrtEpDevice *plugin_devices[3][LM_MAX_EP_DEVICES];
static size_t plugin_device_count[3];

char *lm_plugin_check(const char *path, int *kind) {
  *kind = 0;
  // RTLD_NOW resolves every dependency now, so a missing libcublas is reported here
  // by name rather than as ORT's terser "failed to load".
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *e = dlerror();
    *kind = 1;
    return strdup(e ? e : "dlopen failed");
  }
  // The handle stays open: ORT dlopens the same file again when registering it, and
  // a second reference costs nothing.
  if (!dlsym(lib, "CreateEpFactories")) {
    *kind = 2;
    return strdup("library exports no CreateEpFactories (not an ONNX Runtime execution provider plugin)");
  }
  return NULL;
}

static int known_device(const OrtEpDevice *d, const OrtEpDevice *const *before, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (before[i] == d) return 1;
  return 0;
}

OrtStatus *lm_plugin_register(int provider, const char *name, const char *path,
                              size_t *n_devices) {
  const OrtEpDevice *const *devs = NULL;
  size_t n_before = 0, n_after = 0;
  *n_devices = 0;
  OrtStatus *st = api->GetEpDevices(env, &devs, &n_before);
  if (st) return st;
  // GetEpDevices returns the environment's own array, which registration replaces, so
  // the devices known before are copied aside to tell the plugin's new ones apart.
  const OrtEpDevice **before = calloc(n_before + 1, sizeof *before);
  if (!before) return api->CreateStatus(ORT_FAIL, "out of memory");
  memcpy(before, devs, n_before * sizeof *before);
  if ((st = api->RegisterExecutionProviderLibrary(env, name, path))) goto done;
  if ((st = api->GetEpDevices(env, &devs, &n_after))) goto done;
  size_t k = 0;
  // GPU devices first: the session appends the first one.
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < n_after && k < LM_MAX_EP_DEVICES; i++) {
      if (known_device(devs[i], before, n_before)) continue;
      int gpu = api->HardwareDevice_Type(api->EpDevice_Device(devs[i])) == OrtHardwareDeviceType_GPU;
      if (gpu == (pass == 0)) plugin_devices[provider][k++] = devs[i];
    }
  }
  plugin_device_count[provider] = k;
  *n_devices = k;
done:
  free(before);
  return st;
}

int lm_plugin_registered(int provider) { return plugin_device_count[provider] > 0; }

OrtStatus *lm_ep_device_count(size_t *n) {
  const OrtEpDevice *const *devs = NULL;
  return api->GetEpDevices(env, &devs, n);
}

void lm_ep_device_info(size_t i, const char **ep, const char **ep_vendor, int *hw_type,
                       uint32_t *vendor_id, uint32_t *device_id) {
  const OrtEpDevice *const *devs = NULL;
  size_t n = 0;
  *ep = *ep_vendor = "";
  *hw_type = -1;
  *vendor_id = *device_id = 0;
  OrtStatus *st = api->GetEpDevices(env, &devs, &n);
  if (st) {
    api->ReleaseStatus(st);
    return;
  }
  if (i >= n) return;
  const OrtHardwareDevice *hw = api->EpDevice_Device(devs[i]);
  *ep = api->EpDevice_EpName(devs[i]);
  *ep_vendor = api->EpDevice_EpVendor(devs[i]);
  *hw_type = (int)api->HardwareDevice_Type(hw);
  *vendor_id = api->HardwareDevice_VendorId(hw);
  *device_id = api->HardwareDevice_DeviceId(hw);
}

// append_plugin appends the first device of provider's plugin with its options.
static OrtStatus *append_plugin(OrtSessionOptions *o, int provider, const char *const *keys,
                                const char *const *vals, size_t n) {
  return api->SessionOptionsAppendExecutionProvider_V2(o, env, &plugin_devices[provider][0], 1,
                                                       keys, vals, n);
}

static OrtStatus *append_legacy_tensorrt(OrtSessionOptions *o, const lm_provider_options *po) {
  OrtTensorRTProviderOptionsV2 *trt = NULL;
  OrtStatus *st = api->CreateTensorRTProviderOptions(&trt);
  if (st) return st;
  if (po->n_trt > 0) st = api->UpdateTensorRTProviderOptions(trt, po->trt_keys, po->trt_vals, po->n_trt);
  if (!st) st = api->SessionOptionsAppendExecutionProvider_TensorRT_V2(o, trt);
  api->ReleaseTensorRTProviderOptions(trt);
  return st;
}

static OrtStatus *append_legacy_cuda(OrtSessionOptions *o, const lm_provider_options *po) {
  OrtCUDAProviderOptionsV2 *cuda = NULL;
  OrtStatus *st = api->CreateCUDAProviderOptions(&cuda);
  if (st) return st;
  if (po->n_cuda > 0) st = api->UpdateCUDAProviderOptions(cuda, po->cuda_keys, po->cuda_vals, po->n_cuda);
  if (!st) st = api->SessionOptionsAppendExecutionProvider_CUDA_V2(o, cuda);
  api->ReleaseCUDAProviderOptions(cuda);
  return st;
}

OrtStatus *lm_session_options(int intra_threads, int provider, const lm_provider_options *po,
                              OrtSessionOptions **out) {
  OrtSessionOptions *o = NULL;
  OrtStatus *st = api->CreateSessionOptions(&o);
  if (st) return st;
  if (intra_threads > 0 && (st = api->SetIntraOpNumThreads(o, intra_threads))) goto fail;
  if ((st = api->SetInterOpNumThreads(o, 1))) goto fail;
  if (provider == LM_PROVIDER_TENSORRT) {
    st = lm_plugin_registered(LM_PROVIDER_TENSORRT)
             ? append_plugin(o, LM_PROVIDER_TENSORRT, po->trt_keys, po->trt_vals, po->n_trt)
             : append_legacy_tensorrt(o, po);
    if (st) goto fail;
  }
  // TensorRT sessions also get CUDA so that nodes TensorRT rejects still run on the
  // GPU; with a TensorRT plugin that is only possible when a CUDA plugin is registered.
  if (provider == LM_PROVIDER_CUDA ||
      (provider == LM_PROVIDER_TENSORRT && !lm_plugin_registered(LM_PROVIDER_TENSORRT))) {
    st = lm_plugin_registered(LM_PROVIDER_CUDA)
             ? append_plugin(o, LM_PROVIDER_CUDA, po->cuda_keys, po->cuda_vals, po->n_cuda)
             : append_legacy_cuda(o, po);
    if (st) goto fail;
  } else if (provider == LM_PROVIDER_TENSORRT && lm_plugin_registered(LM_PROVIDER_CUDA)) {
    if ((st = append_plugin(o, LM_PROVIDER_CUDA, po->cuda_keys, po->cuda_vals, po->n_cuda))) goto fail;
  }
  *out = o;
  return NULL;
fail:
  api->ReleaseSessionOptions(o);
  return st;
}

void lm_session_options_release(OrtSessionOptions *o) { api->ReleaseSessionOptions(o); }

OrtStatus *lm_session_options_profile(OrtSessionOptions *o, const char *prefix) {
  OrtStatus *st = api->SetSessionGraphOptimizationLevel(o, ORT_ENABLE_BASIC);
  if (st || !prefix || !*prefix) return st;
  return api->EnableProfiling(o, prefix);
}

OrtStatus *lm_session_end_profiling(OrtSession *s, char **path) {
  OrtAllocator *a = NULL;
  OrtStatus *st = api->GetAllocatorWithDefaultOptions(&a);
  if (st) return st;
  char *p = NULL;
  if ((st = api->SessionEndProfiling(s, a, &p))) return st;
  *path = strdup(p);
  // The copy is what the caller reads; ORT's string goes back to its allocator
  // whatever that says.
  OrtStatus *freed = api->AllocatorFree(a, p);
  if (freed) api->ReleaseStatus(freed);
  if (!*path) return api->CreateStatus(ORT_FAIL, "out of memory copying the profile's path");
  return NULL;
}

OrtStatus *lm_session_create(const char *path, OrtSessionOptions *o, OrtSession **out) {
  return api->CreateSession(env, path, o, out);
}

OrtStatus *lm_session_create_bytes(const void *data, size_t len, OrtSessionOptions *o,
                                   OrtSession **out) {
  return api->CreateSessionFromArray(env, data, len, o, out);
}

void lm_session_release(OrtSession *s) { api->ReleaseSession(s); }

OrtStatus *lm_io_count(OrtSession *s, int is_output, size_t *out) {
  return is_output ? api->SessionGetOutputCount(s, out) : api->SessionGetInputCount(s, out);
}

OrtStatus *lm_io_info(OrtSession *s, int is_output, size_t idx, char **name, int *onnx_type,
                      int *elem_type, int64_t **dims, size_t *rank, int *optional_tensor) {
  char *ort_name = NULL;
  OrtTypeInfo *ti = NULL, *contained = NULL;
  OrtStatus *st;
  *name = NULL;
  *dims = NULL;
  *rank = 0;
  *elem_type = 0;
  *optional_tensor = 0;
  st = is_output ? api->SessionGetOutputName(s, idx, allocator, &ort_name)
                 : api->SessionGetInputName(s, idx, allocator, &ort_name);
  if (st) return st;
  *name = strdup(ort_name);
  OrtStatus *free_st = api->AllocatorFree(allocator, ort_name);
  if (free_st) api->ReleaseStatus(free_st);
  st = is_output ? api->SessionGetOutputTypeInfo(s, idx, &ti)
                 : api->SessionGetInputTypeInfo(s, idx, &ti);
  if (st) return st;
  enum ONNXType t;
  if ((st = api->GetOnnxTypeFromTypeInfo(ti, &t))) goto done;
  *onnx_type = (int)t;
  const OrtTypeInfo *tensor_ti = ti;
  if (t == ONNX_TYPE_OPTIONAL) {
    // An optional tensor takes (and yields) a plain tensor value when present, so it
    // is described by the tensor it holds.
    const OrtOptionalTypeInfo *oti = NULL;
    if ((st = api->CastTypeInfoToOptionalTypeInfo(ti, &oti))) goto done;
    if ((st = api->GetOptionalContainedTypeInfo(oti, &contained))) goto done;
    enum ONNXType ct;
    if ((st = api->GetOnnxTypeFromTypeInfo(contained, &ct))) goto done;
    if (ct != ONNX_TYPE_TENSOR) goto done;
    *optional_tensor = 1;
    tensor_ti = contained;
  } else if (t != ONNX_TYPE_TENSOR) {
    goto done;
  }
  const OrtTensorTypeAndShapeInfo *tsi = NULL;
  if ((st = api->CastTypeInfoToTensorInfo(tensor_ti, &tsi))) goto done;
  ONNXTensorElementDataType et;
  if ((st = api->GetTensorElementType(tsi, &et))) goto done;
  *elem_type = (int)et;
  size_t n = 0;
  if ((st = api->GetDimensionsCount(tsi, &n))) goto done;
  *rank = n;
  if (n > 0) {
    *dims = malloc(n * sizeof(int64_t));
    st = api->GetDimensions(tsi, *dims, n);
  }
done:
  if (contained) api->ReleaseTypeInfo(contained);
  api->ReleaseTypeInfo(ti);
  return st;
}

OrtStatus *lm_tensor_with_data(void *data, size_t len, const int64_t *shape, size_t rank,
                               int elem_type, OrtValue **out) {
  return api->CreateTensorWithDataAsOrtValue(cpu_memory, data, len, shape, rank,
                                            (ONNXTensorElementDataType)elem_type, out);
}

OrtStatus *lm_tensor_alloc(const int64_t *shape, size_t rank, int elem_type, OrtValue **out) {
  return api->CreateTensorAsOrtValue(allocator, shape, rank, (ONNXTensorElementDataType)elem_type,
                                     out);
}

OrtStatus *lm_tensor_fill_strings(OrtValue *v, const char *const *s, size_t n) {
  return api->FillStringTensor(v, s, n);
}

void lm_value_release(OrtValue *v) { api->ReleaseValue(v); }

OrtStatus *lm_run_options(OrtRunOptions **out) { return api->CreateRunOptions(out); }
OrtStatus *lm_run_terminate(OrtRunOptions *o) { return api->RunOptionsSetTerminate(o); }
void lm_run_options_release(OrtRunOptions *o) { api->ReleaseRunOptions(o); }

OrtStatus *lm_run(OrtSession *s, OrtRunOptions *ro, const char *const *in_names,
                  const OrtValue *const *in_vals, size_t n_in, const char *const *out_names,
                  size_t n_out, OrtValue **out_vals) {
  return api->Run(s, ro, in_names, in_vals, n_in, out_names, n_out, out_vals);
}

OrtStatus *lm_value_describe(const OrtValue *v, int *has_value, int *onnx_type, int *elem_type,
                             int64_t **dims, size_t *rank, void **data, size_t *nbytes) {
  OrtStatus *st;
  *dims = NULL;
  *rank = 0;
  *data = NULL;
  *nbytes = 0;
  *elem_type = 0;
  *onnx_type = 0;
  if ((st = api->HasValue(v, has_value))) return st;
  if (!*has_value) return NULL;
  enum ONNXType t;
  if ((st = api->GetValueType(v, &t))) return st;
  *onnx_type = (int)t;
  if (t != ONNX_TYPE_TENSOR) return NULL;
  OrtTensorTypeAndShapeInfo *tsi = NULL;
  if ((st = api->GetTensorTypeAndShape(v, &tsi))) return st;
  ONNXTensorElementDataType et;
  size_t n = 0;
  if ((st = api->GetTensorElementType(tsi, &et))) goto done;
  *elem_type = (int)et;
  if ((st = api->GetDimensionsCount(tsi, &n))) goto done;
  *rank = n;
  if (n > 0) {
    *dims = malloc(n * sizeof(int64_t));
    if ((st = api->GetDimensions(tsi, *dims, n))) goto done;
  }
  if (et != ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    if ((st = api->GetTensorSizeInBytes(v, nbytes))) goto done;
    if (*nbytes > 0) st = api->GetTensorMutableData((OrtValue *)v, data);
  }
done:
  api->ReleaseTensorTypeAndShapeInfo(tsi);
  return st;
}

OrtStatus *lm_string_contents(const OrtValue *v, size_t n, char **buf, size_t **offsets) {
  size_t total = 0;
  OrtStatus *st;
  *buf = NULL;
  *offsets = malloc((n + 1) * sizeof(size_t));
  if ((st = api->GetStringTensorDataLength(v, &total))) return st;
  *buf = malloc(total + 1);
  if (n > 0 && (st = api->GetStringTensorContent(v, *buf, total, *offsets, n))) return st;
  (*offsets)[n] = total;
  return NULL;
}
