// What the implicit-GEMM kernels (conv_gemm.cu, conv_gemm_tc.cu) share: the window an output
// position reads, the per-step table of the terms' offsets within a window, the bounds check of
// one gathered element, and the double-buffered loop over the steps. See conv_gemm.cu for the
// GEMM's names (M, Kg, A, B).
#pragma once
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"

// The window of output position m of group g: its corner in the input (d0, h0, w0, which may lie
// in the padding) and the x offset of the corner's first channel of the group; valid is false
// past the last position (such rows gather zeros and are never stored).
struct gc_window {
    long long base, d0, h0, w0;
    bool valid;
};

__device__ __forceinline__ gc_window gc_window_of(long long m, long long M, long long g,
                                                 const gc_conv& p) {
    gc_window win = {0, 0, 0, 0, m < M};
    if (win.valid) {
        const gc_coords at = gc_split_index(m, 1LL, p.OD, p.OH, p.OW, false);
        win.d0 = at.d * p.SD - p.PD;
        win.h0 = at.h * p.SH - p.PH;
        win.w0 = at.w * p.SW - p.PW;
        win.base = at.n * p.xs_n + g * p.Cg * p.xs_c + win.d0 * p.xs_d + win.h0 * p.xs_h +
                   win.w0 * p.xs_w;
    }
    return win;
}

// The offset in y of output position m's first channel (its element of filter 0).
__device__ __forceinline__ long long gc_output_offset(long long m, const gc_conv& p) {
    const gc_coords at = gc_split_index(m, 1LL, p.OD, p.OH, p.OW, false);
    return at.n * p.ys_n + at.d * p.ys_d + at.h * p.ys_h + at.w * p.ys_w;
}

// Threads 0..BK-1 fill the table of step `step`'s terms k = step * BK + tid: the x offset of the
// term from its window's corner, and its tap's place (kd*DD, kh*DH, kw*DW); past the last term
// the place is (-1, 0, 0), which fails gc_inside, so A is 0 there.
template <int BK>
__device__ __forceinline__ void gc_find_terms(int tid, long long step, long long Kg,
                                              const gc_conv& p, long long (&offset)[BK],
                                              int (&tap)[BK][3]) {
    if (tid >= BK) return;
    const long long k = step * BK + tid, KV = p.KD * p.KH * p.KW;
    if (k < Kg) {
        const long long c = k / KV, t = k % KV;
        const long long kd = t / (p.KH * p.KW), kh = (t / p.KW) % p.KH, kw = t % p.KW;
        offset[tid] = c * p.xs_c + kd * p.DD * p.xs_d + kh * p.DH * p.xs_h + kw * p.DW * p.xs_w;
        tap[tid][0] = int(kd * p.DD);
        tap[tid][1] = int(kh * p.DH);
        tap[tid][2] = int(kw * p.DW);
    } else {
        offset[tid] = 0;
        tap[tid][0] = -1;
        tap[tid][1] = 0;
        tap[tid][2] = 0;
    }
}

// Whether the element of window `win` at tap place `tap` lies inside the input.
__device__ __forceinline__ bool gc_inside(const gc_window& win, const int* tap,
                                          const gc_conv& p) {
    const long long id = win.d0 + tap[0], ih = win.h0 + tap[1], iw = win.w0 + tap[2];
    return win.valid && tap[0] >= 0 && (unsigned long long)id < (unsigned long long)p.ID &&
           (unsigned long long)ih < (unsigned long long)p.IH &&
           (unsigned long long)iw < (unsigned long long)p.IW;
}

// Step `step`'s tile elements this thread reads from global memory, converted by `conv` (to the
// accumulator type, or to the raw value shared memory holds): A, its row `win` at terms
// tid / BM + i * (THREADS / BM) (neighbouring threads take neighbouring positions, so reads of
// channels-first x coalesce); B, elements tid + i * THREADS of the BN x BK tile, terms fastest
// (filters are contiguous in their terms). Zero (V{}) outside the input and past the last term or
// filter.
template <int BM, int BK, int THREADS, typename V, int A_LOADS, int B_LOADS, typename T,
          typename Conv>
__device__ __forceinline__ void gc_gather(V (&a)[A_LOADS], V (&b)[B_LOADS], int tid,
                                          long long step, const T* x, const gc_window& win,
                                          const long long (&offset)[BK],
                                          const int (&tap)[BK][3], const gc_conv& p,
                                          const T* wg, long long f0, long long Kg, Conv conv) {
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int kk = tid / BM + i * (THREADS / BM);
        a[i] = gc_inside(win, tap[kk], p) ? conv(x[win.base + offset[kk]]) : V{};
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
        const int e = tid + i * THREADS, kk = e % BK, ff = e / BK;
        const long long k = step * BK + kk;
        b[i] = (f0 + ff < p.Cog && k < Kg) ? conv(wg[(f0 + ff) * Kg + k]) : V{};
    }
}

// The loop over a tile's steps of BK terms: step s's tiles are multiplied out of shared buffer
// s % 2 while step s + 1's are read from global memory into registers (in flight meanwhile) and
// then stashed into the other buffer; the term table of step s + 2 is found in between; one
// barrier per step. find_terms(step, buf), load(step, buf), stash(buf) and multiply(buf) are the
// kernel's own.
template <typename FindTerms, typename Load, typename Stash, typename Multiply>
__device__ __forceinline__ void gc_gemm_steps(long long steps, FindTerms&& find_terms, Load&& load,
                                              Stash&& stash, Multiply&& multiply) {
    find_terms(0LL, 0);
    __syncthreads();
    load(0LL, 0);
    stash(0);
    if (steps > 1) find_terms(1LL, 1);
    __syncthreads();
    for (long long s = 0; s < steps; ++s) {
        const int cur = int(s & 1);
        if (s + 1 < steps) load(s + 1, cur ^ 1);
        multiply(cur);
        if (s + 1 < steps) stash(cur ^ 1);
        if (s + 2 < steps) find_terms(s + 2, cur);
        __syncthreads();
    }
}
