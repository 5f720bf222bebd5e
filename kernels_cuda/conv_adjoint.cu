// The adjoints of the direct convolution (conv_direct.cu), for the backward pass and for
// transposed convolution. Both are deterministic: every output element is a sum in a fixed order,
// with no atomics, so the same inputs give bit-identical results run after run.
//
// Shapes and strides (one gc_conv, gpuconv_params.cuh) are those of the *forward* conv: x is
// (N, C_in, ID, IH, IW), y (its output, here the incoming gradient g) is (N, C_out, OD, OH, OW),
// filters are contiguous (C_out, C_in/groups, KD, KH, KW). 1-D and 2-D calls have unit leading
// spatial dims.
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"
#include "gpuconv_types.cuh"

// dx[n, ci, i] = bias[ci] + sum over the filters co of ci's group and their taps k with
//                i = o*stride + k*dilation - pad for an output position o inside g:
//                g[n, co, o] * w[co, ci - group start, k]     (conjugated w when CONJ)
// One thread per element of dx (the gather form of the scatter that defines the transpose).
// CONJ=true is the Hermitian adjoint of x -> conv(x, w) (conv_input_grad); CONJ=false is the
// transposed convolution (conv_transpose, PyTorch's ConvTranspose), which also takes a bias.
template <typename T, bool CONJ>
__global__ void conv_data_adjoint(const T* __restrict__ g, const T* __restrict__ w,
                                  const T* __restrict__ bias, T* __restrict__ dx,
                                  const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long taps = p.KD * p.KH * p.KW;
    const long long total = p.N * p.C_in * p.ID * p.IH * p.IW;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const gc_coords at = gc_split_index(idx, p.C_in, p.ID, p.IH, p.IW, p.channels_last);
        const long long n = at.n, ci = at.c, id = at.d, ih = at.h, iw = at.w;
        const long long grp = ci / p.Cg, c = ci % p.Cg;
        acc_t sum = num::zero();
        for (long long j = 0; j < p.Cog; ++j) {
            const long long co = grp * p.Cog + j;
            const T* gc = g + n * p.ys_n + co * p.ys_c;
            const T* wk = w + (co * p.Cg + c) * taps;
            for (long long kd = 0; kd < p.KD; ++kd) {
                const long long td = id + p.PD - kd * p.DD;  // = od * SD
                if (td < 0 || td % p.SD) continue;
                const long long od = td / p.SD;
                if (od >= p.OD) continue;
                for (long long kh = 0; kh < p.KH; ++kh) {
                    const long long th = ih + p.PH - kh * p.DH;
                    if (th < 0 || th % p.SH) continue;
                    const long long oh = th / p.SH;
                    if (oh >= p.OH) continue;
                    for (long long kw = 0; kw < p.KW; ++kw) {
                        const long long tw = iw + p.PW - kw * p.DW;
                        if (tw < 0 || tw % p.SW) continue;
                        const long long ow = tw / p.SW;
                        if (ow >= p.OW) continue;
                        acc_t wv = num::load(wk[(kd * p.KH + kh) * p.KW + kw]);
                        if (CONJ) wv = gc_conj(wv);
                        sum = gc_madd(sum,
                                      num::load(gc[od * p.ys_d + oh * p.ys_h + ow * p.ys_w]), wv);
                    }
                }
            }
        }
        if (p.has_bias) sum = sum + num::load(bias[ci]);
        dx[n * p.xs_n + ci * p.xs_c + id * p.xs_d + ih * p.xs_h + iw * p.xs_w] = num::store(sum);
    }
}

// First stage of the filter gradient dw[co, c, k] = sum over n and output positions o of
// conj(x[n, group(co) start + c, o*stride + k*dilation - pad]) * g[n, co, o].
// The M = N*OD*OH*OW terms of each filter element are split into R chunks of `chunk` terms;
// thread (r, e) sums chunk r of element e in order into partial[r, e] (e runs over
// C_out*Cg*KD*KH*KW, fastest, so a warp shares g's values and reads neighbouring taps of x).
// g is output-shaped: p's y strides.
template <typename T>
__global__ void conv_filter_grad_partial(const T* __restrict__ x, const T* __restrict__ g,
                                         typename gc_num<T>::acc* __restrict__ partial,
                                         long long R, long long chunk, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long E = p.C_out * p.Cg * p.KD * p.KH * p.KW;
    const long long M = p.N * p.OD * p.OH * p.OW;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < R * E;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long e = idx % E, part = idx / E;
        long long t = e;
        const long long kw = t % p.KW; t /= p.KW;
        const long long kh = t % p.KH; t /= p.KH;
        const long long kd = t % p.KD; t /= p.KD;
        const long long c = t % p.Cg; t /= p.Cg;
        const long long co = t;
        const long long ci = (co / p.Cog) * p.Cg + c;
        const long long m_end = (part + 1) * chunk < M ? (part + 1) * chunk : M;
        acc_t sum = num::zero();
        for (long long m = part * chunk; m < m_end; ++m) {
            long long q = m;
            const long long ow = q % p.OW; q /= p.OW;
            const long long oh = q % p.OH; q /= p.OH;
            const long long od = q % p.OD; q /= p.OD;
            const long long n = q;
            const long long id = od * p.SD + kd * p.DD - p.PD;
            const long long ih = oh * p.SH + kh * p.DH - p.PH;
            const long long iw = ow * p.SW + kw * p.DW - p.PW;
            if (id < 0 || id >= p.ID || ih < 0 || ih >= p.IH || iw < 0 || iw >= p.IW) continue;
            const acc_t xv = gc_conj(num::load(
                x[n * p.xs_n + ci * p.xs_c + id * p.xs_d + ih * p.xs_h + iw * p.xs_w]));
            sum = gc_madd(sum, xv, num::load(g[n * p.ys_n + co * p.ys_c + od * p.ys_d +
                                               oh * p.ys_h + ow * p.ys_w]));
        }
        partial[part * E + e] = sum;
    }
}

// Second stage: dw[e] = sum over r of partial[r, e], in order r = 0, 1, ..., R-1.
template <typename T>
__global__ void sum_partials(const typename gc_num<T>::acc* __restrict__ partial,
                             T* __restrict__ out, long long R, long long E) {
    typedef gc_num<T> num;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < E;
         e += (long long)gridDim.x * blockDim.x) {
        typename num::acc sum = num::zero();
        for (long long r = 0; r < R; ++r) sum = sum + partial[r * E + e];
        out[e] = num::store(sum);
    }
}
