// Implicit-GEMM convolution on tensor cores, for float16 or bfloat16 data (and float32 rounded to
// TF32, opt-in) with float accumulation: the same product as conv_gemm.cu (see there for A, B, M,
// Kg and the term tables), with the multiply done by the warp-level instruction mma.sync
// (m16n8k16 for 16-bit operands, m16n8k8 for TF32; sm_80 and later). At the end, the
// channels-last kernel conv_gemm_tc_cl, and conv_gemm_cl, its FFMA variant for float32.
//
// A block of 256 threads (8 warps) computes a 128 x 64 tile of Y (output positions x filters)
// in steps of 32 terms (16 for TF32). Each step's A tile (windows gathered from x on the fly)
// and B tile (filters) are read from global memory into registers while the previous step's
// tiles are multiplied out of shared memory (two buffers, one barrier per step), as in
// conv_gemm.cu. The warps sit 4 along M and 2 along N; each owns 32 x 32 of the tile: 2 x 4
// mma tiles of 16 x 8, 32 float accumulators a thread.
//
// Shared tiles hold the raw values (16-bit words, or floats for TF32), A as [position][term] and
// B as [filter][term], so that the two neighbouring 16-bit terms an mma operand register holds
// are one 32-bit word; rows are padded to 20 words, which puts the 8 rows a warp reads at once in
// distinct banks.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 or .bf16 operands), lane = 4 * group + t:
//   A (16 x 16, row-major) registers r0..r3: rows group, group + 8, group, group + 8;
//                                            terms 2t, 2t+1 (r0, r1) and 2t+8, 2t+9 (r2, r3);
//   B (16 x 8, column-major) registers r0, r1: filter group; terms 2t, 2t+1 and 2t+8, 2t+9;
//   C/D (16 x 8) floats d0..d3: rows group (d0, d1), group + 8 (d2, d3); filters 2t, 2t+1.
#include "gpuconv_gemm_cl.cuh"

// How the kernel feeds the tensor cores for each element type T: what shared memory holds
// (raw_t), the terms one mma takes (K), the terms a block step takes (BK), the padding of a
// shared row (PAD; rows of 20 32-bit words put the 8 rows a warp reads in distinct banks), the
// fragments read from a row, and the mma itself.
template <typename T>
struct gc_tc_ops;

// 16-bit floats: mma.m16n8k16, two neighbouring terms (2t, 2t+1) per 32-bit register.
template <typename T>
struct gc_tc_ops16 {
    typedef unsigned short raw_t;
    static constexpr int K = 16, BK = 32, PAD = 8;
    static __device__ __forceinline__ raw_t raw(const T& v) { return v.bits; }
    static __device__ __forceinline__ unsigned pair(const raw_t* p) {
        return *reinterpret_cast<const unsigned*>(p);  // the lower-indexed value in the low half
    }
    // A rows `lo` (group) and `hi` (group + 8), from this mma's first term
    static __device__ __forceinline__ void a_fragment(const raw_t* lo, const raw_t* hi, int t,
                                                      unsigned (&a)[4]) {
        a[0] = pair(lo + 2 * t);
        a[1] = pair(hi + 2 * t);
        a[2] = pair(lo + 2 * t + 8);
        a[3] = pair(hi + 2 * t + 8);
    }
    // B column (filter) `col`, from this mma's first term
    static __device__ __forceinline__ void b_fragment(const raw_t* col, int t, unsigned (&b)[2]) {
        b[0] = pair(col + 2 * t);
        b[1] = pair(col + 2 * t + 8);
    }
};

// One m16n8k16 with 16-bit operands of PTX type AB ("f16" or "bf16"), float accumulators.
#define GC_MMA_M16N8K16(AB, d, a, b)                                                        \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." AB "." AB ".f32 "                  \
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"         \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                           \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

