// Implicit-GEMM convolution: the same result as conv_direct.cu, computed as a tiled matrix
// product that never unrolls the input in global memory.
//
// Per group g the convolution is Y[m, f] = sum_k A[m, k] * B[k, f] with
//   m = (n, od, oh, ow)        an output position,     M = N * OD * OH * OW,
//   f                          a filter of the group,  Cog = C_out / groups,
//   k = (c, kd, kh, kw)        a term of one filter,   Kg = C_in / groups * KD * KH * KW,
//   A[m, k] = x[n, g*Cg + c, od*SD - PD + kd*DD, ...]  (0 where the window leaves the input),
//   B[k, f] = w[g*Cog + f, c, kd, kh, kw]              (the filters are contiguous: B is w^T).
// A block computes a BM x BN tile of Y in steps of BK terms. Each step's A and B tiles are read
// from global memory into registers while the previous step's tiles are multiplied out of shared
// memory (two shared buffers, one barrier per step). A thread owns TM x TN accumulators, in runs
// of up to four neighbouring rows/columns so that it reads them from shared memory as one vector.
//
// The window offset of each term k (its channel, and its tap's place in the window) takes three
// divisions to find; BK threads find them once per step for the whole block and share them, so
// that the A loads are one table lookup, a bounds check and a load each.
//
// Split-K: with splits > 1 (blockIdx.z = g * splits + split) a block sums only steps
// split * per_split ... of its tile's terms and stores the sums, without bias or activation, to
// partial[split, g*Cog + f, m] (accumulator type); conv_gemm_sum_splits then adds the splits in
// order, adds the bias, applies the activation and writes y, so the result is the same run after
// run. Layers with few output tiles (r50_res5: 52 blocks of 128x128 on 132 SMs) fill the GPU.
//
// x and y are addressed through element strides, as in conv_direct: both layouts and any view
// work. Loads of A from channels-first x are coalesced (neighbouring threads take neighbouring
// output positions). Sums run in the accumulator type (float for half), in the order k = 0, 1, ...
// within each thread, so results are deterministic.
#include "gpuconv_gemm.cuh"
#include "gpuconv_types.cuh"

// Up to four neighbouring accumulator-type values, read from shared memory as one vector.
template <typename A, int V>
struct __align__(V * sizeof(A)) gc_run {
    A v[V];
};

// Which of a tile row's elements a thread owns: its i-th is in run i / V (runs of V neighbours,
// the P threads along this axis side by side), place i % V in the run.
template <int V, int P>
__device__ __forceinline__ int gc_owned(int thread, int i) {
    return (i / V) * P * V + thread * V + i % V;
}

// The T elements a thread owns of one row of a shared tile, read one run (vector) at a time.
template <typename A, int T, int V, int P>
__device__ __forceinline__ void gc_read_owned(A (&out)[T], const A* row, int thread) {
#pragma unroll
    for (int r = 0; r < T / V; ++r) {
        const gc_run<A, V> run =
            *reinterpret_cast<const gc_run<A, V>*>(row + gc_owned<V, P>(thread, r * V));
#pragma unroll
        for (int v = 0; v < V; ++v) out[r * V + v] = run.v[v];
    }
}

// One step of both FFMA kernels' product: acc[i][j] += A[kk][row i] * B[kk][column j] for the
// step's BK terms kk, in order, each thread reading the rows (tm) and columns (tn) it owns out
// of the shared tiles.
template <typename A, int BK, int BM, int BN, int TM, int TN>
__device__ __forceinline__ void gc_ffma_step(A (&acc)[TM][TN], const A (&As)[BK][BM],
                                             const A (&Bs)[BK][BN], int tm, int tn) {
    constexpr int MT = BM / TM, NT = BN / TN;
    constexpr int VM = TM < 4 ? TM : 4, VN = TN < 4 ? TN : 4;  // vector run lengths
    static_assert(TM % VM == 0 && TN % VN == 0, "accumulator runs must tile TM and TN");
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        A a[TM], b[TN];
        gc_read_owned<A, TM, VM, MT>(a, As[kk], tm);
        gc_read_owned<A, TN, VN, NT>(b, Bs[kk], tn);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = gc_madd(acc[i][j], a[i], b[j]);
    }
}

