// Implicit-GEMM convolution on tensor cores, for float16 or bfloat16 data with float
// accumulation: the same product as conv_gemm.cu (see there for A, B, M, Kg and the term tables),
// with the multiply done by the warp-level instruction mma.sync.m16n8k16 (sm_80 and later).
//
// A block of 256 threads (8 warps) computes a 128 x 64 tile of Y (output positions x filters)
// in steps of 32 terms. Each step's A tile (windows gathered from x on the fly) and B tile
// (filters) are read from global memory into registers while the previous step's tiles are
// multiplied out of shared memory (two buffers, one barrier per step), as in conv_gemm.cu. The
// warps sit 4 along M and 2 along N; each owns 32 x 32 of the tile: 2 x 4 mma tiles of 16 x 8,
// 32 float accumulators a thread.
//
// Shared tiles hold raw 16-bit values, A as [position][term] and B as [filter][term], so that the
// two neighbouring terms an mma operand register holds are one 32-bit word; rows are padded by 8
// halves (20 words), which puts the 8 rows a warp reads at once in distinct banks.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 or .bf16 operands), lane = 4 * group + t:
//   A (16 x 16, row-major) registers r0..r3: rows group, group + 8, group, group + 8;
//                                            terms 2t, 2t+1 (r0, r1) and 2t+8, 2t+9 (r2, r3);
//   B (16 x 8, column-major) registers r0, r1: filter group; terms 2t, 2t+1 and 2t+8, 2t+9;
//   C/D (16 x 8) floats d0..d3: rows group (d0, d1), group + 8 (d2, d3); filters 2t, 2t+1.
#include "gpuconv_gemm.cuh"
#include "gpuconv_types.cuh"

template <typename T>
struct gc_is_bfloat16 {
    static constexpr bool value = false;
};
template <>
struct gc_is_bfloat16<gc_bfloat16> {
    static constexpr bool value = true;
};

