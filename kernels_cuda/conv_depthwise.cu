// Depthwise convolution: every filter is one kernel over one input channel (C_in/groups == 1;
// filter co reads channel co / (C_out/groups), so channel multipliers work too).
//
// The direct kernel's work for these layers is almost all overhead: 64-bit index splitting and
// runtime loops around a handful of multiply-adds, on a layer whose floor is the memory traffic.
// Here the loop index is 32-bit (the Python side launches this kernel only for outputs of fewer
// than 2^30 elements in and out; addresses stay 64-bit), the kernel's height and width are
// template constants (KH_, KW_ > 0, depth 1: the taps unroll into straight-line code; 0, 0:
// runtime sizes, any depth), and neighbouring threads take neighbouring output elements in the
// output's memory order (channels-last: neighbouring channels), so loads and stores coalesce.
//
// Same arguments as conv_direct (Cg is 1).
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"
#include "gpuconv_types.cuh"

template <typename T, int ACT, int KH_, int KW_>
__global__ void conv_depthwise(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ bias, T* __restrict__ y, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    constexpr bool FIXED = KH_ > 0 && KW_ > 0;  // then KD == 1 (the Python side checks)
    const int kh_n = FIXED ? KH_ : int(p.KH), kw_n = FIXED ? KW_ : int(p.KW);
    const int kd_n = FIXED ? 1 : int(p.KD);
    const int Cog = int(p.Cog);
    const int total = int(p.N * p.C_out * p.OD * p.OH * p.OW);
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const gc_coords_of<int> at = gc_split_index<int>(idx, int(p.C_out), int(p.OD),
                                                         int(p.OH), int(p.OW), p.channels_last);
        const T* xc = x + at.n * p.xs_n + (at.c / Cog) * p.xs_c;
        const T* wk = w + (long long)at.c * kd_n * kh_n * kw_n;
        const int d0 = at.d * int(p.SD) - int(p.PD), h0 = at.h * int(p.SH) - int(p.PH);
        const int w0 = at.w * int(p.SW) - int(p.PW);
        acc_t sum = num::zero();
        for (int kd = 0; kd < kd_n; ++kd) {
            const int id = d0 + kd * int(p.DD);
            if ((unsigned)id >= (unsigned)p.ID) continue;
#pragma unroll
            for (int kh = 0; kh < (FIXED ? KH_ : kh_n); ++kh) {
                const int ih = h0 + kh * int(p.DH);
                if ((unsigned)ih >= (unsigned)p.IH) continue;
                const T* xrow = xc + id * p.xs_d + ih * p.xs_h;
                const T* wrow = wk + (kd * kh_n + kh) * kw_n;
#pragma unroll
                for (int kw = 0; kw < (FIXED ? KW_ : kw_n); ++kw) {
                    const int iw = w0 + kw * int(p.DW);
                    if ((unsigned)iw >= (unsigned)p.IW) continue;
                    sum = gc_madd(sum, num::load(xrow[iw * p.xs_w]), num::load(wrow[kw]));
                }
            }
        }
        if (p.has_bias) sum = sum + num::load(bias[at.c]);
        y[at.n * p.ys_n + at.c * p.ys_c + at.d * p.ys_d + at.h * p.ys_h + at.w * p.ys_w] =
            num::store(gc_activate<ACT>(sum));
    }
}

