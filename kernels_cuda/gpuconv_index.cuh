// Index arithmetic shared by gpuconv's CUDA kernels.
#pragma once

// The coordinates of one element of an (N, C, D, H, W) array from its place in a kernel's flat
// loop. With c_fastest the loop runs over (N, D, H, W, C), C fastest (a channels-last array's
// memory order), else over (N, C, D, H, W): either way neighbouring threads take neighbouring
// elements of the array's fastest axis, so their loads or stores coalesce. I is the index type:
// long long in general; int where the caller knows the array has fewer than 2^31 elements
// (32-bit division costs a fraction of 64-bit division's instructions).
template <typename I>
struct gc_coords_of {
    I n, c, d, h, w;
};
typedef gc_coords_of<long long> gc_coords;

template <typename I>
__device__ __forceinline__ gc_coords_of<I> gc_split_index(I r, I C, I D, I H, I W,
                                                          bool c_fastest) {
    gc_coords_of<I> p;
    if (c_fastest) {
        p.c = r % C; r /= C;
    }
    p.w = r % W; r /= W;
    p.h = r % H; r /= H;
    p.d = r % D; r /= D;
    if (!c_fastest) {
        p.c = r % C; r /= C;
    }
    p.n = r;
    return p;
}
