// Layout changes the convolution kernels need, done at memory speed.
//
// to_channels_last: y (N, S, C), contiguous, from x (N, C, S) at element strides (xs_n, xs_c,
// xs_s), where S is x's spatial axes flattened (the host checks they merge into one axis of
// stride xs_s). conv_gemm_tc_cl and conv_gemm_cl read channels-last input; a channels-first
// caller's x is copied with this first. A plain elementwise copy walks y in order and so reads
// x with a stride of S elements between neighbouring threads: every 32-byte sector it fetches
// serves one element. Here a block moves a tile of TILE channels x TILE positions through
// shared memory: it reads TILE positions of a channel (neighbouring threads, neighbouring
// addresses of x), then writes TILE channels of a position (neighbouring addresses of y).
//
// A block of TILE x ROWS threads moves one tile: blockIdx.x its position tile, blockIdx.y its
// channel tile, and images n = blockIdx.z, + gridDim.z, ... (the grid's z axis stops at
// 65535); each thread moves TILE / ROWS elements each way, with no division anywhere.
#include "gpuconv_types.cuh"

#define GC_LAYOUT_TILE 32
#define GC_LAYOUT_ROWS 8

template <typename T>
__global__ void __launch_bounds__(GC_LAYOUT_TILE * GC_LAYOUT_ROWS)
to_channels_last(const T* __restrict__ x, T* __restrict__ y, long long N, long long C,
                 long long S, long long xs_n, long long xs_c, long long xs_s) {
    constexpr int TILE = GC_LAYOUT_TILE, ROWS = GC_LAYOUT_ROWS;
    // one extra column: a column of the tile (one position, TILE channels), read on the way
    // out, falls in distinct banks for 4-byte elements and at worst in pairs for 2-byte ones
    __shared__ T tile[TILE][TILE + 1];
    const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
    const long long s0 = blockIdx.x * (long long)TILE, c0 = blockIdx.y * (long long)TILE;
    // this thread's elements: in, channels c0 + ty + r at position s0 + tx; out, positions
    // s0 + ty + r at channel c0 + tx (r = 0, ROWS, 2 ROWS, ...); offsets within an image
    const bool s_in = s0 + tx < S, c_out = c0 + tx < C;
    const long long c_first = c0 + ty, s_first = s0 + ty;
    const long long in_at = c_first * xs_c + (s0 + tx) * xs_s, in_step = ROWS * xs_c;
    const long long out_at = s_first * C + c0 + tx, out_step = ROWS * C;
    for (long long n = blockIdx.z; n < N; n += gridDim.z) {  // uniform across the block
        const T* src = x + n * xs_n + in_at;
#pragma unroll
        for (int r = 0; r < TILE; r += ROWS, src += in_step)
            if (s_in && c_first + r < C) tile[ty + r][tx] = *src;
        __syncthreads();
        T* dst = y + n * S * C + out_at;
#pragma unroll
        for (int r = 0; r < TILE; r += ROWS, dst += out_step)
            if (c_out && s_first + r < S) *dst = tile[tx][ty + r];
        __syncthreads();  // the tile is free for the next image
    }
}
