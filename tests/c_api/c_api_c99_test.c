/* ekv/c_api.h from C: this file is compiled as C99 with -Wall -Wextra -pedantic -Werror
 * (the header check) and run (label cpu): every function is called once, an argument
 * error is reported with its status and message, and a GPU call says there is no GPU,
 * or succeeds where there is one. */
#include <ekv/c_api.h>

#include <stdio.h>
#include <string.h>

static int failures = 0;

static void expect(int ok, const char* what) {
  if (!ok) {
    printf("FAILED: %s (last error: \"%s\")\n", what, ekv_last_error());
    ++failures;
  }
}

/* EKV_SUCCESS, or EKV_ERROR_NO_DEVICE on a machine without a GPU */
static int ran_or_no_device(ekv_status status) {
  return status == EKV_SUCCESS || (status == EKV_ERROR_NO_DEVICE && strstr(ekv_last_error(), "no CUDA device"));
}

int main(void) {
  float data[300] = {0.0f};
  float out[300];
  int indices[300];
  int kept = -1, major = 0, minor = 0, want = 0;
  float avg = 0.0f, sd = 0.0f, rate = 0.0f, exact = 0.0f, elastic = 0.0f, error = 0.0f;
  size_t memory = 0;
  char name[256];
  ekv_status status;
  int i;
  for (i = 0; i < 300; ++i) {
    data[i] = (float)(i % 7) - 3.0f;
    want += data[i] < -2.5f || data[i] > 2.5f;
  }

  status = ekv_compress(NULL, out, indices, 0.5f, 10, 30, &kept, 1, 0, &avg, &sd);
  expect(status == EKV_ERROR_INVALID_ARGUMENT, "ekv_compress rejects a NULL kv_cache");
  expect(strstr(ekv_last_error(), "ekv_compress: kv_cache is NULL") == ekv_last_error(), "the message names it");
  expect(strcmp(ekv_status_name(status), "EKV_ERROR_INVALID_ARGUMENT") == 0, "ekv_status_name");

  status = ekv_get_gpu_info(name, &major, &minor, &memory, (int)sizeof name);
  expect(ran_or_no_device(status), "ekv_get_gpu_info runs or finds no device");
  if (status == EKV_SUCCESS) printf("device: %s, sm_%d%d, %zu bytes\n", name, major, minor, memory);
  expect(ran_or_no_device(ekv_compress(data, out, indices, 0.5f, 10, 30, &kept, 2, 1, &avg, &sd)), "ekv_compress");
  if (ekv_compress(data, out, NULL, 2.5f, 10, 30, &kept, 1, 0, &avg, &sd) == EKV_SUCCESS) {
    expect(kept == want, "ekv_compress keeps each |x| > 2.5 (x = -3 and 3)");
  }
  expect(ran_or_no_device(ekv_mem_bandwidth(data, out, 300, 2, &rate)), "ekv_mem_bandwidth");
  expect(ran_or_no_device(ekv_mem_bandwidth_batched(data, out, 300, 2, 2, &rate)), "ekv_mem_bandwidth_batched");
  expect(ran_or_no_device(ekv_compute_throughput(out, 300, 32, &rate)), "ekv_compute_throughput");
  /* 300 floats: 3 tokens of hidden_size 64 (one head), and 64 of them out */
  expect(ran_or_no_device(ekv_inference_cycle(data, out, NULL, 3, 64, 2, 4.0f, &exact, &elastic)),
         "ekv_inference_cycle");
  expect(ran_or_no_device(ekv_inference_cycle_ex(data, out, NULL, 3, 64, 2, 4.0f, &exact, &elastic, &error)),
         "ekv_inference_cycle_ex");

  if (failures == 0) printf("the C API from C99: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