template <>
struct gc_tc_ops<gc_half> : gc_tc_ops16<gc_half> {
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
#ifdef __CUDA_ARCH__
        GC_MMA_M16N8K16("f16", d, a, b);
#else  // the test suite's host emulation supplies the warp's product (tests/host_emulation)
        gc_emulated_mma_16816<false>(d, a, b);
#endif
    }
};

template <>
struct gc_tc_ops<gc_bfloat16> : gc_tc_ops16<gc_bfloat16> {
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
#ifdef __CUDA_ARCH__
        GC_MMA_M16N8K16("bf16", d, a, b);
#else
        gc_emulated_mma_16816<true>(d, a, b);
#endif
    }
};

// float32 as TF32 (opt-in: algorithm="gemm_tf32"): mma.m16n8k8, one term a register, each
// rounded to TF32 (10 mantissa bits, to nearest, ties away from zero) as it is read.
// Fragments (PTX ISA, m16n8k8 .tf32): A r0..r3 = (row group, term t), (group + 8, t),
// (group, t + 4), (group + 8, t + 4); B r0, r1 = (filter group; terms t, t + 4).
template <>
struct gc_tc_ops<float> {
    typedef float raw_t;
    static constexpr int K = 8, BK = 16, PAD = 4;
    static __device__ __forceinline__ raw_t raw(const float& v) { return v; }
    static __device__ __forceinline__ unsigned tf32(float v) {
        unsigned u;
#ifdef __CUDA_ARCH__
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
#else
        __builtin_memcpy(&u, &v, 4);
        if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
#endif
        return u;
    }
    static __device__ __forceinline__ void a_fragment(const raw_t* lo, const raw_t* hi, int t,
                                                      unsigned (&a)[4]) {
        a[0] = tf32(lo[t]);
        a[1] = tf32(hi[t]);
        a[2] = tf32(lo[t + 4]);
        a[3] = tf32(hi[t + 4]);
    }
    static __device__ __forceinline__ void b_fragment(const raw_t* col, int t, unsigned (&b)[2]) {
        b[0] = tf32(col[t]);
        b[1] = tf32(col[t + 4]);
    }
    static __device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
#ifdef __CUDA_ARCH__
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
        gc_emulated_mma_1688_tf32(d, a, b);
#endif
    }
};

template <typename T, int ACT>
__global__ void __launch_bounds__(256)
conv_gemm_tc(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
             T* __restrict__ y, const gc_conv p) {
    typedef gc_tc_ops<T> ops;
    typedef typename ops::raw_t raw_t;
    constexpr int BM = 128, BN = 64, BK = ops::BK, THREADS = 256, PAD = ops::PAD;
    constexpr int A_LOADS = BM * BK / THREADS, B_LOADS = BN * BK / THREADS;
    constexpr int WARP_M = 32, WARP_N = 32, MT = WARP_M / 16, NT = WARP_N / 8;
    static_assert((BM / WARP_M) * (BN / WARP_N) * 32 == THREADS, "one warp per warp tile");

    __shared__ __align__(16) raw_t As[2][BM][BK + PAD];
    __shared__ __align__(16) raw_t Bs[2][BN][BK + PAD];
    __shared__ long long k_offset[2][BK];
    __shared__ gc_tap k_tap[2][BK];

    const int tid = threadIdx.x;
    const long long Kg = p.Cg * p.KD * p.KH * p.KW;
    const long long M = p.N * p.OD * p.OH * p.OW;
    const long long g = blockIdx.z;
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long steps = (Kg + BK - 1) / BK;

    const int am = tid % BM;
    const gc_window win = gc_window_of(m0 + am, M, g, p);
    const T* x_win = x + win.base;
    const gc_filter_reads<BK, THREADS, B_LOADS, T> filter_reads(tid, w + g * p.Cog * Kg, f0, Kg,
                                                                 p.Cog);

    // threads 0..BK-1 count term tid of each step in turn (in shared memory: registers are
    // the scarcer, and only these threads use it)
    __shared__ gc_term_counter terms[BK];
    if (tid < BK) terms[tid].start(tid, BK, p);
    auto find_terms = [&](long long, int buf) {
        if (tid < BK) terms[tid].take(Kg, p, k_offset[buf][tid], k_tap[buf][tid]);
    };

    raw_t a_next[A_LOADS], b_next[B_LOADS];
    auto load = [&](long long step, int buf) {
        gc_gather<BM, BK, THREADS>(a_next, b_next, tid, step, x_win, win, k_offset[buf],
                                   k_tap[buf], p, filter_reads, Kg,
                                   [](const T& v) { return ops::raw(v); });
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

    const gc_tc_place me = gc_tc_place_of<BM, WARP_M, WARP_N>(tid);
    float acc[MT][NT][4];
    gc_tc_zero(acc);

    gc_gemm_steps(steps, find_terms, load, stash, [&](int cur) {
#pragma unroll
        for (int k0 = 0; k0 < BK; k0 += ops::K) {
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i)
                ops::a_fragment(As[cur][me.wm + i * 16 + me.group] + k0,
                                As[cur][me.wm + i * 16 + me.group + 8] + k0, me.t, a[i]);
#pragma unroll
            for (int j = 0; j < NT; ++j)
                ops::b_fragment(Bs[cur][me.wn + j * 8 + me.group] + k0, me.t, b[j]);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) ops::mma(acc[i][j], a[i], b[j]);
        }
    });

    gc_tc_store<T, ACT, MT, NT>(acc, y, bias, p, M, g, m0 + me.wm, f0 + me.wn, me.group, me.t);
}

