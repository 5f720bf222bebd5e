// What the implicit-GEMM kernels (conv_gemm.cu, conv_gemm_tc.cu) share: the window an output
// position reads, the per-step table of the terms' offsets within a window, the bounds check of
// one gathered element, and the double-buffered loop over the steps. See conv_gemm.cu for the
// GEMM's names (M, Kg, A, B).
#pragma once
#include "gpuconv_index.cuh"

// The window of output position m of group g: its corner in the input (d0, h0, w0, which may lie
// in the padding) and the x offset of the corner's first channel of the group; valid is false
// past the last position (such rows gather zeros and are never stored).
struct gc_window {
    long long base, d0, h0, w0;
    bool valid;
};

__device__ __forceinline__ gc_window gc_window_of(
    long long m, long long M, long long g, long long Cg, long long OD, long long OH,
    long long OW, long long SD, long long SH, long long SW, long long PD, long long PH,
    long long PW, long long xs_n, long long xs_c, long long xs_d, long long xs_h,
    long long xs_w) {
    gc_window win = {0, 0, 0, 0, m < M};
    if (win.valid) {
        const gc_coords p = gc_split_index(m, 1LL, OD, OH, OW, false);
        win.d0 = p.d * SD - PD;
        win.h0 = p.h * SH - PH;
        win.w0 = p.w * SW - PW;
        win.base = p.n * xs_n + g * Cg * xs_c + win.d0 * xs_d + win.h0 * xs_h + win.w0 * xs_w;
    }
    return win;
}

// Threads 0..BK-1 fill the table of step `step`'s terms k = step * BK + tid: the x offset of the
// term from its window's corner, and its tap's place (kd*DD, kh*DH, kw*DW); past the last term
// the place is (-1, 0, 0), which fails gc_inside, so A is 0 there.
template <int BK>
__device__ __forceinline__ void gc_find_terms(
    int tid, long long step, long long Kg, long long KD, long long KH, long long KW,
    long long DD, long long DH, long long DW, long long xs_c, long long xs_d, long long xs_h,
    long long xs_w, long long (&offset)[BK], int (&tap)[BK][3]) {
    if (tid >= BK) return;
    const long long k = step * BK + tid, KV = KD * KH * KW;
    if (k < Kg) {
        const long long c = k / KV, t = k % KV;
        const long long kd = t / (KH * KW), kh = (t / KW) % KH, kw = t % KW;
        offset[tid] = c * xs_c + kd * DD * xs_d + kh * DH * xs_h + kw * DW * xs_w;
        tap[tid][0] = int(kd * DD);
        tap[tid][1] = int(kh * DH);
        tap[tid][2] = int(kw * DW);
    } else {
        offset[tid] = 0;
        tap[tid][0] = -1;
        tap[tid][1] = 0;
        tap[tid][2] = 0;
    }
}

// Whether the element of window `win` at tap place `tap` lies inside the input.
__device__ __forceinline__ bool gc_inside(const gc_window& win, const int* tap, long long ID,
                                          long long IH, long long IW) {
    const long long id = win.d0 + tap[0], ih = win.h0 + tap[1], iw = win.w0 + tap[2];
    return win.valid && tap[0] >= 0 && (unsigned long long)id < (unsigned long long)ID &&
           (unsigned long long)ih < (unsigned long long)IH &&
           (unsigned long long)iw < (unsigned long long)IW;
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
                                          const int (&tap)[BK][3], long long ID, long long IH,
                                          long long IW, const T* wg, long long f0,
                                          long long Cog, long long Kg, Conv conv) {
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int kk = tid / BM + i * (THREADS / BM);
        a[i] = gc_inside(win, tap[kk], ID, IH, IW) ? conv(x[win.base + offset[kk]]) : V{};
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
        const int e = tid + i * THREADS, kk = e % BK, ff = e / BK;
        const long long k = step * BK + kk;
        b[i] = (f0 + ff < Cog && k < Kg) ? conv(wg[(f0 + ff) * Kg + k]) : V{};
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
