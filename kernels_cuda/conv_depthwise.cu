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
// Same arguments as conv_direct (Cg is 1 and unused).
#include "gpuconv_index.cuh"
#include "gpuconv_types.cuh"

template <typename T, int ACT, int KH_, int KW_>
__global__ void conv_depthwise(const T* __restrict__ x, const T* __restrict__ w,
                               const T* __restrict__ bias, T* __restrict__ y,
                               int has_bias, int co_fastest,
                               long long N, long long C_out, long long groups, long long Cg,
                               long long ID, long long IH, long long IW,
                               long long OD, long long OH, long long OW,
                               long long KD, long long KH, long long KW,
                               long long SD, long long SH, long long SW,
                               long long PD, long long PH, long long PW,
                               long long DD, long long DH, long long DW,
                               long long xs_n, long long xs_c, long long xs_d, long long xs_h,
                               long long xs_w,
                               long long ys_n, long long ys_c, long long ys_d, long long ys_h,
                               long long ys_w) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    constexpr bool FIXED = KH_ > 0 && KW_ > 0;  // then KD == 1 (the Python side checks)
    const int kh_n = FIXED ? KH_ : int(KH), kw_n = FIXED ? KW_ : int(KW);
    const int kd_n = FIXED ? 1 : int(KD);
    const int Cog = int(C_out / groups);
    const int total = int(N * C_out * OD * OH * OW);
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += gridDim.x * blockDim.x) {
        const gc_coords_of<int> p =
            gc_split_index<int>(idx, int(C_out), int(OD), int(OH), int(OW), co_fastest);
        const T* xc = x + p.n * xs_n + (p.c / Cog) * xs_c;
        const T* wk = w + (long long)p.c * kd_n * kh_n * kw_n;
        const int d0 = p.d * int(SD) - int(PD), h0 = p.h * int(SH) - int(PH);
        const int w0 = p.w * int(SW) - int(PW);
        acc_t sum = num::zero();
        for (int kd = 0; kd < kd_n; ++kd) {
            const int id = d0 + kd * int(DD);
            if ((unsigned)id >= (unsigned)ID) continue;
#pragma unroll
            for (int kh = 0; kh < (FIXED ? KH_ : kh_n); ++kh) {
                const int ih = h0 + kh * int(DH);
                if ((unsigned)ih >= (unsigned)IH) continue;
                const T* xrow = xc + id * xs_d + ih * xs_h;
                const T* wrow = wk + (kd * kh_n + kh) * kw_n;
#pragma unroll
                for (int kw = 0; kw < (FIXED ? KW_ : kw_n); ++kw) {
                    const int iw = w0 + kw * int(DW);
                    if ((unsigned)iw >= (unsigned)IW) continue;
                    sum = gc_madd(sum, num::load(xrow[iw * xs_w]), num::load(wrow[kw]));
                }
            }
        }
        if (has_bias) sum = sum + num::load(bias[p.c]);
        y[p.n * ys_n + p.c * ys_c + p.d * ys_d + p.h * ys_h + p.w * ys_w] =
            num::store(gc_activate<ACT>(sum));
    }
}
