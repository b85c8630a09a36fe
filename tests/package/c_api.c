/* A C99 program on the installed C API: links ekv::c (libekv_c) and includes only
 * <ekv/c_api.h>. It reports the GPU, or that there is none, that an argument error
 * comes back with its status and message, and makes a cache on the CPU backend. */
#include <ekv/c_api.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  char name[256];
  int major = 0, minor = 0;
  size_t memory = 0;
  float gbps = 0.0f;
  ekv_status status = ekv_get_gpu_info(name, &major, &minor, &memory, (int)sizeof name);
  if (status == EKV_SUCCESS) {
    printf("libekv_c: %s, compute capability %d.%d, %zu bytes\n", name, major, minor, memory);
  } else if (status == EKV_ERROR_NO_DEVICE) {
    printf("libekv_c: %s\n", ekv_last_error());
  } else {
    printf("libekv_c: ekv_get_gpu_info failed: %s: %s\n", ekv_status_name(status), ekv_last_error());
    return 1;
  }
  status = ekv_mem_bandwidth(NULL, NULL, 1, 1, &gbps);
  if (status != EKV_ERROR_INVALID_ARGUMENT || strstr(ekv_last_error(), "input is NULL") == NULL) {
    printf("libekv_c: a NULL input was not rejected: %s: %s\n", ekv_status_name(status), ekv_last_error());
    return 1;
  }
  printf("libekv_c: a NULL input is rejected: %s\n", ekv_last_error());
  {
    ekv_cache* cache = NULL;
    ekv_cache_memory report;
    status = ekv_cache_create_from_text("head_dim=64 max_block_num=16", EKV_DEVICE_CPU, 0, &cache);
    if (status != EKV_SUCCESS || ekv_cache_get_memory(cache, &report) != EKV_SUCCESS) {
      printf("libekv_c: no CPU cache: %s: %s\n", ekv_status_name(status), ekv_last_error());
      ekv_cache_destroy(cache);
      return 1;
    }
    printf("libekv_c: a CPU cache of %zu bytes, %d blocks free\n", report.total_bytes, report.blocks_free);
    ekv_cache_destroy(cache);
  }
  return 0;
}