// The same convolution for a channels-first output and a fixed kernel size (KH_ x KW_, depth
// 1): each thread computes OUT_W = 4 neighbouring outputs of one output row. The index
// arithmetic (four 32-bit divisions) and the kernel's taps (held in registers) are paid once per
// 4 outputs instead of once per output, and for stride 1 and no dilation the OUT_W + KW_ - 1
// input elements of each kernel row are read once into registers and reused by the 4 outputs.
// Neighbouring threads take neighbouring runs of 4 outputs, so a warp reads and writes 128
// consecutive elements of a row. Each output is summed in the order kh, kw over the taps inside
// the input, as conv_depthwise and conv_direct sum it.
template <typename T, int ACT, int KH_, int KW_>
__global__ void conv_depthwise_rows(const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ bias, T* __restrict__ y,
                                    const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    static_assert(KH_ > 0 && KW_ > 0, "a fixed kernel size");
    constexpr int OUT_W = 4, SPAN = OUT_W + KW_ - 1;  // inputs a kernel row spans at stride 1
    const int OW = int(p.OW), OH = int(p.OH), OD = int(p.OD), C = int(p.C_out);
    const int runs = (OW + OUT_W - 1) / OUT_W;  // runs of OUT_W outputs a row
    const int total = int(p.N * p.C_out * p.OD * p.OH) * runs;
    const int Cog = int(p.Cog), SW = int(p.SW), DW = int(p.DW), IW = int(p.IW);
    const bool unit = SW == 1 && DW == 1;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        // (n, co, od, oh, run): the run of the row plays the width's part
        const gc_coords_of<int> at = gc_split_index<int>(idx, C, OD, OH, runs, false);
        const int run = at.w, oh = at.h, od = at.d, co = at.c, n = at.n;
        const int id = od * int(p.SD) - int(p.PD);
        const int ow0 = run * OUT_W;
        acc_t sum[OUT_W];
#pragma unroll
        for (int o = 0; o < OUT_W; ++o) sum[o] = num::zero();
        if ((unsigned)id < (unsigned)p.ID) {
            const T* xc = x + n * p.xs_n + (co / Cog) * p.xs_c + id * p.xs_d;
            const T* wk = w + (long long)co * KH_ * KW_;
            const int h0 = oh * int(p.SH) - int(p.PH), w0 = ow0 * SW - int(p.PW);
#pragma unroll
            for (int kh = 0; kh < KH_; ++kh) {
                const int ih = h0 + kh * int(p.DH);
                if ((unsigned)ih >= (unsigned)p.IH) continue;
                const T* xrow = xc + ih * p.xs_h;
                acc_t tap[KW_];
#pragma unroll
                for (int kw = 0; kw < KW_; ++kw) tap[kw] = num::load(wk[kh * KW_ + kw]);
                if (unit) {
                    acc_t v[SPAN];
                    bool inside[SPAN];
#pragma unroll
                    for (int j = 0; j < SPAN; ++j) {
                        inside[j] = (unsigned)(w0 + j) < (unsigned)IW;
                        v[j] = inside[j] ? num::load(xrow[(w0 + j) * p.xs_w]) : num::zero();
                    }
#pragma unroll
                    for (int o = 0; o < OUT_W; ++o)
#pragma unroll
                        for (int kw = 0; kw < KW_; ++kw)
                            if (inside[o + kw]) sum[o] = gc_madd(sum[o], v[o + kw], tap[kw]);
                } else {
#pragma unroll
                    for (int o = 0; o < OUT_W; ++o)
#pragma unroll
                        for (int kw = 0; kw < KW_; ++kw) {
                            const int iw = w0 + o * SW + kw * DW;
                            if ((unsigned)iw < (unsigned)IW)
                                sum[o] = gc_madd(sum[o], num::load(xrow[iw * p.xs_w]), tap[kw]);
                        }
                }
            }
        }
        const acc_t b = p.has_bias ? num::load(bias[co]) : num::zero();
        T* yrow = y + n * p.ys_n + co * p.ys_c + od * p.ys_d + oh * p.ys_h;
#pragma unroll
        for (int o = 0; o < OUT_W; ++o) {
            if (ow0 + o >= OW) break;
            const acc_t v = p.has_bias ? sum[o] + b : sum[o];
            yrow[(ow0 + o) * p.ys_w] = num::store(gc_activate<ACT>(v));
        }
    }
}

// Threads of a conv_depthwise_tile block and the bytes of its input tile, and the most planes
// a block takes (kernels.DEPTHWISE_TILE_THREADS, DEPTHWISE_TILE_BYTES, DEPTHWISE_TILE_PLANES).
#define GC_DW_TILE_THREADS 256
#define GC_DW_TILE_BYTES 16384
#define GC_DW_TILE_PLANES 32

