// Just enough of CUDA C++ for gpuconv's grid-stride kernels to compile as host C++, so that the
// test suite can run their real source serially, thread by thread, on a machine without a GPU.
// Valid only for kernels without shared memory, barriers or warp operations: there, running the
// threads one after another gives exactly what the GPU gives.
#pragma once
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct gc_emu_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
static gc_emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

using std::exp;
using std::tanh;