// How the channels-last kernels multiply one stage, by element type: what shared memory holds
// (raw_t), the elements E of a 16-byte chunk (a step is 4 chunks of terms: BK = 4 * E), a
// warp's tile of Y (WARP_M x WARP_N: 64 x 32 here), what must follow the wait for a stage's
// copies (landed: nothing here), and the stage's product into a thread's accumulators, which
// both keep in mma.m16n8k16's layout (gc_tc_each: rows group + 8 * h + 16 * i, filters
// 8 * j + 2 * t + e of the warp's tile).

// 16-bit types: fragments by ldmatrix, products by mma.sync.
template <typename T>
struct gc_cl_mma {
    typedef typename gc_tc_ops<T>::raw_t raw_t;
    static constexpr int E = 8, WARP_M = 64, WARP_N = 32;
    static __device__ __forceinline__ void landed() {}  // ldmatrix reads as any load does
    // the stage places this lane's ldmatrix rows start at, for the step's two halves of 16
    // terms: A, row lane % 16 of each 16-row slice at chunk lane / 16 (matrices: rows 0-7 /
    // 8-15 x terms 0-7 / 8-15); B, filter lane % 8 + (lane / 16) * 8 of each pair of 8-filter
    // slices at chunk (lane / 8) % 2 (matrices: filters j*8.. x terms 0-7 / 8-15, then
    // (j+1)*8.. alike). Slices are 16 or 8 rows apart, so one swizzled place serves them all.
    int a_src[2], b_src[2];
    __device__ __forceinline__ explicit gc_cl_mma(const gc_tc_place& me) {
        const int lane = me.lane;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            a_src[h] = gc_swizzled(me.wm + lane % 16, 2 * h + lane / 16) * E;
            b_src[h] = gc_swizzled(me.wn + lane % 8 + (lane / 16) * 8, 2 * h + (lane / 8) % 2) * E;
        }
    }
    template <int MT, int NT, int BK>
    __device__ __forceinline__ void step(float (&acc)[MT][NT][4], const raw_t* As,
                                         const raw_t* Bs) const {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) gc_ldmatrix_x4(a[i], &As[a_src[h] + i * 16 * BK]);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                unsigned q[4];
                gc_ldmatrix_x4(q, &Bs[b_src[h] + j * 8 * BK]);
                b[j][0] = q[0];
                b[j][1] = q[1];
                b[j + 1][0] = q[2];
                b[j + 1][1] = q[3];
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) gc_tc_ops<T>::mma(acc[i][j], a[i], b[j]);
        }
    }
};

