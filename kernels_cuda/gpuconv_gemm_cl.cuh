// The channels-last implicit GEMM that conv_gemm_tc.cu's conv_gemm_tc_cl and conv_gemm_cl and
// conv_gemm_wgmma.cu's conv_gemm_wgmma share: the copies of a step's tiles into a 3-stage
// shared-memory ring (cp.async), the ring's swizzled rows, the loop over the steps and the
// epilogue; each kernel supplies its product of one stage (a Mul: gc_cl_mma, gc_cl_ffma,
// gc_cl_wgmma). The epilogue's helpers serve conv_gemm_tc too.
#pragma once
#include "gpuconv_gemm.cuh"
#include "gpuconv_types.cuh"

// Where a thread sits in the tensor-core kernels: the warps tile the block's BM x BN, BM /
// WARP_M of them along M, each owning WARP_M x WARP_N of the tile from its corner (wm, wn);
// lane = 4 * group + t.
struct gc_tc_place {
    int lane, group, t, wm, wn;
};

template <int BM, int WARP_M, int WARP_N>
__device__ __forceinline__ gc_tc_place gc_tc_place_of(int tid) {
    const int warp = tid / 32, lane = tid % 32;
    return {lane, lane / 4, lane % 4, (warp % (BM / WARP_M)) * WARP_M,
            (warp / (BM / WARP_M)) * WARP_N};
}

template <int MT, int NT>
__device__ __forceinline__ void gc_tc_zero(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
}

// A warp's MT x NT tiles of 16 x 8 accumulators (its tile's corner at output position m_w,
// filter f_w of the group), visited in the fragments' layout (rows group and group + 8 of each
// 16, columns 2t and 2t + 1 of each 8): fn(m, f, value), skipping positions past M and filters
// past the group's Cog.
template <int MT, int NT, typename Fn>
__device__ __forceinline__ void gc_tc_each(const float (&acc)[MT][NT][4], long long M,
                                           long long Cog, long long m_w, long long f_w,
                                           int group, int t, Fn&& fn) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long long m = m_w + i * 16 + group + 8 * half;
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const long long f = f_w + j * 8 + 2 * t + c;
                    if (f < Cog) fn(m, f, acc[i][j][2 * half + c]);
                }
            }
        }
    }
}

// The epilogue of both tensor-core kernels: each sum plus bias, through the activation, stored
// in the output dtype at y's strides (any layout). Work a thread does once, not per sum: its
// filters' biases (2 * NT) are read before the stores, and its 2 * MT output positions, 8
// apart (rows group, group + 8, group + 16, ...), are split into (n, od, oh, ow) once and
// stepped by 8 (gc_mixed_place) for their offsets in y. (Split per sum, 64 sums a thread at
// three 64-bit divisions each, the epilogue had ~100 instructions a sum: on a layer with few
// terms, such as a 1x1 conv of 64 channels, many times the main loop.)
template <typename T, int ACT, int MT, int NT>
__device__ __forceinline__ void gc_tc_store(const float (&acc)[MT][NT][4], T* y, const T* bias,
                                            const gc_conv& p, long long M, long long g,
                                            long long m_w, long long f_w, int group, int t) {
    typedef gc_num<T> num;
    const long long Cog = p.Cog;
    float b[NT][2];
    long long at_f[NT][2];  // filter f's offset in y from its row's first filter; -1: f >= Cog
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            const long long f = f_w + j * 8 + 2 * t + c;
            at_f[j][c] = f < Cog ? f * p.ys_c : -1;
            b[j][c] = p.has_bias && f < Cog ? float(num::load(bias[g * Cog + f])) : 0.0f;
        }
    T* const y_group = y + g * Cog * p.ys_c;
    gc_mixed_place at;  // the row's position (n, od, oh, ow), stepped 8 rows at a time
    at.start<long long>(m_w + group, 8LL, p.OD, p.OH, p.OW);
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {  // row m_w + group + 8 * (2 * i + half)
            if (m_w + i * 16 + group + 8 * half < M) {
                T* const row = y_group + gc_output_offset_at(at, p);
#pragma unroll
                for (int j = 0; j < NT; ++j) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        if (at_f[j][c] < 0) continue;
                        float v = acc[i][j][2 * half + c];
                        if (p.has_bias) v = v + b[j][c];
                        row[at_f[j][c]] = num::store(gc_activate<ACT>(v));
                    }
                }
            }
            at.advance(p.OD, p.OH, p.OW);
        }
    }
}

