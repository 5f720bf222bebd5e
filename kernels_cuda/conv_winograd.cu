// Winograd F(2x2, 3x3) for 2-D 3x3 convolutions of stride 1 and dilation 1, one group (Lavin and
// Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 tile of the output
// is A^T [ sum over channels c of (G g_c G^T) (elementwise) (B^T d_c B) ] A, where d_c is the
// 4x4 input patch under the tile and g_c the filter's 3x3 kernel of channel c. That is 16
// multiplies per tile and channel instead of 36: 2.25x fewer.
//
// Three steps, the middle one a batched matrix product done by the host (CuPy's matmul):
//   winograd_input:  V[k, c, q] = (B^T d_c B)[k] for the tiles q of a chunk, k = 4 i + j;
//   host:            M[k, f, q] = sum over c of U[k, f, c] V[k, c, q], with U = G g G^T;
//   winograd_output: y = A^T M A over each tile, plus the bias, through the activation.
// V and M are in the accumulator type (float for half). The tiles p = (n, th, tw) of the whole
// call are processed in chunks of tiles [p0, p0 + P) so that V and M stay within the host's
// workspace bound. x and y are addressed through element strides (any layout); zero padding
// comes from the bounds checks. Complex dtypes are not taken (the host refuses them).
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"
#include "gpuconv_types.cuh"

// The tile p's place: image n and tile row th, column tw, with TH x TW tiles an image.
struct gc_tile {
    long long n;
    int th, tw;
};

__device__ __forceinline__ gc_tile gc_tile_of(long long p, const gc_conv& pr) {
    const long long TW = (pr.OW + 1) / 2, TH = (pr.OH + 1) / 2;
    gc_tile t;
    t.tw = int(p % TW);
    p /= TW;
    t.th = int(p % TH);
    t.n = p / TH;
    return t;
}

// One thread per (channel c, tile q of the chunk), q fastest (coalesced stores of V).
template <typename T>
__global__ void winograd_input(const T* __restrict__ x, typename gc_num<T>::acc* __restrict__ V,
                               long long p0, long long P, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long total = p.C_in * P;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long q = idx % P, c = idx / P;
        const gc_tile t = gc_tile_of(p0 + q, p);
        const long long r0 = 2LL * t.th - p.PH, c0 = 2LL * t.tw - p.PW;
        const T* xc = x + t.n * p.xs_n + c * p.xs_c;
        acc_t d[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const long long r = r0 + i;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const long long s = c0 + j;
                d[i][j] = (r >= 0 && r < p.IH && s >= 0 && s < p.IW)
                              ? num::load(xc[r * p.xs_h + s * p.xs_w])
                              : num::zero();
            }
        }
        acc_t u[4][4];  // B^T d
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            u[0][j] = d[0][j] - d[2][j];
            u[1][j] = d[1][j] + d[2][j];
            u[2][j] = d[2][j] - d[1][j];
            u[3][j] = d[1][j] - d[3][j];
        }
        const long long plane = p.C_in * P;  // V's stride from one k to the next
        acc_t* v = V + c * P + q;
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // (B^T d) B
            v[(4 * i + 0) * plane] = u[i][0] - u[i][2];
            v[(4 * i + 1) * plane] = u[i][1] + u[i][2];
            v[(4 * i + 2) * plane] = u[i][2] - u[i][1];
            v[(4 * i + 3) * plane] = u[i][1] - u[i][3];
        }
    }
}

// One thread per (filter f, tile q of the chunk), q fastest (coalesced reads of M).
template <typename T, int ACT>
__global__ void winograd_output(const typename gc_num<T>::acc* __restrict__ M,
                                const T* __restrict__ bias, T* __restrict__ y, long long p0,
                                long long P, const gc_conv p) {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    const long long total = p.C_out * P;
    const long long plane = p.C_out * P;  // M's stride from one k to the next
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long q = idx % P, f = idx / P;
        const acc_t* mk = M + f * P + q;
        acc_t m[4][4];
#pragma unroll
        for (int k = 0; k < 16; ++k) m[k / 4][k % 4] = mk[k * plane];
        acc_t s[2][4];  // A^T m
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            s[0][j] = m[0][j] + m[1][j] + m[2][j];
            s[1][j] = m[1][j] - m[2][j] - m[3][j];
        }
        const gc_tile t = gc_tile_of(p0 + q, p);
        const acc_t b = p.has_bias ? num::load(bias[f]) : num::zero();
        T* yf = y + t.n * p.ys_n + f * p.ys_c;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const long long oh = 2LL * t.th + i;
            if (oh >= p.OH) break;
            acc_t out[2];  // (A^T m) A
            out[0] = s[i][0] + s[i][1] + s[i][2];
            out[1] = s[i][1] - s[i][2] - s[i][3];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const long long ow = 2LL * t.tw + j;
                if (ow >= p.OW) break;
                const acc_t v = p.has_bias ? out[j] + b : out[j];
                yf[oh * p.ys_h + ow * p.ys_w] = num::store(gc_activate<ACT>(v));
            }
        }
    }
}
