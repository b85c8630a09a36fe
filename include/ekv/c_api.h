/* ekv's C API: the older elastic-KV core's six functions, made real, and a handle to
 * ekv's KV cache (ekv_cache, below), for C callers and for Python through ctypes (the
 * package ekv, examples/python/). Plain C (C99 and later, and C++), one shared library:
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
#include <stdint.h>

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

/* The calling thread's current device in more detail (ekv::DeviceInfo), and its
 * bandwidths measured now where asked. */
typedef struct ekv_device_info {
  char name[256];                           /* NUL-terminated */
  int device;                               /* the ordinal */
  int compute_major, compute_minor;
  int sm_count;
  int max_threads_per_sm;
  int memory_bus_width_bits;
  size_t global_memory_bytes;
  size_t l2_cache_bytes;
  size_t shared_memory_per_sm_bytes;
  size_t shared_memory_per_cta_optin_bytes; /* after opting in */
  float copy_gbps;           /* measured: ekv_mem_bandwidth's copy, read + write bytes; 0 if not asked */
  float host_to_device_gbps; /* measured: cudaMemcpyAsync from pinned host memory; 0 if not asked */
} ekv_device_info;

/* Fills info for the current device. measure_bandwidth != 0 also measures, on buffers of
 * max(4 x L2, 64 MiB) bytes, 10 timed device copies (copy_gbps, as ekv_mem_bandwidth
 * counts) and 10 timed pinned host-to-device copies (host_to_device_gbps, bytes copied
 * over time), each after one untimed; that allocates 3 such buffers and takes a fraction
 * of a second.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL info; EKV_ERROR_NO_DEVICE;
 * EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_get_device_info(ekv_device_info* info, int measure_bandwidth);

/* ---- The KV cache handle: ekv's KVCache (GPU) or HostKVCache (CPU backend) ----
 *
 * An ekv_cache is a multi-layer paged KV cache (README, "The KV cache object"): made from
 * an ekv_cache_config (or its text form), it takes appends, attends exactly or
 * elastically, reports its memory, dumps to and loads from a safetensors file. Created
 * on EKV_DEVICE_CPU it is the CPU backend (ekv::HostKVCache: host memory, no GPU needed);
 * on EKV_DEVICE_CUDA, ekv::KVCache on that device. Its calls are synchronous; on the GPU
 * each first waits for the work already queued on the legacy default stream (torch's
 * and CuPy's default stream; synchronize others first) and returns once its own work is
 * done. One handle must not be used by two threads at once. */

/* Element types: ekv::DType's values. The last three are storage types of a cache's K and
 * V (kv_type, KTransformers' GGMLType): FP8 E4M3 (a scale of 1 per kv head), and GGML's
 * Q8_0 and Q4_0 (groups of 32 values with a float16 scale; head_dim a multiple of 32).
 * A quantized cache takes EKV_DTYPE_FLOAT16 queries, outputs, appends and anchors, and its
 * block accessors move a block's stored rows as a tensor of kv_type shaped [kv_head_num,
 * block_len, head_dim]: block_len x kv_head_num rows of codes (head_dim bytes; Q4_0
 * head_dim / 2), then (Q8_0, Q4_0) as many rows of head_dim / 32 float16 scales
 * (include/ekv/core/quant.hpp gives the bits). */
typedef enum ekv_dtype {
  EKV_DTYPE_FLOAT32 = 0,
  EKV_DTYPE_FLOAT16 = 1,
  EKV_DTYPE_BFLOAT16 = 2,
  EKV_DTYPE_FLOAT8_E4M3 = 3,
  EKV_DTYPE_Q8_0 = 4,
  EKV_DTYPE_Q4_0 = 5
} ekv_dtype;

/* Where memory is: DLPack's DLDeviceType values. Pinned host memory (EKV_DEVICE_CUDA_HOST)
 * is host memory to the cache. */
typedef enum ekv_device_type { EKV_DEVICE_CPU = 1, EKV_DEVICE_CUDA = 2, EKV_DEVICE_CUDA_HOST = 3 } ekv_device_type;

/* ekv::AnchorKind's values (KTransformers' AnchorType: FIXED, DYNAMIC, QUEST, ...). */
typedef enum ekv_anchor_type {
  EKV_ANCHOR_QUEST = 0,
  EKV_ANCHOR_BLOCK_MEAN = 1,
  EKV_ANCHOR_BLOCK_MAX = 2,
  EKV_ANCHOR_FIXED = 3,
  EKV_ANCHOR_DYNAMIC = 4
} ekv_anchor_type;