// The sum over a KH_ x KW_ window of conv_depthwise_tile's shared tile, in the order kh, kw:
// tap (kh, kw) at src[kh * row + kw * col] times taps[kh * KW_ + kw] (registers or shared
// memory; inlined and unrolled, a register array stays in registers).
template <int KH_, int KW_, typename A>
__device__ __forceinline__ A gc_window_sum(const A* src, int row, int col, const A* taps) {
    A sum = gc_num<A>::zero();
#pragma unroll
    for (int kh = 0; kh < KH_; ++kh)
#pragma unroll
        for (int kw = 0; kw < KW_; ++kw)
            sum = gc_madd(sum, src[kh * row + kw * col], taps[kh * KW_ + kw]);
    return sum;
}

// The same convolution through a shared-memory tile (algorithm "depthwise_tile"), for a fixed
// kernel size (KH_ x KW_, depth 1). A block computes a tile of `tile_h` x `tile_w` outputs of
// `planes` consecutive planes (n, co, od) (several planes only where a tile is a whole plane).
// Its warps first copy the input the tile reads (tile_h rows by tile_w columns of windows with
// their stride, dilation and zero padding) into shared memory as accumulator values, a warp a
// row, its lanes consecutive elements of the row: each input element crosses global memory
// once, but for the KH_ - 1 rows a tile shares with the next. Then each thread takes outputs
// tid, tid + THREADS, ... of the tile in the output's order (consecutive threads consecutive
// outputs of a row: the stores coalesce, the shared-memory reads have no bank conflicts at
// stride 1) and sums its KH_ x KW_ taps from shared memory in the order kh, kw. Taps over the
// padding read zeros from the tile, so every output sums all taps; a product with a zero adds
// nothing (0 x inf is NaN, as in the CPU path's zero-padded copies). A block of one plane holds its filter's taps in registers, one of several planes
// reads them from shared memory; stride and dilation 1 get their own loop (the taps' offsets
// in the tile are then constants but for the row pitch). The host (kernels.depthwise_tile)
// chooses tiles whose input fits GC_DW_TILE_BYTES. Coordinates are 32-bit (inputs and outputs
// of fewer than 2^30 elements), addresses 64-bit.
template <typename T, int ACT, int KH_, int KW_>
__global__ void __launch_bounds__(GC_DW_TILE_THREADS)
conv_depthwise_tile(const T* __restrict__ x, const T* __restrict__ w,
                    const T* __restrict__ bias, T* __restrict__ y, const gc_conv p,
                    long long planes_a_block, long long tile_h, long long tile_w) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    static_assert(KH_ > 0 && KW_ > 0, "a fixed kernel size");
    constexpr int THREADS = GC_DW_TILE_THREADS, WARPS = THREADS / 32, TAPS = KH_ * KW_;
    __shared__ __align__(16) unsigned char raw[GC_DW_TILE_BYTES];
    __shared__ __align__(16) unsigned char raw_taps[GC_DW_TILE_PLANES * TAPS * sizeof(acc_t)];
    __shared__ long long x_at[GC_DW_TILE_PLANES], y_at[GC_DW_TILE_PLANES];  // plane offsets
    __shared__ int tap_at[GC_DW_TILE_PLANES];  // the plane's filter's first tap, -1: no plane
    __shared__ int x_in[GC_DW_TILE_PLANES];    // 0: the plane reads only zeros (x_at unset)
    acc_t* tile = reinterpret_cast<acc_t*>(raw);
    acc_t* taps = reinterpret_cast<acc_t*>(raw_taps);  // [plane][tap], for several planes

    const int PT = int(planes_a_block), BH = int(tile_h), BW = int(tile_w);
    const int SH = int(p.SH), SW = int(p.SW), DH = int(p.DH), DW = int(p.DW);
    const int TH = (BH - 1) * SH + (KH_ - 1) * DH + 1;  // input rows and columns of the tile
    const int TW = (BW - 1) * SW + (KW_ - 1) * DW + 1;
    if (PT > GC_DW_TILE_PLANES || (long long)PT * TH * TW * (long long)sizeof(acc_t) >
        GC_DW_TILE_BYTES)
        return;  // the host never asks for this: the output stays as it was (poisoned in tests)
    const int OD = int(p.OD), OH = int(p.OH), OW = int(p.OW), C = int(p.C_out);
    const int planes = int(p.N) * C * OD;
    const int tiles_w = (OW + BW - 1) / BW, tiles_h = (OH + BH - 1) / BH;
    int b = blockIdx.x;  // (plane group, tile row, tile column)
    const int tw_i = b % tiles_w;
    b /= tiles_w;
    const int th_i = b % tiles_h;
    const int plane0 = (b / tiles_h) * PT;
    const int oh0 = th_i * BH, ow0 = tw_i * BW;
    const int ih0 = oh0 * SH - int(p.PH), iw0 = ow0 * SW - int(p.PW);

    const int tid = threadIdx.x;
    if (tid < PT) {
        const int plane = plane0 + tid;
        const int od = plane % OD, nc = plane / OD;
        const int co = nc % C, n = nc / C;
        const int id = od * int(p.SD) - int(p.PD);
        const bool real = plane < planes;
        tap_at[tid] = real ? co * TAPS : -1;
        // past the last plane, or a depth row of padding: zeros (offsets may be negative:
        // strides of views may be)
        x_in[tid] = real && (unsigned)id < (unsigned)p.ID;
        x_at[tid] = n * p.xs_n + (co / int(p.Cog)) * p.xs_c + id * p.xs_d;
        y_at[tid] = n * p.ys_n + co * p.ys_c + od * p.ys_d;
    }
    __syncthreads();

    // the input tile: tile[pt][r][c] = x[plane0 + pt][ih0 + r][iw0 + c], zero outside x; warp
    // `warp` copies rows warp, warp + WARPS, ... of the PT * TH
    const int IH = int(p.IH), IW = int(p.IW);
    const int lane = tid % 32, warp = tid / 32;
    int pt = 0, r = warp;
    while (r >= TH) { r -= TH; ++pt; }
    for (int row = warp; row < PT * TH; row += WARPS) {
        const int ih = ih0 + r;
        const bool row_in = x_in[pt] && (unsigned)ih < (unsigned)IH;
        const long long at = x_at[pt] + ih * p.xs_h;
        acc_t* dst = tile + row * TW;
        for (int c = lane; c < TW; c += 32) {
            const int iw = iw0 + c;
            dst[c] = row_in && (unsigned)iw < (unsigned)IW ? num::load(x[at + iw * p.xs_w])
                                                           : num::zero();
        }
        r += WARPS;
        while (r >= TH) { r -= TH; ++pt; }
    }
    if (PT > 1) {  // the planes' taps, for the loop over several planes
        for (int i = tid; i < PT * TAPS; i += THREADS) {
            const int first = tap_at[i / TAPS];
            taps[i] = first >= 0 ? num::load(w[first + i % TAPS]) : num::zero();
        }
    }
    __syncthreads();

    // outputs tid, tid + THREADS, ... of the tile: (pt, r, q) in the radix (PT, BH, BW)
    const bool has_bias = p.has_bias != 0;
    const int outs = PT * BH * BW;
    const int rows_ok = OH - oh0 < BH ? OH - oh0 : BH;  // of the tile, inside the output
    const int cols_ok = OW - ow0 < BW ? OW - ow0 : BW;
    // one plane: its taps in registers, pointers stepped. Called with constant strides and
    // dilations (1) or the layer's; not a generic lambda, which NVRTC 12 takes for a host
    // function ("host functions are not allowed in JIT mode").
    auto sums = [&](const int sh, const int sw, const int dh, const int dw) {
        const int first = tap_at[0];
        acc_t mine[TAPS];
#pragma unroll
        for (int t = 0; t < TAPS; ++t) mine[t] = num::load(w[first + t]);
        const acc_t b0 = has_bias ? num::load(bias[first / TAPS]) : num::zero();
        const long long ys_h = p.ys_h, ys_w = p.ys_w;
        int q = tid % BW, r = tid / BW;
        const int s_q = THREADS % BW, s_r = THREADS / BW;  // the step, and its carry below
        const acc_t* src = tile + r * sh * TW + q * sw;
        long long at = y_at[0] + (oh0 + r) * ys_h + (ow0 + q) * ys_w;
        const int src_step = s_r * sh * TW + s_q * sw, src_carry = sh * TW - BW * sw;
        const long long y_step = s_r * ys_h + s_q * ys_w, y_carry = ys_h - BW * ys_w;
        for (int o = tid; o < outs; o += THREADS) {
            if (r < rows_ok && q < cols_ok) {
                acc_t sum = gc_window_sum<KH_, KW_>(src, dh * TW, dw, mine);
                if (has_bias) sum = sum + b0;
                y[at] = num::store(gc_activate<ACT>(sum));
            }
            q += s_q, r += s_r, src += src_step, at += y_step;
            if (q >= BW) q -= BW, ++r, src += src_carry, at += y_carry;
        }
    };
    if (PT == 1) {
        if (tap_at[0] < 0) return;  // no plane (the host never launches such a block)
        if (SH == 1 && SW == 1 && DH == 1 && DW == 1)
            sums(1, 1, 1, 1);
        else
            sums(SH, SW, DH, DW);
        return;
    }
    // several whole planes (rows_ok == BH, cols_ok == BW): each output's taps from shared memory
    gc_mixed_place at;  // (pt, -, r, q), stepped by THREADS
    at.start<int>(tid, THREADS, 1, BH, BW);
    for (int o = tid; o < outs; o += THREADS) {
        const int first = tap_at[at.hi];
        if (first >= 0) {
            const acc_t* src = tile + (at.hi * TH + at.h * SH) * TW + at.w * SW;
            acc_t sum = gc_window_sum<KH_, KW_>(src, DH * TW, DW, taps + at.hi * TAPS);
            if (has_bias) sum = sum + num::load(bias[first / TAPS]);
            y[y_at[at.hi] + (oh0 + at.h) * p.ys_h + (ow0 + at.w) * p.ys_w] =
                num::store(gc_activate<ACT>(sum));
        }
        at.advance(1, BH, BW);
    }
}

