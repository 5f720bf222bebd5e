// Just enough of CUDA C++ for gpuconv's kernels to compile as host C++, so that the test suite
// can run their real source on a machine without a GPU (launch.cpp). Grid-stride kernels run
// serially, one thread after another, which gives exactly what the GPU gives for kernels
// without shared memory or barriers. Tiled kernels run one block at a time with one host thread
// per CUDA thread: __shared__ variables become function statics (one copy, shared by the
// block's threads) and __syncthreads() is a barrier across them. Warp operations are not here.
#pragma once
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))  // as CUDA defines it
#define __shared__ static
#define __launch_bounds__(...)

struct gc_emu_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
static thread_local gc_emu_dim3 threadIdx;
static gc_emu_dim3 blockIdx, blockDim, gridDim;

void __syncthreads();  // launch.cpp: a barrier across the block's host threads

using std::exp;
using std::tanh;