/* ekv::RetrievalType's values: who shares one selection. */
typedef enum ekv_retrieval_type {
  EKV_RETRIEVAL_LAYER = 0,
  EKV_RETRIEVAL_KVHEAD = 1,
  EKV_RETRIEVAL_QHEAD = 2
} ekv_retrieval_type;

/* A caller's tensor, as DLPack describes one: no copy is made and nothing is kept after
 * the call.
 *   data         the first element
 *   dtype        an ekv_dtype
 *   ndim         1 to 4
 *   shape        int64_t [ndim]
 *   strides      int64_t [ndim] in elements (not bytes), or NULL for row-major; the cache
 *                takes contiguous tensors only
 *   device_type  an ekv_device_type
 *   device_id    the CUDA device of EKV_DEVICE_CUDA memory; ignored for host memory */
typedef struct ekv_tensor {
  void* data;
  int dtype;
  int ndim;
  const int64_t* shape;
  const int64_t* strides;
  int device_type;
  int device_id;
} ekv_tensor;

/* ekv::KVCacheConfig, field for field (KTransformers' KVCacheConfig names); enum fields
 * hold ekv_anchor_type, ekv_dtype and ekv_retrieval_type values. */
typedef struct ekv_cache_config {
  int layer_num;
  int kv_head_num;
  int q_head_num;
  int head_dim;
  int block_len;      /* tokens per block */
  int anchor_num;     /* anchors per block for FIXED and DYNAMIC */
  int anchor_type;    /* ekv_anchor_type */
  int kv_type;        /* ekv_dtype */
  int retrieval_type; /* ekv_retrieval_type */
  int layer_step;     /* layers sharing one selection */
  int token_step;     /* decode steps sharing one selection */
  int layer_offset;   /* the first layer that shares */
  int max_block_num;  /* blocks in each layer's pool, shared by all sequences */
  int max_batch_size; /* sequences the cache holds at once */
  int max_thread_num; /* CPU threads of the CPU backend */
} ekv_cache_config;

/* What a cache holds (ekv::KVCacheMemory). */
typedef struct ekv_cache_memory {
  size_t bytes_per_layer; /* K, V, anchors and importance of one layer's pool */
  size_t bytes_per_token; /* K and V of one token, all layers and kv heads */
  size_t total_bytes;     /* every layer's pool, plus the block tables */
  int blocks_used;
  int blocks_free;
} ekv_cache_memory;

typedef struct ekv_cache ekv_cache;

/* ekv's default config: layer_num 1, kv_head_num 8, q_head_num 32, head_dim 128,
 * block_len 64, anchor_num 1, QUEST, FLOAT16, KVHEAD, steps 1, offset 0, 1024 blocks,
 * batch 1, 1 thread.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL config. */
EKV_C_EXPORT ekv_status ekv_cache_config_default(ekv_cache_config* config);

/* Reads the text form (ekv::parse_kv_cache_config): field=value items separated by spaces
 * or commas, any order, enum values by name in any case (QUEST, FP16, KVHEAD, ...); fields
 * not given take the defaults. Does not validate.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument, an unknown field or a value
 * that is not a whole number or a name of its enum (the message lists the accepted). */
EKV_C_EXPORT ekv_status ekv_cache_config_parse(const char* text, ekv_cache_config* config);

/* The text form of a config, every field: "layer_num=1 kv_head_num=8 ...", NUL-terminated.
 *   capacity  bytes at text, at least the text's length + 1 (512 holds any config)
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument, an enum field out of range or a
 * capacity too small (the message says how many bytes are needed). */
EKV_C_EXPORT ekv_status ekv_cache_config_to_string(const ekv_cache_config* config, char* text, size_t capacity);

/* EKV_SUCCESS where a cache can be made from config, else EKV_ERROR_INVALID_ARGUMENT with
 * the first field that cannot, its value and what is supported. */
EKV_C_EXPORT ekv_status ekv_cache_config_validate(const ekv_cache_config* config);

/* Makes a cache with every pool zeroed and no tokens.
 *   device_type  EKV_DEVICE_CPU (the CPU backend, max_thread_num threads) or
 *                EKV_DEVICE_CUDA (the GPU cache on device device_id)
 *   cache        out: the handle, for ekv_cache_destroy; NULL after a failure
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument, an invalid config or device;
 * EKV_ERROR_NO_DEVICE for EKV_DEVICE_CUDA without a GPU; EKV_ERROR_OUT_OF_MEMORY;
 * EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_cache_create(const ekv_cache_config* config, int device_type, int device_id,
                                         ekv_cache** cache);

/* ekv_cache_config_parse, then ekv_cache_create; the errors of both. */
EKV_C_EXPORT ekv_status ekv_cache_create_from_text(const char* config_text, int device_type, int device_id,
                                                   ekv_cache** cache);

