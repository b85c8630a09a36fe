/* ekv's C API: the older elastic-KV core's six functions, made real, for C callers and
 * for Python through ctypes. Plain C (C99 and later, and C++), one shared library:
 * libekv_c (CMake: find_package(ekv CONFIG), target ekv::c), built from
 * ekv/c_api.cu.
 *
 * Every function returns an ekv_status: EKV_SUCCESS (0) or the kind of failure, with the
 * sentence that says what failed in ekv_last_error(). No exception or abort crosses this
 * boundary. A function that needs a GPU returns EKV_ERROR_NO_DEVICE where none is visible,
 * after its arguments are checked, so argument errors read the same on every machine.
 *
 * Memory: `float*` and `int*` data arguments may point to host memory (pageable or
 * pinned: numpy arrays need no CUDA package) or to device memory of the calling thread's
 * current device (cudaMalloc'd, managed, or a torch/CuPy tensor's data_ptr()); each one is
 * classified on its own with cudaPointerGetAttributes. Host data is staged through device
 * memory; device data is used in place. Data arguments must not overlap one another.
 * Calls are synchronous: outputs are complete when a function returns, on the host or the
 * device. GB/s and GFLOP/s count 10^9 bytes and 10^9 flops per second.
 *
 * ctypes: int arguments are ctypes.c_int, float ctypes.c_float, size_t* is
 * POINTER(ctypes.c_size_t), the functions' return type is ctypes.c_int (as the older
 * core's cudaError_t was), and ekv_last_error's and ekv_status_name's ctypes.c_char_p. */
#ifndef EKV_C_API_H
#define EKV_C_API_H

#include <stddef.h>

/* libekv_c is built with hidden symbols: these functions are all it exports. */
#if defined(_WIN32)
#define EKV_C_EXPORT
#elif defined(__GNUC__)
#define EKV_C_EXPORT __attribute__((visibility("default")))
#else
#define EKV_C_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Values are part of the ABI: never renumbered, only appended. */
typedef enum ekv_status {
  EKV_SUCCESS = 0,
  /* an argument is NULL, out of range, or sizes whose product overflows; the message
   * names the argument and the values it accepts */
  EKV_ERROR_INVALID_ARGUMENT = 1,
  /* the call needs a GPU and CUDA sees none (no device, or no driver) */
  EKV_ERROR_NO_DEVICE = 2,
  /* host or device memory could not be allocated */
  EKV_ERROR_OUT_OF_MEMORY = 3,
  /* any other CUDA failure: the message carries CUDA's error name and string */
  EKV_ERROR_CUDA = 4,
  /* a failure inside ekv that is none of the above (a bug: please report the message) */
  EKV_ERROR_INTERNAL = 5
} ekv_status;

/* The message of the calling thread's last call: empty ("") after a call that succeeded,
 * the reason after one that failed. Never NULL; valid until the thread's next ekv call. */
EKV_C_EXPORT const char* ekv_last_error(void);

/* The status's name, e.g. "EKV_ERROR_NO_DEVICE"; "unknown ekv_status" for other values. */
EKV_C_EXPORT const char* ekv_status_name(ekv_status status);