// Split-K's first stage (see conv_gemm.cu): the sums of one split of the terms, no bias or
// activation, to part[co * M + m] (part = partial + split * C_out * M).
template <int MT, int NT>
__device__ __forceinline__ void gc_tc_store_partial(const float (&acc)[MT][NT][4], float* part,
                                                    const gc_conv& p, long long M, long long g,
                                                    long long m_w, long long f_w, int group,
                                                    int t) {
    gc_tc_each(acc, M, p.Cog, m_w, f_w, group, t, [&](long long m, long long f, float v) {
        part[(g * p.Cog + f) * M + m] = v;
    });
}


// ---------------------------------------------------------------------------------------------
// conv_gemm_tc_cl: the same product for channels-last data whose filters have a multiple of 8
// kernels (C_in / groups % 8 == 0), 16-bit operands only, fed the way the tensor cores want;
// conv_gemm_cl: the same kernel for float32 (a multiple of 4 kernels), multiplied by FFMA:
//
// - terms run tap-major, k = ((kd * KH + kh) * KW + kw) * Cg + c, so the E neighbouring terms of
//   a 16-byte chunk (E = 8 halves or 4 floats) are E neighbouring channels of one input element:
//   one 16-byte load (x channels-last: p.xs_c == 1, every other stride of x a multiple of E
//   elements, x 16-byte aligned), and E neighbouring elements of a filter laid out (C_out, KD,
//   KH, KW, Cg) (w here is that copy, contiguous);
// - those loads go from global to shared memory with cp.async (no registers on the way; a tap
//   outside the input, a term past Kg or a filter past the group's is written as zeros by the
//   copy's zero fill), into a 3-stage ring, so two steps are in flight while one is multiplied;
// - 16-bit fragments are read with ldmatrix (one instruction for a warp's 4 8x8 matrices);
//   float32 ones with one 16-byte load a row and chunk (gc_cl_ffma).
//
// A block computes a 128 x BN tile of Y (BN = 64 or 128 filters; the host picks,
// kernels.gemm_tc_cl_filters) in steps of 4 chunks of terms (32 halves, 16 floats), one warp
// a Mul::WARP_M x Mul::WARP_N piece of it. conv_gemm_tc_cl and conv_gemm_cl: 2 * BN threads,
// warps of 64 x 32 (2 along M; 64 float accumulators a thread, in the layout of 4 x 4 mma
// tiles), so a warp's 16-bit step is 32 mma and 12 ldmatrix.x4, and a float32 one 1024 FFMA
// and 64 16-byte shared loads a thread; conv_gemm_wgmma: 256 threads, warps of 16 x BN (the
// two warpgroups 64 rows each). Everything else a step costs is kept small:
// a thread's copies of a step all read one chunk column, so one term counter (c, kd, kh, kw,
// stepped by BK, no division) and one x offset serve them all; bounds checks compare 32-bit
// coordinates; the ring's stage indices rotate.
//
// Shared tiles are rows of 4 chunks (64 bytes) without padding, chunk c of row r stored at chunk
// c ^ ((r / 2) % 4) of its row (an XOR swizzle): the 8 consecutive rows an ldmatrix reads at one
// chunk column fall in 8 distinct 16-byte bank groups, and 3 stages of a 128 x 128 tile take
// 3 x 256 rows x 64 bytes = 49152 bytes, the most static shared memory a block may have.

// Copy 16 bytes from global `src` to shared `dst`, asynchronously; zeros instead when !valid
// (src is then not read but must still be a valid address). The copies bypass L1 (.cg), so
// every tap's read of an input element is an L2 read. GC_CP_ASYNC_CA (an experiment, off
// unless the compile options define it: benchmarks/NOTES.md, session 23) caches them in L1
// (.ca), where a block's next tap, reading the same elements shifted by one, may find them.
__device__ __forceinline__ void gc_cp_async_16(void* dst, const void* src, bool valid) {
#ifdef __CUDA_ARCH__
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
#ifdef GC_CP_ASYNC_CA
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(valid ? 16 : 0));
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(valid ? 16 : 0));
#endif
#else
    gc_emulated_cp_async_16(dst, src, valid);
#endif
}

