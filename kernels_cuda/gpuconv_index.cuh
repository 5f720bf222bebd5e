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

// A place (hi, d, h, w) in the mixed radix (-, D, H, W) -- an output position (n, od, oh, ow)
// or a filter's term (c, kd, kh, kw) -- stepped forward by a fixed step held in the same radix,
// digit by digit with at most one carry a digit: a few adds instead of the divisions that split
// a flat index anew (a 32-bit division is some 20 instructions, a 64-bit one a subroutine).
struct gc_mixed_place {
    int hi, d, h, w;          // the place
    int s_hi, s_d, s_h, s_w;  // the step

    // I: the index type that holds `at` (positions may pass 2^31; terms stay below 2^30)
    template <typename I>
    __device__ __forceinline__ void start(I at, I step, I D, I H, I W) {
        const gc_coords_of<I> a = gc_split_index<I>(at, 1, D, H, W, false);
        const gc_coords_of<I> s = gc_split_index<I>(step, 1, D, H, W, false);
        hi = int(a.n), d = int(a.d), h = int(a.h), w = int(a.w);
        s_hi = int(s.n), s_d = int(s.d), s_h = int(s.h), s_w = int(s.w);
    }

    __device__ __forceinline__ void advance(long long D, long long H, long long W) {
        w += s_w;
        if (w >= W) { w -= int(W); ++h; }  // each digit below its radix plus one carry
        h += s_h;
        if (h >= H) { h -= int(H); ++d; }
        d += s_d;
        if (d >= D) { d -= int(D); ++hi; }
        hi += s_hi;
    }
};