// d += a * b for one warp's 16 x 16 by 16 x 8 tiles of T (gc_half or gc_bfloat16), in float.
template <typename T>
__device__ __forceinline__ void gc_mma_16816(float (&d)[4], const unsigned (&a)[4],
                                             const unsigned (&b)[2]) {
#ifdef __CUDA_ARCH__
    if constexpr (gc_is_bfloat16<T>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else  // the test suite's host emulation supplies the warp's product (tests/host_emulation)
    gc_emulated_mma_16816<gc_is_bfloat16<T>::value>(d, a, b);
#endif
}

// Two neighbouring 16-bit values of a shared row as the 32-bit word an mma register holds (the
// lower-indexed one in the low half).
__device__ __forceinline__ unsigned gc_pair(const unsigned short* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

template <typename T, int ACT>
__global__ void __launch_bounds__(256)
conv_gemm_tc(const T* __restrict__ x, const T* __restrict__ w,
             const T* __restrict__ bias, T* __restrict__ y, int has_bias,
             int co_fastest, long long N, long long C_out, long long groups, long long Cg,
             long long ID, long long IH, long long IW,
             long long OD, long long OH, long long OW,
             long long KD, long long KH, long long KW,
             long long SD, long long SH, long long SW,
             long long PD, long long PH, long long PW,
             long long DD, long long DH, long long DW,
             long long xs_n, long long xs_c, long long xs_d, long long xs_h, long long xs_w,
             long long ys_n, long long ys_c, long long ys_d, long long ys_h, long long ys_w) {
    typedef gc_num<T> num;
    static_assert(sizeof(T) == 2, "tensor-core operands are 16-bit: gc_half or gc_bfloat16");
    constexpr int BM = 128, BN = 64, BK = 32, THREADS = 256, PAD = 8;
    constexpr int A_LOADS = BM * BK / THREADS, B_LOADS = BN * BK / THREADS;
    constexpr int WARP_M = 32, WARP_N = 32, MT = WARP_M / 16, NT = WARP_N / 8;
    static_assert((BM / WARP_M) * (BN / WARP_N) * 32 == THREADS, "one warp per warp tile");
    (void)co_fastest;  // the stores follow the fragments' layout whatever y's layout

    __shared__ __align__(16) unsigned short As[2][BM][BK + PAD];
    __shared__ __align__(16) unsigned short Bs[2][BN][BK + PAD];
    __shared__ long long k_offset[2][BK];
    __shared__ int k_tap[2][BK][3];

    const int tid = threadIdx.x;
    const long long Kg = Cg * KD * KH * KW;
    const long long M = N * OD * OH * OW, Cog = C_out / groups;
    const long long g = blockIdx.z;
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long steps = (Kg + BK - 1) / BK;

    const int am = tid % BM;
    const gc_window win = gc_window_of(m0 + am, M, g, Cg, OD, OH, OW, SD, SH, SW, PD, PH, PW,
                                       xs_n, xs_c, xs_d, xs_h, xs_w);
    const T* wg = w + g * Cog * Kg;

    auto find_terms = [&](long long step, int buf) {
        gc_find_terms<BK>(tid, step, Kg, KD, KH, KW, DD, DH, DW, xs_c, xs_d, xs_h, xs_w,
                          k_offset[buf], k_tap[buf]);
    };

    unsigned short a_next[A_LOADS], b_next[B_LOADS];
    auto load = [&](long long step, int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int kk = tid / BM + i * (THREADS / BM);
            unsigned short v = 0;  // +0.0
            if (gc_inside(win, k_tap[buf][kk], ID, IH, IW))
                v = x[win.base + k_offset[buf][kk]].bits;
            a_next[i] = v;
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * THREADS, kk = e % BK, ff = e / BK;
            const long long k = step * BK + kk;
            unsigned short v = 0;
            if (f0 + ff < Cog && k < Kg) v = wg[(f0 + ff) * Kg + k].bits;
            b_next[i] = v;
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) As[buf][am][tid / BM + i * (THREADS / BM)] = a_next[i];
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * THREADS;
            Bs[buf][e / BK][e % BK] = b_next[i];
        }
    };

    const int warp = tid / 32, lane = tid % 32, group = lane / 4, t = lane % 4;
    const int wm = (warp % (BM / WARP_M)) * WARP_M, wn = (warp / (BM / WARP_M)) * WARP_N;
    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    find_terms(0, 0);
    __syncthreads();
    load(0, 0);
    stash(0);
    if (steps > 1) find_terms(1, 1);
    __syncthreads();

    for (long long s = 0; s < steps; ++s) {
        const int cur = int(s & 1);
        if (s + 1 < steps) load(s + 1, cur ^ 1);  // in flight while this step multiplies
#pragma unroll
        for (int k16 = 0; k16 < BK; k16 += 16) {
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const unsigned short* lo = As[cur][wm + i * 16 + group] + k16 + 2 * t;
                const unsigned short* hi = As[cur][wm + i * 16 + group + 8] + k16 + 2 * t;
                a[i][0] = gc_pair(lo);
                a[i][1] = gc_pair(hi);
                a[i][2] = gc_pair(lo + 8);
                a[i][3] = gc_pair(hi + 8);
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const unsigned short* col = Bs[cur][wn + j * 8 + group] + k16 + 2 * t;
                b[j][0] = gc_pair(col);
                b[j][1] = gc_pair(col + 8);
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) gc_mma_16816<T>(acc[i][j], a[i], b[j]);
        }
        if (s + 1 < steps) stash(cur ^ 1);
        if (s + 2 < steps) find_terms(s + 2, cur);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long long m = m0 + wm + i * 16 + group + 8 * half;
            if (m >= M) continue;
            const gc_coords p = gc_split_index(m, 1LL, OD, OH, OW, false);
            const long long y_base = p.n * ys_n + p.d * ys_d + p.h * ys_h + p.w * ys_w;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const long long f = f0 + wn + j * 8 + 2 * t + c;
                    if (f >= Cog) continue;
                    const long long co = g * Cog + f;
                    float v = acc[i][j][2 * half + c];
                    if (has_bias) v = v + num::load(bias[co]);
                    y[y_base + co * ys_c] = num::store(gc_activate<ACT>(v));
                }
            }
        }
    }
}
