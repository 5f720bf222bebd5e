// The adjoints of the direct convolution (conv_direct.cu), for the backward pass and for
// transposed convolution. Both are deterministic: every output element is a sum in a fixed order,
// with no atomics, so the same inputs give bit-identical results run after run.
//
// Shapes and strides are those of the *forward* conv: x is (N, C_in, ID, IH, IW), y (its output,
// here the incoming gradient g) is (N, C_out, OD, OH, OW), filters are contiguous
// (C_out, C_in/groups, KD, KH, KW). 1-D and 2-D calls have unit leading spatial dims.
#include "gpuconv_index.cuh"
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
                                  int has_bias, int ci_fastest,
                                  long long N, long long C_in, long long groups, long long Cog,
                                  long long ID, long long IH, long long IW,
                                  long long OD, long long OH, long long OW,
                                  long long KD, long long KH, long long KW,
                                  long long SD, long long SH, long long SW,
                                  long long PD, long long PH, long long PW,
                                  long long DD, long long DH, long long DW,
                                  long long gs_n, long long gs_c, long long gs_d, long long gs_h,
                                  long long gs_w,
                                  long long xs_n, long long xs_c, long long xs_d, long long xs_h,
                                  long long xs_w) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long Cg = C_in / groups;
    const long long total = N * C_in * ID * IH * IW;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const gc_coords p = gc_split_index(idx, C_in, ID, IH, IW, ci_fastest);
        const long long n = p.n, ci = p.c, id = p.d, ih = p.h, iw = p.w;
        const long long grp = ci / Cg, c = ci % Cg;
        acc_t sum = num::zero();
        for (long long j = 0; j < Cog; ++j) {
            const long long co = grp * Cog + j;
            const T* gc = g + n * gs_n + co * gs_c;
            const T* wk = w + (co * Cg + c) * KD * KH * KW;
            for (long long kd = 0; kd < KD; ++kd) {
                const long long td = id + PD - kd * DD;  // = od * SD
                if (td < 0 || td % SD) continue;
                const long long od = td / SD;
                if (od >= OD) continue;
                for (long long kh = 0; kh < KH; ++kh) {
                    const long long th = ih + PH - kh * DH;
                    if (th < 0 || th % SH) continue;
                    const long long oh = th / SH;
                    if (oh >= OH) continue;
                    for (long long kw = 0; kw < KW; ++kw) {
                        const long long tw = iw + PW - kw * DW;
                        if (tw < 0 || tw % SW) continue;
                        const long long ow = tw / SW;
                        if (ow >= OW) continue;
                        acc_t wv = num::load(wk[(kd * KH + kh) * KW + kw]);
                        if (CONJ) wv = gc_conj(wv);
                        sum = gc_madd(sum, num::load(gc[od * gs_d + oh * gs_h + ow * gs_w]), wv);
                    }
                }
            }
        }
        if (has_bias) sum = sum + num::load(bias[ci]);
        dx[n * xs_n + ci * xs_c + id * xs_d + ih * xs_h + iw * xs_w] = num::store(sum);
    }
}

// First stage of the filter gradient dw[co, c, k] = sum over n and output positions o of
// conj(x[n, group(co) start + c, o*stride + k*dilation - pad]) * g[n, co, o].
// The M = N*OD*OH*OW terms of each filter element are split into R chunks of `chunk` terms;
// thread (r, e) sums chunk r of element e in order into partial[r, e] (e runs over
// C_out*Cg*KD*KH*KW, fastest, so a warp shares g's values and reads neighbouring taps of x).
template <typename T>
__global__ void conv_filter_grad_partial(const T* __restrict__ x, const T* __restrict__ g,
                                         typename gc_num<T>::acc* __restrict__ partial,
                                         long long R, long long chunk,
                                         long long N, long long C_out, long long groups,
                                         long long Cg,
                                         long long ID, long long IH, long long IW,
                                         long long OD, long long OH, long long OW,
                                         long long KD, long long KH, long long KW,
                                         long long SD, long long SH, long long SW,
                                         long long PD, long long PH, long long PW,
                                         long long DD, long long DH, long long DW,
                                         long long xs_n, long long xs_c, long long xs_d,
                                         long long xs_h, long long xs_w,
                                         long long gs_n, long long gs_c, long long gs_d,
                                         long long gs_h, long long gs_w) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long E = C_out * Cg * KD * KH * KW;
    const long long M = N * OD * OH * OW;
    const long long Cog = C_out / groups;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < R * E;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long e = idx % E, part = idx / E;
        long long t = e;
        const long long kw = t % KW; t /= KW;
        const long long kh = t % KH; t /= KH;
        const long long kd = t % KD; t /= KD;
        const long long c = t % Cg; t /= Cg;
        const long long co = t;
        const long long ci = (co / Cog) * Cg + c;
        const long long m_end = (part + 1) * chunk < M ? (part + 1) * chunk : M;
        acc_t sum = num::zero();
        for (long long m = part * chunk; m < m_end; ++m) {
            long long q = m;
            const long long ow = q % OW; q /= OW;
            const long long oh = q % OH; q /= OH;
            const long long od = q % OD; q /= OD;
            const long long n = q;
            const long long id = od * SD + kd * DD - PD;
            const long long ih = oh * SH + kh * DH - PH;
            const long long iw = ow * SW + kw * DW - PW;
            if (id < 0 || id >= ID || ih < 0 || ih >= IH || iw < 0 || iw >= IW) continue;
            const acc_t xv = gc_conj(num::load(
                x[n * xs_n + ci * xs_c + id * xs_d + ih * xs_h + iw * xs_w]));
            sum = gc_madd(sum, xv, num::load(g[n * gs_n + co * gs_c + od * gs_d + oh * gs_h +
                                               ow * gs_w]));
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
