#pragma once
// EKV_HOST_DEVICE marks small functions that host and device code share; g++ sees nothing.

#if defined(__CUDACC__)
#define EKV_HOST_DEVICE __host__ __device__
#else
#define EKV_HOST_DEVICE
#endif