template <typename T, int ACT, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv_gemm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
          T* __restrict__ y, typename gc_num<T>::acc* __restrict__ partial, long long splits,
          long long per_split, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    constexpr int MT = BM / TM, NT = BN / TN, THREADS = MT * NT;
    constexpr int VM = TM < 4 ? TM : 4, VN = TN < 4 ? TN : 4;  // vector run lengths
    constexpr int A_LOADS = BM * BK / THREADS, B_LOADS = BN * BK / THREADS;
    static_assert(TM % VM == 0 && TN % VN == 0, "accumulator runs must tile TM and TN");
    static_assert(THREADS % BM == 0 && (BM * BK) % THREADS == 0, "A tile: whole rows per thread");
    static_assert((BN * BK) % THREADS == 0, "B tile: whole loads per thread");

    __shared__ __align__(4 * sizeof(acc_t)) acc_t As[2][BK][BM];
    __shared__ __align__(4 * sizeof(acc_t)) acc_t Bs[2][BK][BN];
    __shared__ long long k_offset[2][BK];  // x offset of term k from its window's corner
    __shared__ gc_tap k_tap[2][BK];        // its tap's place

    const int tid = threadIdx.x;
    const long long Kg = p.Cg * p.KD * p.KH * p.KW;
    const long long M = p.N * p.OD * p.OH * p.OW, Cog = p.Cog;
    const long long g = blockIdx.z / splits, split = blockIdx.z % splits;
    const long long m0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long total_steps = (Kg + BK - 1) / BK, first = split * per_split;
    const long long steps =
        first >= total_steps ? 0 : (total_steps - first < per_split ? total_steps - first
                                                                    : per_split);

    // this thread's A row (one output position for all of its loads) and its window's corner
    const int am = tid % BM;
    const gc_window win = gc_window_of(m0 + am, M, g, p);
    const T* x_win = x + win.base;
    // the filters' reads start at this split's first term (the gather adds step * BK to it)
    const gc_filter_reads<BK, THREADS, B_LOADS, T> filter_reads(
        tid, w + g * Cog * Kg + first * BK, f0, Kg, Cog);

    // threads 0..BK-1 count term tid of each step in turn (in shared memory: registers are
    // the scarcer, and only these threads use it)
    __shared__ gc_term_counter terms[BK];
    if (tid < BK) terms[tid].start(int(first) * BK + tid, BK, p);
    auto find_terms = [&](long long, int buf) {
        if (tid < BK) terms[tid].take(Kg, p, k_offset[buf][tid], k_tap[buf][tid]);
    };

    acc_t a_next[A_LOADS], b_next[B_LOADS];
    auto load = [&](long long step, int buf) {
        gc_gather<BM, BK, THREADS>(a_next, b_next, tid, step, x_win, win, k_offset[buf],
                                   k_tap[buf], p, filter_reads, Kg - first * BK,
                                   [](const T& v) { return num::load(v); });
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) As[buf][tid / BM + i * (THREADS / BM)][am] = a_next[i];
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * THREADS;
            Bs[buf][e % BK][e / BK] = b_next[i];
        }
    };

    // which accumulators this thread owns: neighbouring threads take neighbouring output
    // positions (channels-first y) or neighbouring filters (channels-last y), so stores coalesce
    const int tm = p.channels_last ? tid / NT : tid % MT;
    const int tn = p.channels_last ? tid % NT : tid / MT;
    acc_t acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = num::zero();

    if (steps > 0)
        gc_gemm_steps(steps, find_terms, load, stash,
                      [&](int cur) { gc_ffma_step(acc, As[cur], Bs[cur], tm, tn); });

    if (splits > 1) {  // this split's sums; conv_gemm_sum_splits finishes them
        const long long E = p.C_out * M;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const long long m = m0 + gc_owned<VM, MT>(tm, i);
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const long long f = f0 + gc_owned<VN, NT>(tn, j);
                if (f < Cog) partial[split * E + (g * Cog + f) * M + m] = acc[i][j];
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long m = m0 + gc_owned<VM, MT>(tm, i);
        if (m >= M) continue;
        const long long y_base = gc_output_offset(m, p);
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const long long f = f0 + gc_owned<VN, NT>(tn, j);
            if (f >= Cog) continue;
            const long long co = g * Cog + f;
            acc_t v = acc[i][j];
            if (p.has_bias) v = v + num::load(bias[co]);
            y[y_base + co * p.ys_c] = num::store(gc_activate<ACT>(v));
        }
    }
}

// Split-K's second stage: y[m, co] = activation(sum over splits r, in order, of
// partial[r, co, m] + bias[co]), one thread per (co, m), neighbouring threads neighbouring
// positions (coalesced partial reads; coalesced writes for channels-first y). A thread's
// elements are a grid stride apart: it splits its first into (co, m) and m into (n, od, oh,
// ow) once, then steps all of them by the stride (q filters and r positions, m = M carrying
// into co) without dividing again.
template <typename T, int ACT>
__global__ void conv_gemm_sum_splits(const typename gc_num<T>::acc* __restrict__ partial,
                                     const T* __restrict__ bias, T* __restrict__ y,
                                     long long splits, const gc_conv p) {
    typedef gc_num<T> num;
    const long long M = p.N * p.OD * p.OH * p.OW, E = p.C_out * M;
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (first >= E) return;
    const long long stride = (long long)gridDim.x * blockDim.x, q = stride / M, r = stride % M;
    long long co = first / M, m = first % M;
    gc_mixed_place at;  // m as (n, od, oh, ow), stepped by r
    at.start<long long>(m, r, p.OD, p.OH, p.OW);
    for (long long e = first; e < E; e += stride) {
        typename num::acc sum = num::zero();
        for (long long s = 0; s < splits; ++s) sum = sum + partial[s * E + e];
        if (p.has_bias) sum = sum + num::load(bias[co]);
        y[gc_output_offset_at(at, p) + co * p.ys_c] = num::store(gc_activate<ACT>(sum));
        co += q;
        m += r;
        at.advance(p.OD, p.OH, p.OW);
        if (m >= M) {  // the positions wrapped: one filter on, n back by N
            m -= M;
            ++co;
            at.hi -= int(p.N);
        }
    }
}