/* Frees the cache and its memory; NULL is accepted and does nothing. The memory is freed
 * whatever the status (EKV_ERROR_CUDA only where the cache's device cannot be made
 * current first). */
EKV_C_EXPORT ekv_status ekv_cache_destroy(ekv_cache* cache);

/* The config the cache was made from, and where it lives (EKV_DEVICE_CPU with device_id
 * 0, or EKV_DEVICE_CUDA and its device); device_type and device_id may be NULL. */
EKV_C_EXPORT ekv_status ekv_cache_get_config(const ekv_cache* cache, ekv_cache_config* config, int* device_type,
                                             int* device_id);

/* Appends new_tokens tokens to each of the first `batch` sequences of layer layer_idx and
 * brings the anchors of the blocks that changed up to date.
 *   k_new, v_new  kv_type (FLOAT16 for a quantized kv_type: quantized here)
 *                 [batch][new_tokens][kv_head_num][head_dim], in the cache's memory (host
 *                 for the CPU backend, the cache's device for the GPU)
 * Where the pool cannot hold the blocks this needs, nothing is written.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument, a layer out of range, a tensor
 * of another dtype, shape or memory (the message names it, its value and what is
 * needed), too many tokens or a full pool; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_cache_append(ekv_cache* cache, int layer_idx, const ekv_tensor* k_new,
                                         const ekv_tensor* v_new);

/* One layer's attention for decode step generate_token_idx (0 at the first step) of the
 * first `batch` sequences, batch = q's first dimension.
 *   q, output         kv_type (FLOAT16 for a quantized one) [batch][q_head_num][head_dim], in
 *                     the cache's memory
 *   attn_lse          float32 [batch][q_head_num]: out, the log-sum-exp of the scores
 *                     (natural log, scores scaled by 1/sqrt(head_dim))
 *   pick_block_num    < 0: exact, every block; >= 0: elastic, init_block_num sink blocks,
 *                     local_block_num window blocks and pick_block_num blocks by score,
 *                     per retrieval_type, reselected every token_step steps and shared
 *                     by layer_step layers (a sharing layer attends after the layer that
 *                     selects, in the same step)
 *   attended_exactly  out, or NULL: 1 where the call attended every block (asked to, or,
 *                     on the GPU, where the elastic budget cannot pay at this length), else 0
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument, a layer out of range, a tensor
 * of another dtype, shape or memory, a sequence with no tokens, block counts elastic
 * attention does not support; EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_cache_attn(ekv_cache* cache, const ekv_tensor* q, const ekv_tensor* output,
                                       const ekv_tensor* attn_lse, int layer_idx, int generate_token_idx,
                                       int pick_block_num, int init_block_num, int local_block_num,
                                       int* attended_exactly);

/* ekv_cache_append and ekv_cache_attn ordered on the caller's CUDA stream instead of
 * synchronously: `stream` is a cudaStream_t of the cache's device (torch's
 * torch.cuda.current_stream().cuda_stream, CuPy's Stream.ptr; NULL: the legacy default
 * stream). They neither wait for other streams nor for their own work: the caller orders
 * its reads of output and attn_lse on that stream. GPU caches only; a CPU cache (no
 * streams) takes NULL and then runs as the synchronous calls do. ekv_cache_attn_on_stream
 * may be captured into a CUDA graph once a call at the same batch, length (rounded up to a
 * power of two) and block budget has run outside capture (that call allocates the plans
 * and workspaces a capture cannot); a replay reads the lengths that appends made since.
 * ekv_cache_append_on_stream may not be captured: it takes blocks on the host, and
 * synchronizes the stream where an append needs a new block.
 * Errors: as the synchronous calls, and EKV_ERROR_INVALID_ARGUMENT for a stream of another
 * device (not checked while the stream captures: CUDA cannot say then) or a stream given
 * to a CPU cache. */
EKV_C_EXPORT ekv_status ekv_cache_append_on_stream(ekv_cache* cache, int layer_idx, const ekv_tensor* k_new,
                                                   const ekv_tensor* v_new, void* stream);