/* Keeps the elements x of kv_cache with |x| > threshold, in their original order
 * (stable, deterministic), on the GPU with CUB's device select, over all
 * n = seq_length * hidden_size elements.
 *   kv_cache          float [n], read only (row-major [seq_length][hidden_size]; only the
 *                     element count matters)
 *   compressed_cache  float, room for seq_length * hidden_size elements: receives the kept
 *                     values, bit for bit (signed zeros and denormals as they were);
 *                     elements past *compressed_size are left unchanged
 *   indices           int, the same room, or NULL: receives each kept value's position in
 *                     kv_cache (0-based, increasing)
 *   threshold         the magnitude an element must exceed; a negative one keeps every
 *                     element but NaNs, which are never kept; NaN is rejected
 *   seq_length, hidden_size  >= 1, with seq_length * hidden_size <= INT_MAX (2147483647),
 *                     since *compressed_size and indices are int
 *   compressed_size   out: the number of kept elements
 *   repetitions       >= 1 timed runs, each one the whole call's work (for host arguments:
 *                     copy in, select, copy the kept elements out); the outputs are those
 *                     of the last run, every run computing the same
 *   warmup_iterations >= 0 untimed runs before them
 *   avg_ms, std_ms    out: mean and sample standard deviation (n - 1; 0 for one run) of
 *                     the timed runs' durations in milliseconds, CUDA events on one stream
 * Bytes moved by one run on device arguments: 4n read and, with k kept, 4k written (8k
 * with indices), plus CUB's small scan state; host arguments add 4n bytes host to device
 * and 4k (8k) device to host.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL kv_cache, compressed_cache,
 * compressed_size, avg_ms or std_ms, a size, repetitions or warmup_iterations out of
 * range, a NaN threshold, or a device pointer on another device than the current one;
 * EKV_ERROR_NO_DEVICE; EKV_ERROR_OUT_OF_MEMORY for staging or CUB's workspace;
 * EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_compress(const float* kv_cache, float* compressed_cache, int* indices,
                                     float threshold, int seq_length, int hidden_size, int* compressed_size,
                                     int repetitions, int warmup_iterations, float* avg_ms, float* std_ms);

/* Device memory bandwidth: copies input to output `iterations` times with ekv's streaming
 * copy kernel (ekv/kernels/copy.cuh), after one untimed copy, all on one stream between
 * two CUDA events.
 *   input             float [size], read only
 *   output            float [size]: receives a copy of input
 *   size              >= 1 elements; for DRAM bandwidth, each buffer (4 * size bytes)
 *                     several times the GPU's L2 cache, which smaller copies stay in
 *   iterations        >= 1 timed copies
 *   gbps              out: 8 * size * iterations bytes (each copy reads and writes
 *                     4 * size) over the timed span, in GB/s
 * Host arguments are staged: the bandwidth is that of device memory either way, and
 * output receives the copy at the end.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL input, output or gbps, size or iterations
 * < 1, or a device pointer on another device; EKV_ERROR_NO_DEVICE;
 * EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_mem_bandwidth(float* input, float* output, int size, int iterations, float* gbps);

/* The same copies as ekv_mem_bandwidth, issued as num_launches batches of
 * iters_per_launch copy kernels; each batch is timed by its own two events and followed
 * by a stream synchronisation, so that no submission runs long (the older core's
 * "TDR-safe" form, for display GPUs with a watchdog).
 *   input, output, size  as in ekv_mem_bandwidth
 *   iters_per_launch  >= 1 copies per batch
 *   num_launches      >= 1 batches; iters_per_launch * num_launches must fit int
 *   gbps              out: 8 * size * iters_per_launch * num_launches bytes over the sum
 *                     of the batches' times, in GB/s
 * Errors: as ekv_mem_bandwidth's, and EKV_ERROR_INVALID_ARGUMENT where the product of
 * iters_per_launch and num_launches overflows int. */
EKV_C_EXPORT ekv_status ekv_mem_bandwidth_batched(float* input, float* output, int size, int iters_per_launch,
                                                  int num_launches, float* gbps);

