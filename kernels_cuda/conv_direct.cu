// Direct N-D multi-channel convolution (cross-correlation; true convolution is the same call with
// the filters flipped on the host).
//
// One thread computes one output element y[n, co, od, oh, ow]: the sum, over the C_in/groups
// kernels of filter co, of each kernel correlated with its input channel, plus the bias, through
// the activation. All filters and the whole batch are one launch, a grid-stride loop over the
// output. 1-D and 2-D calls are 3-D calls with unit leading spatial dims.
//
// Sizes and strides arrive as one gc_conv (gpuconv_params.cuh). x and y are addressed through
// element strides (64-bit, possibly negative), so channels-first and channels-last layouts and
// non-contiguous inputs need no copy. Zero padding is done here by skipping taps that fall
// outside the input; other padding modes arrive pre-padded. The filters are contiguous
// (C_out, C_in/groups, KD, KH, KW). All index arithmetic is 64-bit.
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"
#include "gpuconv_types.cuh"

template <typename T, int ACT>
__global__ void conv_direct(const T* __restrict__ x, const T* __restrict__ w,
                            const T* __restrict__ bias, T* __restrict__ y, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long total = p.N * p.C_out * p.OD * p.OH * p.OW;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        // neighbouring threads store neighbouring elements of y in either layout
        const gc_coords at = gc_split_index(idx, p.C_out, p.OD, p.OH, p.OW, p.channels_last);
        const long long n = at.n, co = at.c, od = at.d, oh = at.h, ow = at.w;
        const long long g = co / p.Cog;
        const long long taps = p.KD * p.KH * p.KW;
        const T* xg = x + n * p.xs_n + g * p.Cg * p.xs_c;
        const T* wf = w + co * p.Cg * taps;  // filter co: Cg kernels of KD*KH*KW taps
        const long long d0 = od * p.SD - p.PD, h0 = oh * p.SH - p.PH, w0 = ow * p.SW - p.PW;
        acc_t sum = num::zero();
        for (long long c = 0; c < p.Cg; ++c) {
            const T* xc = xg + c * p.xs_c;
            const T* wk = wf + c * taps;
            for (long long kd = 0; kd < p.KD; ++kd) {
                const long long id = d0 + kd * p.DD;
                if (id < 0 || id >= p.ID) continue;
                for (long long kh = 0; kh < p.KH; ++kh) {
                    const long long ih = h0 + kh * p.DH;
                    if (ih < 0 || ih >= p.IH) continue;
                    const T* xrow = xc + id * p.xs_d + ih * p.xs_h;
                    const T* wrow = wk + (kd * p.KH + kh) * p.KW;
                    for (long long kw = 0; kw < p.KW; ++kw) {
                        const long long iw = w0 + kw * p.DW;
                        if (iw < 0 || iw >= p.IW) continue;
                        sum = gc_madd(sum, num::load(xrow[iw * p.xs_w]), num::load(wrow[kw]));
                    }
                }
            }
        }
        if (p.has_bias) sum = sum + num::load(bias[co]);
        y[n * p.ys_n + co * p.ys_c + od * p.ys_d + oh * p.ys_h + ow * p.ys_w] =
            num::store(gc_activate<ACT>(sum));
    }
}

// Direct convolution for groups of few filters (C_out/groups <= CO, a template constant):
// each thread computes OUT_W = 4 neighbouring outputs of one output row for every filter of
// its group. Each input element it loads feeds all of the group's filters and each weight all
// 4 outputs, where conv_direct loads both for one multiply-add, and the implicit GEMM's tiles
// (8 filters wide at the least) would mostly multiply zeros: this is for the data gradient of
// 1-3-channel layers (their stride phases are convs with 1-3 filters) and for forward layers
// with few outputs. Neighbouring threads take neighbouring runs of a row. The loop index and
// the coordinates are 32-bit (the host launches this kernel only for x and y of fewer than
// 2^30 elements: algorithms.why_not); addresses are 64-bit. Each output sums its filter's
// terms in the order (c, kd, kh, kw) over the taps inside the input, as conv_direct does.
#define GC_FEW_FILTERS_RUN 4

