#pragma once
// Grid sizing of the streaming kernels, under the harness's names: the rule lives in the
// library (ekv/kernels/streaming_grid.hpp), where the C API's copy uses it too.

#include "ekv/kernels/streaming_grid.hpp"

namespace ekv::bench {

using ekv::full_wave_ctas;
using ekv::streaming_grid;

}  // namespace ekv::bench
