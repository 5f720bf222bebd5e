// What the implicit-GEMM kernels (conv_gemm.cu, conv_gemm_tc.cu) share: the window an output
// position reads, the per-step table of the terms' offsets within a window, the bounds check of
// one gathered element, and the double-buffered loop over the steps. See conv_gemm.cu for the
// GEMM's names (M, Kg, A, B).
#pragma once
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"

// Coordinates far outside any input: a window corner past the last position, or a tap place past
// the last term, is set to this, and every bounds check of such a window or tap fails. The host
// keeps every padded spatial size plus the dilated kernel, and every term count, below 2^30
// (algorithms.why_not), so sums of two such values stay within int and negative.
#define GC_FAR (-(1 << 30))

// The window of output position m of group g: the x offset of its corner's first channel of the
// group (the corner may lie in the padding), and the corner (d0, h0, w0) as 32-bit coordinates
// for the bounds checks; past the last position (valid false) the corner is GC_FAR, so such
// rows gather zeros (and are never stored).
struct gc_window {
    long long base;
    int d0, h0, w0;
    bool valid;
};

__device__ __forceinline__ gc_window gc_window_of(long long m, long long M, long long g,
                                                 const gc_conv& p) {
    gc_window win = {0, GC_FAR, GC_FAR, GC_FAR, m < M};
    if (win.valid) {
        const gc_coords at = gc_split_index(m, 1LL, p.OD, p.OH, p.OW, false);
        const long long d0 = at.d * p.SD - p.PD, h0 = at.h * p.SH - p.PH, w0 = at.w * p.SW - p.PW;
        win.base = at.n * p.xs_n + g * p.Cg * p.xs_c + d0 * p.xs_d + h0 * p.xs_h + w0 * p.xs_w;
        win.d0 = int(d0);
        win.h0 = int(h0);
        win.w0 = int(w0);
    }
    return win;
}

// The offset in y of output position m's first channel (its element of filter 0).
__device__ __forceinline__ long long gc_output_offset(long long m, const gc_conv& p) {
    const gc_coords at = gc_split_index(m, 1LL, p.OD, p.OH, p.OW, false);
    return at.n * p.ys_n + at.d * p.ys_d + at.h * p.ys_h + at.w * p.ys_w;
}

// The same for a position held as a place (n, od, oh, ow) that a thread steps (gc_mixed_place).
__device__ __forceinline__ long long gc_output_offset_at(const gc_mixed_place& at,
                                                         const gc_conv& p) {
    return at.hi * p.ys_n + at.d * p.ys_d + at.h * p.ys_h + at.w * p.ys_w;
}

// Output position m of the steps a thread finds in turn (the filter gradient's reduction runs
// over positions), counted forward (gc_mixed_place) instead of split each step.
struct gc_position_counter {
    long long m, by;     // the next position, and the step
    gc_mixed_place at;   // m as (n, od, oh, ow)

    __device__ __forceinline__ void start(long long m0, long long step, const gc_conv& p) {
        m = m0;
        by = step;
        at.start<long long>(m0, step, p.OD, p.OH, p.OW);
    }

    // the position's window in group g and the offset in y of its first channel of the group;
    // then on to the next step's position
    __device__ __forceinline__ void take(long long M, long long g, const gc_conv& p,
                                         gc_window& win, long long& y_offset) {
        win.valid = m < M;
        if (win.valid) {
            const int d0 = at.d * int(p.SD) - int(p.PD), h0 = at.h * int(p.SH) - int(p.PH),
                      w0 = at.w * int(p.SW) - int(p.PW);
            win.base = at.hi * p.xs_n + g * p.Cg * p.xs_c + d0 * p.xs_d + h0 * p.xs_h +
                       w0 * p.xs_w;
            win.d0 = d0;
            win.h0 = h0;
            win.w0 = w0;
            y_offset = gc_output_offset_at(at, p) + g * p.Cog * p.ys_c;
        } else {
            win = gc_window{0, GC_FAR, GC_FAR, GC_FAR, false};
            y_offset = 0;
        }
        m += by;
        at.advance(p.OD, p.OH, p.OW);
    }
};

// A term's tap place (kd*DD, kh*DH, kw*DW), padded to 16 bytes so that a thread reads it from
// shared memory in one load; d is GC_FAR past the last term.
struct __align__(16) gc_tap {
    int d, h, w, unused;
};