/* FP32 compute throughput: ekv's FMA-chain kernel (ekv/kernels/fma_chains.cuh), one
 * untimed launch and then 10 timed launches. Each thread runs 8 independent chains
 * x = fmaf(x, 0.999f, 0.001f) for r = ceil(ops_per_element / 16) rounds, chain c starting
 * at 0.001f * (c + 1), and writes the sum of its chains (in chain order) to its element.
 *   data              float [size]: out, each element's chain sum
 *   size              >= 1 elements, one thread each; the launch rounds it up to a
 *                     multiple of 256 threads (the CTA size), whose extra threads work too
 *   ops_per_element   >= 1 flops per element, rounded up to a multiple of 16 (8 chains,
 *                     2 flops per FMA)
 *   gflops            out: 16 * r * T * 10 flops over the 10 launches' time, in GFLOP/s,
 *                     with T the threads launched (size rounded up to 256)
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL data or gflops, size or ops_per_element
 * < 1, or a device pointer on another device; EKV_ERROR_NO_DEVICE;
 * EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_compute_throughput(float* data, int size, int ops_per_element, float* gflops);

/* A decode loop over ekv's paged KV cache (ekv::KVCache), run twice on fresh caches:
 * once exact, once elastic. The cache has one layer of float32 K and V, heads =
 * hidden_size / head_dim query and kv heads, head_dim 128 where it divides hidden_size,
 * else 64, blocks of 64 tokens, QUEST anchors per kv head. Each loop prefills the
 * seq_length tokens of kv_cache, attends once untimed (the first call plans and
 * allocates), then times decode_steps steps; step s appends token s % seq_length of
 * kv_cache (as key and as value) and attends with that token as the query.
 *   kv_cache          float [seq_length][heads][head_dim], read only: each token's key,
 *                     which is also its value and its query
 *   compressed_cache  float [hidden_size] at least: out, the elastic loop's last output
 *                     [heads][head_dim]
 *   indices           unused, may be NULL (the older core's scratch)
 *   seq_length, decode_steps  >= 1; seq_length + decode_steps <= 2^26 tokens
 *   hidden_size       heads * head_dim, a multiple of 64; seq_length * hidden_size <=
 *                     INT_MAX
 *   threshold_elastic the compression ratio C, finite and >= 1: the elastic loop attends
 *                     ceil(B / C) of the prefilled cache's B blocks at every step (1 sink
 *                     block, 1 window block, the rest picked by score), or every block
 *                     where that budget cannot pay (KVCache::attn's exact fallback)
 *   baseline_total_ms, elastic_total_ms  out: milliseconds of the exact and of the
 *                     elastic loop's decode_steps steps, appends included (CUDA events)
 * Bytes read per exact step: 8 * hidden_size per cached token (K and V); per elastic
 * step, that of the attended blocks plus the scored blocks' anchors.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL kv_cache, compressed_cache,
 * baseline_total_ms or elastic_total_ms, a size or decode_steps < 1, an overflowing
 * product, a hidden_size that is not a multiple of 64, too many tokens, a
 * threshold_elastic below 1, infinite or NaN, or a device pointer on another device;
 * EKV_ERROR_NO_DEVICE; EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_inference_cycle(const float* kv_cache, float* compressed_cache, int* indices,
                                            int seq_length, int hidden_size, int decode_steps,
                                            float threshold_elastic, float* baseline_total_ms,
                                            float* elastic_total_ms);

/* ekv_inference_cycle, and what elastic attention cost in accuracy:
 *   relative_error    out: the relative L2 error of the elastic loop's last output against
 *                     the exact loop's (the same cache, the same query), the worst over
 *                     heads; about 0 (the same computation twice) where the elastic
 *                     loop attended every block
 * Errors: ekv_inference_cycle's, and EKV_ERROR_INVALID_ARGUMENT for a NULL
 * relative_error. */
EKV_C_EXPORT ekv_status ekv_inference_cycle_ex(const float* kv_cache, float* compressed_cache, int* indices,
                                               int seq_length, int hidden_size, int decode_steps,
                                               float threshold_elastic, float* baseline_total_ms,
                                               float* elastic_total_ms, float* relative_error);

/* The calling thread's current CUDA device.
 *   device_name       char [max_name_length]: out, the device's name, cut to
 *                     max_name_length - 1 bytes and always NUL-terminated
 *   compute_major, compute_minor  out: the compute capability, e.g. 9 and 0 for an H200
 *   total_memory      out: global memory in bytes
 *   max_name_length   >= 1, the size of device_name in bytes (256 holds every name)
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL output or max_name_length < 1;
 * EKV_ERROR_NO_DEVICE; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_get_gpu_info(char* device_name, int* compute_major, int* compute_minor,
                                         size_t* total_memory, int max_name_length);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EKV_C_API_H */