// Close the group of copies this thread issued since the last commit.
__device__ __forceinline__ void gc_cp_async_commit() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void gc_cp_async_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix.x4: lane l names row l % 8 of 8x8 matrix l / 8 (16-bit elements, 16-byte rows in
// shared memory); lane l receives in r[j] elements (row l / 4, columns 2 (l % 4), +1) of matrix j.
__device__ __forceinline__ void gc_ldmatrix_x4(unsigned (&r)[4], const void* row) {
#ifdef __CUDA_ARCH__
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#else
    gc_emulated_ldmatrix_x4(r, row);
#endif
}

// Where chunk `chunk` (16 bytes) of tile row `row` (4 chunks a row) lies, in chunks from the
// tile's start, under the XOR swizzle above. Rows 8 apart swizzle alike.
__device__ __forceinline__ int gc_swizzled(int row, int chunk) {
    return row * 4 + (chunk ^ ((row >> 1) & 3));
}

// The channels-last implicit GEMM (conv_gemm_tc_cl, conv_gemm_cl), multiplying by Mul.
template <typename Mul, typename T, int ACT, int BN>
__device__ __forceinline__ void gc_gemm_cl(const T* __restrict__ x, const T* __restrict__ w,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           float* __restrict__ partial, long long splits,
                                           long long per_split, const gc_conv& p) {
    typedef typename Mul::raw_t raw_t;
    constexpr int E = Mul::E;  // elements a 16-byte chunk
    static_assert(E * sizeof(raw_t) == 16 && sizeof(raw_t) == sizeof(T), "16-byte chunks");
    constexpr int BM = 128, BK = 4 * E, STAGES = 3, CHUNKS = BK / E;  // 16-byte chunks a row
    constexpr int WARP_M = Mul::WARP_M, WARP_N = Mul::WARP_N;  // a warp's tile of Y
    constexpr int MT = WARP_M / 16, NT = WARP_N / 8;
    constexpr int THREADS = (BM / WARP_M) * (BN / WARP_N) * 32;
    constexpr int ROWS = THREADS / CHUNKS;  // tile rows one round of copies covers
    constexpr int A_COPIES = BM / ROWS, B_COPIES = BN / ROWS;
    static_assert(BM % ROWS == 0 && BN % ROWS == 0, "whole rounds");
    static_assert(ROWS % 8 == 0, "a thread's rows swizzle alike");
    // 1024-byte aligned: the swizzle is a function of the rows' addresses for the tensor
    // cores' own reads (gc_cl_wgmma), which need each stage's 8-row groups at 512-byte places
    __shared__ __align__(1024) raw_t As[STAGES][BM * BK];
    __shared__ __align__(1024) raw_t Bs[STAGES][BN * BK];

    const int tid = threadIdx.x;
    const int Kg = int(p.Cg * p.KD * p.KH * p.KW);  // a multiple of E, below 2^30 (host)
    const long long M = p.N * p.OD * p.OH * p.OW;
    // split-K (splits > 1): this block sums steps first ... first + steps - 1 of the terms;
    // the host keeps splits (at most 65535 / groups) and per_split (steps) in ints
    const long long g = blockIdx.z / unsigned(splits);
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const int total_steps = (Kg + BK - 1) / BK;
    const int first = int(blockIdx.z % unsigned(splits)) * int(per_split);
    const int steps = first >= total_steps ? 0
                      : (total_steps - first < per_split ? total_steps - first : int(per_split));
    const int ID = int(p.ID), IH = int(p.IH), IW = int(p.IW);  // below 2^30 (host)

    // this thread's copies: A rows (output positions) and B rows (filters) r + i * ROWS, all at
    // chunk column `col` of a step's terms, into stage place `dst` (+ i * ROWS rows)
    const int col = tid % CHUNKS, r = tid / CHUNKS;
    const int dst = gc_swizzled(r, col) * E;
    const T* a_at[A_COPIES];  // each A row's window corner in x
    int a_d0[A_COPIES], a_h0[A_COPIES], a_w0[A_COPIES];
#pragma unroll
    for (int i = 0; i < A_COPIES; ++i) {
        const gc_window win = gc_window_of(m0 + r + i * ROWS, M, g, p);
        a_at[i] = x + win.base;  // x itself past the last position (GC_FAR corner)
        a_d0[i] = win.d0;
        a_h0[i] = win.h0;
        a_w0[i] = win.w0;
    }
    const T* b_at[B_COPIES];  // each B row's chunk of the next step's terms
    bool b_ok[B_COPIES];
#pragma unroll
    for (int i = 0; i < B_COPIES; ++i) {
        const long long f = f0 + r + i * ROWS;
        b_ok[i] = f < p.Cog;
        b_at[i] = w + (g * p.Cog + (b_ok[i] ? f : 0)) * Kg + first * BK + col * E;
    }

    // the first term of this thread's chunk of the next step: k, as (channel c, tap kd, kh, kw),
    // the tap's place (td, th, tw) = (kd * DD, kh * DH, kw * DW), and its x offset from a corner
    int k = first * BK + col * E, c = k, kd = 0, kh = 0, kw = 0, td = 0, th = 0, tw = 0;
    long long offset = 0;
    const int Cg = int(p.Cg), KH = int(p.KH), KW = int(p.KW);
    auto settle = [&]() {  // carry c past Cg into the taps; the tap's place and offset anew
        while (c >= Cg) {
            c -= Cg;
            if (++kw == KW) {
                kw = 0;
                if (++kh == KH) {
                    kh = 0;
                    ++kd;
                }
            }
        }
        td = kd * int(p.DD);
        th = kh * int(p.DH);
        tw = kw * int(p.DW);
        offset = c + td * p.xs_d + th * p.xs_h + tw * p.xs_w;
    };
    settle();

    // issue the copies of the step k points into, into `stage`; then step k by BK
    auto load = [&](int stage) {
        const bool term_ok = k < Kg;
#pragma unroll
        for (int i = 0; i < A_COPIES; ++i) {
            const bool ok = term_ok & (unsigned(a_d0[i] + td) < unsigned(ID)) &
                            (unsigned(a_h0[i] + th) < unsigned(IH)) &
                            (unsigned(a_w0[i] + tw) < unsigned(IW));
            gc_cp_async_16(&As[stage][dst + i * ROWS * BK], ok ? a_at[i] + offset : x, ok);
        }
#pragma unroll
        for (int i = 0; i < B_COPIES; ++i) {
            const bool ok = term_ok & b_ok[i];
            gc_cp_async_16(&Bs[stage][dst + i * ROWS * BK], ok ? b_at[i] : w, ok);
            b_at[i] += BK;
        }
        k += BK;
        c += BK;
        offset += BK;  // channels are x's unit stride
        if (c >= Cg) settle();
    };

    const gc_tc_place me = gc_tc_place_of<BM, WARP_M, WARP_N>(tid);
    const Mul mul(me);
    float acc[MT][NT][4];
    gc_tc_zero(acc);

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load(s);
        gc_cp_async_commit();  // an empty group past the last step keeps the count uniform
    }
    int cur = 0, next = STAGES - 1;  // the stage multiplied, and the one loaded, this step
    for (int s = 0; s < steps; ++s) {
        gc_cp_async_wait<STAGES - 2>();  // this thread's copies of step s have landed ...
        Mul::landed();  // (made visible to the tensor cores' own reads, where Mul needs it)
        __syncthreads();  // ... and everyone's; everyone is done with step s - 1's stage
        if (s + STAGES - 1 < steps) load(next);
        gc_cp_async_commit();
        mul.template step<MT, NT, BK>(acc, As[cur], Bs[cur]);
        cur = cur == STAGES - 1 ? 0 : cur + 1;
        next = next == STAGES - 1 ? 0 : next + 1;
    }
    gc_cp_async_wait<0>();  // no copy outlives the block (the trailing groups are empty)

    // the block's place again (cheaper than keeping it through the loop)
    const unsigned z = blockIdx.z, nsplit = unsigned(splits);
    const long long g_out = z / nsplit, m_out = blockIdx.x * (long long)BM + me.wm;
    const long long f_out = blockIdx.y * (long long)BN + me.wn;
    if (nsplit > 1)  // conv_gemm_sum_splits (conv_gemm.cu) finishes them
        gc_tc_store_partial<MT, NT>(acc, partial + (z % nsplit) * p.C_out * M, p, M, g_out,
                                    m_out, f_out, me.group, me.t);
    else
        gc_tc_store<T, ACT, MT, NT>(acc, y, bias, p, M, g_out, m_out, f_out, me.group, me.t);
}