// Term k of the steps a thread finds in turn (step s's term tid, for threads tid < BK), counted
// forward (gc_mixed_place) instead of divided anew: warp 0 alone finds a step's terms while
// the block's other warps wait for it at the barrier.
struct gc_term_counter {
    int k, by;           // the next term, and the step
    gc_mixed_place at;   // k as (c, kd, kh, kw)

    __device__ __forceinline__ void start(int k0, int step, const gc_conv& p) {
        k = k0;
        by = step;
        at.start<int>(k0, step, int(p.KD), int(p.KH), int(p.KW));
    }

    // the term's offset from a window's corner and its tap's place (GC_FAR past the last
    // term); then on to the next step's term
    __device__ __forceinline__ void take(long long Kg, const gc_conv& p, long long& offset,
                                         gc_tap& tap) {
        if (k < Kg) {
            tap = gc_tap{at.d * int(p.DD), at.h * int(p.DH), at.w * int(p.DW), 0};
            offset = at.hi * p.xs_c + tap.d * p.xs_d + tap.h * p.xs_h + tap.w * p.xs_w;
        } else {
            tap = gc_tap{GC_FAR, 0, 0, 0};
            offset = 0;
        }
        k += by;
        at.advance(p.KD, p.KH, p.KW);
    }
};

// Whether the element of window `win` at tap place `tap` lies inside the input (false for a
// window past the last position or a tap past the last term: their GC_FAR coordinates).
__device__ __forceinline__ bool gc_inside(const gc_window& win, const gc_tap& tap,
                                          const gc_conv& p) {
    return (unsigned(win.d0 + tap.d) < unsigned(p.ID)) &
           (unsigned(win.h0 + tap.h) < unsigned(p.IH)) &
           (unsigned(win.w0 + tap.w) < unsigned(p.IW));
}

// The B tile elements (filters) a thread reads each step: elements tid + i * THREADS of the
// BN x BK tile, terms fastest (filters are contiguous in their terms), so all at term tid % BK
// of the step and at filters f0 + tid / BK + i * (THREADS / BK). at[i] points to that filter's
// term tid % BK of step 0 (any valid address where the filter is past the group's: ok false).
template <int BK, int THREADS, int B_LOADS, typename T>
struct gc_filter_reads {
    static_assert(THREADS % BK == 0, "one term a thread");
    const T* at[B_LOADS];
    bool ok[B_LOADS];
    int kk;

    __device__ __forceinline__ gc_filter_reads(int tid, const T* wg, long long f0, long long Kg,
                                               long long Cog) {
        kk = tid % BK;
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const long long f = f0 + tid / BK + i * (THREADS / BK);
            ok[i] = f < Cog;
            at[i] = wg + (ok[i] ? f : 0) * Kg + kk;
        }
    }
};

// Step `step`'s tile elements this thread reads from global memory, converted by `conv` (to the
// accumulator type, or to the raw value shared memory holds): A, its row `win` (x_win = x +
// win.base) at terms tid / BM + i * (THREADS / BM) (neighbouring threads take neighbouring
// positions, so reads of channels-first x coalesce); B, as `b` says. Zero (V{}) outside the
// input and past the last term or filter.
template <int BM, int BK, int THREADS, typename V, int A_LOADS, int B_LOADS, typename T,
          typename Conv>
__device__ __forceinline__ void gc_gather(V (&a)[A_LOADS], V (&b)[B_LOADS], int tid,
                                          long long step, const T* x_win, const gc_window& win,
                                          const long long (&offset)[BK],
                                          const gc_tap (&tap)[BK], const gc_conv& p,
                                          const gc_filter_reads<BK, THREADS, B_LOADS, T>& fr,
                                          long long Kg, Conv conv) {
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int kk = tid / BM + i * (THREADS / BM);
        const gc_tap t = tap[kk];
        a[i] = gc_inside(win, t, p) ? conv(x_win[offset[kk]]) : V{};
    }
    const int first = int(step) * BK;  // the step's first term (terms are below 2^30)
    const bool term_ok = first + fr.kk < Kg;
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) b[i] = term_ok & fr.ok[i] ? conv(fr.at[i][first]) : V{};
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
