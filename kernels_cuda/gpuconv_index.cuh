// Index arithmetic shared by gpuconv's CUDA kernels (64-bit throughout).
#pragma once

// The coordinates of one element of an (N, C, D, H, W) array from its place in a kernel's flat
// loop. With c_fastest the loop runs over (N, D, H, W, C), C fastest (a channels-last array's
// memory order), else over (N, C, D, H, W): either way neighbouring threads take neighbouring
// elements of the array's fastest axis, so their loads or stores coalesce.
struct gc_coords {
    long long n, c, d, h, w;
};

__device__ __forceinline__ gc_coords gc_split_index(long long r, long long C, long long D,
                                                    long long H, long long W, bool c_fastest) {
    gc_coords p;
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