// Four floats read from shared memory as one 16-byte load.
struct __align__(16) gc_float4 {
    float v[4];
};

// float32: each chunk (4 terms) of a thread's 8 A rows and 8 B rows read as one 16-byte load
// a row, then 4 FFMA an accumulator, in term order (the sums are exact FP32, as conv_gemm.cu's).
// A warp's 8 A rows at one chunk (groups 0-7, rows 8 apart swizzling alike) fall in 8 distinct
// 16-byte bank groups and its 4 B rows (t = 0-3) in 4: one shared-memory wavefront a load.
// Per chunk a thread issues 16 loads for 256 FFMA.
struct gc_cl_ffma {
    typedef float raw_t;
    static constexpr int E = 4, WARP_M = 64, WARP_N = 32;
    static __device__ __forceinline__ void landed() {}
    int a_row, b_row, a_sw, b_sw;  // first rows (A: wm + group, B: wn + 2t) and their swizzles
    __device__ __forceinline__ explicit gc_cl_ffma(const gc_tc_place& me)
        : a_row(me.wm + me.group), b_row(me.wn + 2 * me.t),
          a_sw(((me.wm + me.group) >> 1) & 3), b_sw(((me.wn + 2 * me.t) >> 1) & 3) {}
    template <int MT, int NT, int BK>
    __device__ __forceinline__ void step(float (&acc)[MT][NT][4], const raw_t* As,
                                         const raw_t* Bs) const {
        static_assert(BK == 4 * E, "four chunks a row");
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            gc_float4 a[MT][2], b[NT][2];
            // rows a_row + 16 i + 8 h and b_row + 8 j + e swizzle as a_row and b_row do (rows 8
            // apart alike, and b_row + 1 as b_row: it is even)
            const raw_t* a_at = As + (a_row * 4 + (c ^ a_sw)) * E;
            const raw_t* b_at = Bs + (b_row * 4 + (c ^ b_sw)) * E;
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
                    a[i][h] = *reinterpret_cast<const gc_float4*>(a_at + (16 * i + 8 * h) * BK);
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    b[j][e] = *reinterpret_cast<const gc_float4*>(b_at + (8 * j + e) * BK);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                for (int i = 0; i < MT; ++i)
#pragma unroll
                    for (int j = 0; j < NT; ++j)
#pragma unroll
                        for (int q = 0; q < 4; ++q)
                            acc[i][j][q] = gc_madd(acc[i][j][q], a[i][q / 2].v[kk],
                                                   b[j][q % 2].v[kk]);
        }
    }
};

template <typename T, int ACT, int BN>
__global__ void __launch_bounds__(2 * BN, 256 / BN)  // 4 blocks an SM of 64 filters, 2 of 128
conv_gemm_tc_cl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                T* __restrict__ y, float* __restrict__ partial, long long splits,
                long long per_split, const gc_conv p) {
    gc_gemm_cl<gc_cl_mma<T>, T, ACT, BN>(x, w, bias, y, partial, splits, per_split, p);
}

// conv_gemm_cl: the channels-last kernel for float32, multiplied by FFMA (exact FP32 sums;
// filters of a multiple of 4 kernels). 64 accumulators and two 8-row fragments a thread take
// most of the registers: 2 blocks an SM of 64 filters, 1 of 128.
template <typename T, int ACT, int BN>
__global__ void __launch_bounds__(2 * BN, 128 / BN)
conv_gemm_cl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
             T* __restrict__ y, float* __restrict__ partial, long long splits,
             long long per_split, const gc_conv p) {
    static_assert(sizeof(T) == sizeof(float), "float32 only");
    gc_gemm_cl<gc_cl_ffma, T, ACT, BN>(x, w, bias, y, partial, splits, per_split, p);
}