EKV_C_EXPORT ekv_status ekv_cache_attn_on_stream(ekv_cache* cache, const ekv_tensor* q, const ekv_tensor* output,
                                                 const ekv_tensor* attn_lse, int layer_idx, int generate_token_idx,
                                                 int pick_block_num, int init_block_num, int local_block_num,
                                                 int* attended_exactly, void* stream);

/* Tokens of sequence seq (0 to max_batch_size - 1), layer 0's count. */
EKV_C_EXPORT ekv_status ekv_cache_get_cache_total_len(const ekv_cache* cache, int seq, int* cache_total_len);

/* Sets every layer's token count of sequence seq (0 to the most a sequence holds), giving
 * it the blocks it needs (a full pool: an error, nothing changed); the anchors of blocks
 * whose tokens changed are recomputed. */
EKV_C_EXPORT ekv_status ekv_cache_update_cache_total_len(ekv_cache* cache, int cache_total_len, int seq);

/* Returns sequence seq's blocks to the pool; its token count becomes 0 in every layer. */
EKV_C_EXPORT ekv_status ekv_cache_free_sequence(ekv_cache* cache, int seq);

/* The block tables: int32 [max_batch_size][max_seq_block_num], each sequence's pool
 * blocks in order, -1 where none.
 *   block_table        out, room for `capacity` int32s, or NULL to ask for the width alone
 *   capacity           >= max_batch_size * max_seq_block_num where block_table is not NULL
 *   max_seq_block_num  out: the width of a row, min(max_block_num, 1048576) */
EKV_C_EXPORT ekv_status ekv_cache_get_block_table(const ekv_cache* cache, int32_t* block_table, int64_t capacity,
                                                  int* max_seq_block_num);

/* Pool block block_idx of layer layer_id: k, v kv_type [kv_head_num][block_len][head_dim]
 * (get: out; update: in, then the block's anchors are recomputed where a sequence holds
 * it). The GPU cache takes host or device memory, the CPU backend host memory. */
EKV_C_EXPORT ekv_status ekv_cache_get_kvcache_one_block(const ekv_cache* cache, const ekv_tensor* k,
                                                        const ekv_tensor* v, int layer_id, int block_idx);
EKV_C_EXPORT ekv_status ekv_cache_update_kvcache_one_block(ekv_cache* cache, const ekv_tensor* k,
                                                           const ekv_tensor* v, int layer_id, int block_idx);
/* Token importance of a pool block: float32 [kv_head_num][block_len]. */
EKV_C_EXPORT ekv_status ekv_cache_get_importance_one_block(const ekv_cache* cache, const ekv_tensor* importance,
                                                           int layer_id, int block_idx);
EKV_C_EXPORT ekv_status ekv_cache_update_importance_one_block(ekv_cache* cache, const ekv_tensor* importance,
                                                              int layer_id, int block_idx);
/* Anchors of a pool block: kv_type (FLOAT16 for a quantized one) [kv_head_num][anchor_values]
 * (QUEST: 2 * head_dim, min then max of each channel; BLOCK_MEAN, BLOCK_MAX: head_dim; FIXED, DYNAMIC: anchor_num *
 * head_dim). An update stands until the block's tokens change. */
EKV_C_EXPORT ekv_status ekv_cache_get_anchor_one_block(const ekv_cache* cache, const ekv_tensor* anchor,
                                                       int layer_id, int block_idx);
EKV_C_EXPORT ekv_status ekv_cache_update_anchor_one_block(ekv_cache* cache, const ekv_tensor* anchor, int layer_id,
                                                          int block_idx);

/* The cache's memory and its pool's blocks in use. */
EKV_C_EXPORT ekv_status ekv_cache_get_memory(const ekv_cache* cache, ekv_cache_memory* memory);

/* Writes the whole cache (config, every layer's pools and token counts, the block tables)
 * to a safetensors file at path, atomically (a temporary file renamed over it).
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument or a file that cannot be written
 * (the message names the path and the system's reason); EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_cache_dump_kvcache(const ekv_cache* cache, const char* tensor_file_path);

/* Reads an ekv_cache_dump_kvcache file of either backend into the cache, after checking
 * its length, checksums, format, version, config (it must be the cache's) and block
 * tables; where anything fails the cache is unchanged.
 * Errors: EKV_ERROR_INVALID_ARGUMENT for a NULL argument or a file that cannot be read or
 * fails a check (the message says which); EKV_ERROR_OUT_OF_MEMORY; EKV_ERROR_CUDA. */
EKV_C_EXPORT ekv_status ekv_cache_load_kvcache(ekv_cache* cache, const char* tensor_file_path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EKV_C_API_H */