// Threads of a conv_depthwise_filter_grad block (kernels.DEPTHWISE_FILTER_GRAD_THREADS).
#define GC_DW_FG_THREADS 256

// The filter gradient of a depthwise layer, first stage, for a fixed kernel size (KH_ x KW_,
// depth 1): dw[co, 0, kh, kw] = sum over the positions m = (n, od, oh, ow) of
// conj(x[n, ci, od*SD - PD, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]) * g[n, co, od, oh, ow],
// ci = co / Cog. Block (co, r) sums positions r*chunk ... of filter co: its threads take the
// chunk's positions in turn (neighbouring threads neighbouring positions, so reads of
// channels-first x and g coalesce, and the taps of neighbouring windows hit the same lines),
// each summing all KH_ x KW_ taps in registers in the order of its positions; the block then
// adds its threads' sums by a fixed tree in shared memory into partial[r, co * KH_*KW_ + tap],
// and sum_partials (conv_adjoint.cu) adds the chunks in order: the same result run after run.
// (The general partial-sum kernel gives each thread one tap of one filter, and with the taps
// fastest a warp's threads read ~4 channels' planes; it split every position with four 64-bit
// divisions.) Positions, coordinates and element offsets are 32-bit (see below; positions:
// the host takes this kernel only where x and g have fewer than 2^30 elements).
template <typename T, int KH_, int KW_>
__global__ void __launch_bounds__(GC_DW_FG_THREADS)
conv_depthwise_filter_grad(const T* __restrict__ x, const T* __restrict__ g,
                           typename gc_num<T>::acc* __restrict__ partial, long long R,
                           long long chunk, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    static_assert(KH_ > 0 && KW_ > 0, "a fixed kernel size");
    constexpr int TAPS = KH_ * KW_, THREADS = GC_DW_FG_THREADS;
    // taps reduced together: their shared rows stay within 16 KiB
    constexpr int FIT = 16384 / (THREADS * int(sizeof(acc_t)));
    constexpr int PASS = FIT < 1 ? 1 : (FIT < TAPS ? FIT : TAPS);
    __shared__ acc_t red[PASS][THREADS];

    const int tid = threadIdx.x;
    const long long co = blockIdx.x, r = blockIdx.y;
    const int M = int(p.N * p.OD * p.OH * p.OW);
    const int first = int(r * chunk);
    const int end = first + chunk < M ? int(first + chunk) : M;
    const T* xc = x + (co / p.Cog) * p.xs_c;
    const T* gc = g + co * p.ys_c;
#ifdef __CUDA_ARCH__
    // held in registers: left to itself, ptxas rebuilt both 64-bit pointers (a 64-bit
    // multiply and a constant load) at every tap's load
    asm volatile("" : "+l"(xc), "+l"(gc));
#endif
    const int ID = int(p.ID), IH = int(p.IH), IW = int(p.IW);

    // 32-bit element offsets from x's channel and g's filter: the host takes this kernel only
    // where every offset of x's windows (padding included) and of g fits an int
    // (cuda.depthwise_filter_grad_offsets_fit). Each kernel row's and column's offset from a
    // window's corner, and the place its taps reach, are held in registers.
    const int xs_n = int(p.xs_n), xs_d = int(p.xs_d), xs_h = int(p.xs_h), xs_w = int(p.xs_w);
    const int ys_n = int(p.ys_n), ys_d = int(p.ys_d), ys_h = int(p.ys_h), ys_w = int(p.ys_w);
    const int SD = int(p.SD), SH = int(p.SH), SW = int(p.SW);
    const int PD = int(p.PD), PH = int(p.PH), PW = int(p.PW);
    int row_off[KH_], col_off[KW_], row_at[KH_], col_at[KW_];
#pragma unroll
    for (int kh = 0; kh < KH_; ++kh) {
        row_at[kh] = kh * int(p.DH);
        row_off[kh] = row_at[kh] * xs_h;
    }
#pragma unroll
    for (int kw = 0; kw < KW_; ++kw) {
        col_at[kw] = kw * int(p.DW);
        col_off[kw] = col_at[kw] * xs_w;
    }

    acc_t acc[TAPS];
#pragma unroll
    for (int t = 0; t < TAPS; ++t) acc[t] = num::zero();
    if (first + tid < end) {
        gc_mixed_place at;  // position m as (n, od, oh, ow), stepped by THREADS
        at.start<int>(first + tid, THREADS, int(p.OD), int(p.OH), int(p.OW));
        for (int m = first + tid; m < end; m += THREADS) {
            const acc_t gv = num::load(gc[at.hi * ys_n + at.d * ys_d + at.h * ys_h + at.w * ys_w]);
            const int d0 = at.d * SD - PD, h0 = at.h * SH - PH, w0 = at.w * SW - PW;
            const int corner = at.hi * xs_n + d0 * xs_d + h0 * xs_h + w0 * xs_w;
            const bool depth_ok = (unsigned)d0 < (unsigned)ID;
#pragma unroll
            for (int kh = 0; kh < KH_; ++kh) {
                if (!depth_ok || (unsigned)(h0 + row_at[kh]) >= (unsigned)IH) continue;
                const int row = corner + row_off[kh];
#pragma unroll
                for (int kw = 0; kw < KW_; ++kw) {
                    if ((unsigned)(w0 + col_at[kw]) < (unsigned)IW)
                        acc[kh * KW_ + kw] = gc_madd(
                            acc[kh * KW_ + kw], gc_conj(num::load(xc[row + col_off[kw]])), gv);
                }
            }
            at.advance(p.OD, p.OH, p.OW);
        }
    }

    const long long E = p.C_out * TAPS;
#pragma unroll
    for (int t0 = 0; t0 < TAPS; t0 += PASS) {
#pragma unroll
        for (int j = 0; j < PASS; ++j)
            if (t0 + j < TAPS) red[j][tid] = acc[t0 + j];
        __syncthreads();
        for (int s = THREADS / 2; s > 0; s >>= 1) {  // a fixed tree: the same sums each run
            if (tid < s) {
#pragma unroll
                for (int j = 0; j < PASS; ++j) red[j][tid] = red[j][tid] + red[j][tid + s];
            }
            __syncthreads();
        }
        if (tid < PASS && t0 + tid < TAPS) partial[r * E + co * TAPS + t0 + tid] = red[tid][0];
        __syncthreads();  // read before the next pass overwrites
    }
}
