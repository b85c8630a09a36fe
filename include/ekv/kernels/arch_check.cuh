#pragma once
// ekv's kernels need sm_80 or newer (cp.async, ldmatrix, bfloat16 mma): device code for
// an older architecture stops here with what to do, rather than in ptxas.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "ekv's kernels need sm_80 or newer: build for CMAKE_CUDA_ARCHITECTURES 80 (A100), 90 (H100, H200) or native (nvcc -arch=sm_80 or newer)"
#endif
