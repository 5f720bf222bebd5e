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