template <typename T, int ACT, int CO>
__global__ void conv_few_filters(const T* __restrict__ x, const T* __restrict__ w,
                                 const T* __restrict__ bias, T* __restrict__ y,
                                 const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    constexpr int OUT_W = GC_FEW_FILTERS_RUN;
    const int OW = int(p.OW), OH = int(p.OH), OD = int(p.OD), G = int(p.groups);
    const int runs = (OW + OUT_W - 1) / OUT_W;  // runs of OUT_W outputs a row
    const int total = int(p.N) * G * OD * OH * runs;
    const int Cog = int(p.Cog), Cg = int(p.Cg);
    const int KD = int(p.KD), KH = int(p.KH), KW = int(p.KW);
    const int ID = int(p.ID), IH = int(p.IH), IW = int(p.IW);
    const int SW = int(p.SW), DW = int(p.DW);
    const long long filter_len = (long long)Cg * KD * KH * KW;  // terms of one filter
    // loop invariants held in registers: each filter's offset from the group's first, and
    // the x steps from one output of a run to the next and from one tap of a row to the next
    long long f_off[CO];
#pragma unroll
    for (int f = 0; f < CO; ++f) f_off[f] = f * filter_len;
    const long long step_o = SW * p.xs_w, step_kw = DW * p.xs_w;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        // (n, group, od, oh, run): the run of the row plays the width's part
        const gc_coords_of<int> at = gc_split_index<int>(idx, G, OD, OH, runs, false);
        const int n = at.n, grp = at.c, od = at.d, oh = at.h, ow0 = at.w * OUT_W;
        const int d0 = od * int(p.SD) - int(p.PD), h0 = oh * int(p.SH) - int(p.PH);
        const int w0 = ow0 * SW - int(p.PW);
        const T* xg = x + n * p.xs_n + (long long)grp * Cg * p.xs_c + w0 * p.xs_w;
        const T* wg = w + (long long)grp * Cog * filter_len;
#ifdef __CUDA_ARCH__
        // held in registers: left to itself, ptxas rebuilds 64-bit pointers at each load
        asm volatile("" : "+l"(xg), "+l"(wg));
#endif
        acc_t sum[CO][OUT_W];
#pragma unroll
        for (int f = 0; f < CO; ++f)
#pragma unroll
            for (int o = 0; o < OUT_W; ++o) sum[f][o] = num::zero();
        for (int c = 0; c < Cg; ++c) {
            for (int kd = 0; kd < KD; ++kd) {
                const int id = d0 + kd * int(p.DD);
                if ((unsigned)id >= (unsigned)ID) continue;
                for (int kh = 0; kh < KH; ++kh) {
                    const int ih = h0 + kh * int(p.DH);
                    if ((unsigned)ih >= (unsigned)IH) continue;
                    // tap 0 of the run's first output, and of each filter
                    const T* xk = xg + c * p.xs_c + id * p.xs_d + ih * p.xs_h;
                    const T* wk = wg + ((c * KD + kd) * KH + kh) * KW;
                    int iw = w0;
                    for (int kw = 0; kw < KW; ++kw, iw += DW, xk += step_kw, ++wk) {
                        acc_t v[OUT_W];
                        bool inside[OUT_W];
#pragma unroll
                        for (int o = 0; o < OUT_W; ++o) {
                            inside[o] = (unsigned)(iw + o * SW) < (unsigned)IW;
                            v[o] = inside[o] ? num::load(xk[o * step_o]) : num::zero();
                        }
#pragma unroll
                        for (int f = 0; f < CO; ++f) {
                            if (f >= Cog) break;
                            const acc_t wv = num::load(wk[f_off[f]]);
#pragma unroll
                            for (int o = 0; o < OUT_W; ++o)
                                if (inside[o]) sum[f][o] = gc_madd(sum[f][o], v[o], wv);
                        }
                    }
                }
            }
        }
        T* yrow = y + n * p.ys_n + (long long)grp * Cog * p.ys_c + od * p.ys_d + oh * p.ys_h;
#pragma unroll
        for (int f = 0; f < CO; ++f) {
            if (f >= Cog) break;
            const acc_t b = p.has_bias ? num::load(bias[grp * Cog + f]) : num::zero();
#pragma unroll
            for (int o = 0; o < OUT_W; ++o) {
                if (ow0 + o >= OW) break;
                const acc_t v = p.has_bias ? sum[f][o] + b : sum[f][o];
                yrow[f * p.ys_c + (ow0 + o) * p.ys_w] = num::store(gc_activate<ACT>(v));
            }
        }
    }
}