// The filter gradient as an implicit GEMM, first stage: per group g,
//   dW[f, k] = sum over output positions m of conj(A[m, k]) * G[m, f]
// with A the forward conv's window matrix (above) and G[m, f] = gy[n, g*Cog + f, od, oh, ow]
// (gy output-shaped, p's y strides). A block computes a BM x BN tile of dW^T (terms x filters)
// over one split of the M positions: steps split * per_split ... of BK positions, the terms'
// offsets found once per block (its terms are fixed) and each step's BK windows once per step
// (BK threads, shared), double-buffered as in conv_gemm. Its sums (in the accumulator type, in
// position order) go to partial[split, g*Cog + f, k]; sum_partials (conv_adjoint.cu) then adds
// the splits in order, so the result is the same run after run. blockIdx.z = g * splits + split.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
conv_filter_grad_gemm(const T* __restrict__ x, const T* __restrict__ gy,
                      typename gc_num<T>::acc* __restrict__ partial, long long splits,
                      long long per_split, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    constexpr int MT = BM / TM, NT = BN / TN, THREADS = MT * NT;
    constexpr int VM = TM < 4 ? TM : 4, VN = TN < 4 ? TN : 4;
    constexpr int A_LOADS = BM * BK / THREADS, B_LOADS = BN * BK / THREADS;
    static_assert((BM * BK) % THREADS == 0 && (BN * BK) % THREADS == 0, "whole loads a thread");

    __shared__ __align__(4 * sizeof(acc_t)) acc_t As[2][BK][BM];
    __shared__ __align__(4 * sizeof(acc_t)) acc_t Bs[2][BK][BN];
    __shared__ long long k_offset[BM];  // the block's terms: x offset from a window's corner
    __shared__ gc_tap k_tap[BM];
    __shared__ gc_window wins[2][BK];   // each step's positions: window, and y offset below
    __shared__ long long y_at[2][BK];

    const int tid = threadIdx.x;
    const long long Kg = p.Cg * p.KD * p.KH * p.KW;
    const long long M = p.N * p.OD * p.OH * p.OW;
    const long long g = blockIdx.z / splits, split = blockIdx.z % splits;
    const long long k0 = blockIdx.x * (long long)BM, f0 = blockIdx.y * (long long)BN;
    const long long total_steps = (M + BK - 1) / BK;
    const long long first = split * per_split;
    const long long steps =
        first >= total_steps ? 0 : (total_steps - first < per_split ? total_steps - first
                                                                    : per_split);
    if (tid < BM) {  // the block's terms k0 + tid, found once
        gc_term_counter term;
        term.start(int(k0) + tid, BM, p);
        term.take(Kg, p, k_offset[tid], k_tap[tid]);
    }

    // threads 0..BK-1 count position (first + step) * BK + tid of each step in turn
    __shared__ gc_position_counter positions[BK];
    if (tid < BK) positions[tid].start(first * BK + tid, BK, p);
    auto find_windows = [&](long long, int buf) {
        if (tid < BK) positions[tid].take(M, g, p, wins[buf][tid], y_at[buf][tid]);
    };
    acc_t a_next[A_LOADS], b_next[B_LOADS];
    auto load = [&](long long, int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {  // neighbouring threads: neighbouring terms
            const int e = tid + i * THREADS, kk = e % BM, mm = e / BM;
            const gc_window& win = wins[buf][mm];
            a_next[i] = gc_inside(win, k_tap[kk], p)
                            ? gc_conj(num::load(x[win.base + k_offset[kk]]))
                            : num::zero();
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * THREADS, ff = e % BN, mm = e / BN;
            const bool ok = wins[buf][mm].valid && f0 + ff < p.Cog;
            b_next[i] = ok ? num::load(gy[y_at[buf][mm] + (f0 + ff) * p.ys_c]) : num::zero();
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int e = tid + i * THREADS;
            As[buf][e / BM][e % BM] = a_next[i];
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int e = tid + i * THREADS;
            Bs[buf][e / BN][e % BN] = b_next[i];
        }
    };

    const int tm = tid % MT, tn = tid / MT;
    acc_t acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = num::zero();

    if (steps > 0) {
        // the window table is what gc_gemm_steps' find_terms fills: it needs the barrier
        // after the block's term table too, which its first barrier gives
        gc_gemm_steps(steps, find_windows, load, stash,
                      [&](int cur) { gc_ffma_step(acc, As[cur], Bs[cur], tm, tn); });
    }

    const long long E = p.C_out * Kg;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const long long k = k0 + gc_owned<VM, MT>(tm, i);
        if (k >= Kg) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const long long f = f0 + gc_owned<VN, NT>(tn, j);
            if (f >= p.Cog) continue;
            partial[split * E + (g * p.Cog + f) * Kg + k] = acc[i][j];
        }
    }
}
