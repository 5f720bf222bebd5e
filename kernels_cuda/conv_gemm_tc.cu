// Implicit-GEMM convolution on tensor cores, for float16 or bfloat16 data (and float32 rounded to
// TF32, opt-in) with float accumulation: the same product as conv_gemm.cu (see there for A, B, M,
// Kg and the term tables), with the multiply done by the warp-level instruction mma.sync
// (m16n8k16 for 16-bit operands, m16n8k8 for TF32; sm_80 and later).
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
#include "gpuconv_gemm.cuh"
#include "gpuconv_types.cuh"

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

// Where a thread sits in both tensor-core kernels: 8 warps, 4 along M and 2 along N, each
// owning WARP x WARP of the tile from its corner (wm, wn); lane = 4 * group + t.
struct gc_tc_place {
    int lane, group, t, wm, wn;
};

template <int BM, int WARP>
__device__ __forceinline__ gc_tc_place gc_tc_place_of(int tid) {
    const int warp = tid / 32, lane = tid % 32;
    return {lane, lane / 4, lane % 4, (warp % (BM / WARP)) * WARP, (warp / (BM / WARP)) * WARP};
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

// The epilogue of both tensor-core kernels: a warp's MT x NT tiles of 16 x 8 accumulators (its
// tile's corner at output position m_w, filter f_w of group g), plus bias, through the
// activation, stored in the output dtype. The stores follow the fragments' layout whatever y's
// layout (strides), skipping positions past M and filters past the group's.
template <typename T, int ACT, int MT, int NT>
__device__ __forceinline__ void gc_tc_store(const float (&acc)[MT][NT][4], T* y, const T* bias,
                                            const gc_conv& p, long long M, long long g,
                                            long long m_w, long long f_w, int group, int t) {
    typedef gc_num<T> num;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long long m = m_w + i * 16 + group + 8 * half;
            if (m >= M) continue;
            const long long y_base = gc_output_offset(m, p);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const long long f = f_w + j * 8 + 2 * t + c;
                    if (f >= p.Cog) continue;
                    const long long co = g * p.Cog + f;
                    float v = acc[i][j][2 * half + c];
                    if (p.has_bias) v = v + num::load(bias[co]);
                    y[y_base + co * p.ys_c] = num::store(gc_activate<ACT>(v));
                }
            }
        }
    }
}

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
    __shared__ int k_tap[2][BK][3];

    const int tid = threadIdx.x;
    const long long Kg = p.Cg * p.KD * p.KH * p.KW;
    const long long M = p.N * p.OD * p.OH * p.OW;
    const long long g = blockIdx.z;
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long steps = (Kg + BK - 1) / BK;

    const int am = tid % BM;
    const gc_window win = gc_window_of(m0 + am, M, g, p);
    const T* wg = w + g * p.Cog * Kg;

    auto find_terms = [&](long long step, int buf) {
        gc_find_terms<BK>(tid, step, Kg, p, k_offset[buf], k_tap[buf]);
    };

    raw_t a_next[A_LOADS], b_next[B_LOADS];
    auto load = [&](long long step, int buf) {
        gc_gather<BM, BK, THREADS>(a_next, b_next, tid, step, x, win, k_offset[buf], k_tap[buf],
                                   p, wg, f0, Kg,
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

    const gc_tc_place me = gc_tc_place_of<BM, WARP_M>(tid);
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

// ---------------------------------------------------------------------------------------------
// conv_gemm_tc_cl: the same product for channels-last data whose filters have a multiple of 8
// kernels (C_in / groups % 8 == 0), 16-bit operands only, fed the way the tensor cores want:
//
// - terms run tap-major, k = ((kd * KH + kh) * KW + kw) * Cg + c, so 8 neighbouring terms are 8
//   neighbouring channels of one input element: one 16-byte load (x channels-last: p.xs_c == 1,
//   every other stride of x a multiple of 8 elements, x 16-byte aligned), and 8 neighbouring
//   elements of a filter laid out (C_out, KD, KH, KW, Cg) (w here is that copy, contiguous);
// - those loads go from global to shared memory with cp.async (no registers on the way; a tap
//   outside the input, a term past Kg or a filter past the group's is written as zeros by the
//   copy's zero fill), into a 3-stage ring, so two steps are in flight while one is multiplied;
// - fragments are read with ldmatrix (one instruction for a warp's 4 8x8 matrices).
//
// Tiles, warps and epilogue as conv_gemm_tc. Each thread copies two A chunks (rows r and r + 64,
// chunk column r % 4) and one B chunk a step, and steps its own term counter (c, kd, kh, kw) by
// BK instead of dividing. Shared memory: 3 x (128 + 64) rows of 40 halves (80 bytes: 16-byte
// aligned, and the 8 rows an ldmatrix reads fall in distinct banks) = 46080 bytes.

// Copy 16 bytes from global `src` to shared `dst`, asynchronously; zeros instead when !valid
// (src is then not read but must still be a valid address).
__device__ __forceinline__ void gc_cp_async_16(void* dst, const void* src, bool valid) {
#ifdef __CUDA_ARCH__
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(valid ? 16 : 0));
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

template <typename T, int ACT>
__global__ void __launch_bounds__(256)
conv_gemm_tc_cl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                T* __restrict__ y, const gc_conv p) {
    typedef gc_tc_ops<T> ops;
    typedef typename ops::raw_t raw_t;
    static_assert(sizeof(raw_t) == 2, "16-bit operands only");
    constexpr int BM = 128, BN = 64, BK = 32, THREADS = 256, STAGES = 3, ROW = BK + 8;
    constexpr int CHUNKS = BK / 8;  // 16-byte chunks a tile row
    constexpr int WARP_M = 32, WARP_N = 32, MT = WARP_M / 16, NT = WARP_N / 8;
    static_assert((BM / WARP_M) * (BN / WARP_N) * 32 == THREADS, "one warp per warp tile");
    static_assert(BM * CHUNKS == 2 * THREADS && BN * CHUNKS == THREADS, "copies a thread");

    __shared__ __align__(128) raw_t As[STAGES][BM][ROW];
    __shared__ __align__(128) raw_t Bs[STAGES][BN][ROW];

    const int tid = threadIdx.x;
    const long long Kg = p.Cg * p.KD * p.KH * p.KW;  // a multiple of 8
    const long long M = p.N * p.OD * p.OH * p.OW;
    const long long g = blockIdx.z;
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long steps = (Kg + BK - 1) / BK;

    // this thread's copies: A rows r and r + 64, B row (filter) r, all at chunk column `col`
    const int col = tid % CHUNKS, r = tid / CHUNKS;
    const gc_window win[2] = {gc_window_of(m0 + r, M, g, p), gc_window_of(m0 + r + 64, M, g, p)};
    const bool filter_ok = f0 + r < p.Cog;
    const T* w_row = w + (g * p.Cog + (filter_ok ? f0 + r : 0)) * Kg;

    // the first term of this thread's chunk: k, and as (channel c, tap kd, kh, kw)
    long long k = col * 8;
    int c = col * 8, kd = 0, kh = 0, kw = 0;
    const int Cg = int(p.Cg), KH = int(p.KH), KW = int(p.KW);
    auto next_tap_while_past = [&]() {
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
    };
    next_tap_while_past();

    // issue the copies of the next step (the one k points into) into `stage`, then step k
    auto load = [&](int stage) {
        const bool term_ok = k < Kg;
        const int tap[3] = {int(kd * p.DD), int(kh * p.DH), int(kw * p.DW)};
        const long long offset = c + tap[0] * p.xs_d + tap[1] * p.xs_h + tap[2] * p.xs_w;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const bool ok = term_ok && gc_inside(win[i], tap, p);
            gc_cp_async_16(&As[stage][r + 64 * i][col * 8], ok ? x + win[i].base + offset : x,
                           ok);
        }
        const bool ok = term_ok && filter_ok;
        gc_cp_async_16(&Bs[stage][r][col * 8], ok ? w_row + k : w, ok);
        k += BK;
        c += BK;
        next_tap_while_past();
    };

    const gc_tc_place me = gc_tc_place_of<BM, WARP_M>(tid);
    const int lane = me.lane;
    float acc[MT][NT][4];
    gc_tc_zero(acc);

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load(s);
        gc_cp_async_commit();  // an empty group past the last step keeps the count uniform
    }
    for (long long s = 0; s < steps; ++s) {
        gc_cp_async_wait<STAGES - 2>();  // this thread's copies of step s have landed ...
        __syncthreads();  // ... and everyone's; everyone is done with step s - 1's stage
        if (s + STAGES - 1 < steps) load(int((s + STAGES - 1) % STAGES));
        gc_cp_async_commit();
        const int cur = int(s % STAGES);
#pragma unroll
        for (int k0 = 0; k0 < BK; k0 += 16) {
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i)  // matrices: rows 0-7 / 8-15 x terms 0-7 / 8-15
                gc_ldmatrix_x4(a[i], &As[cur][me.wm + i * 16 + lane % 16][k0 + (lane / 16) * 8]);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {  // filters j*8.. and (j+1)*8.., terms 0-7 / 8-15
                unsigned q[4];
                const int row = me.wn + j * 8 + lane % 8 + (lane / 16) * 8;
                gc_ldmatrix_x4(q, &Bs[cur][row][k0 + (lane / 8) % 2 * 8]);
                b[j][0] = q[0];
                b[j][1] = q[1];
                b[j + 1][0] = q[2];
                b[j + 1][1] = q[3];
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) ops::mma(acc[i][j], a[i], b[j]);
        }
    }
    gc_cp_async_wait<0>();  // no copy outlives the block (the trailing groups are empty)

    gc_tc_store<T, ACT, MT, NT>(acc, y, bias, p, M, g, m0 + me.wm, f0 + me.wn, me.group, me.t);
}
