// Explicit GEMM ("im2col"): the windows of a chunk of output positions unrolled into the columns
// of a matrix in global memory, that matrix multiplied by the filters by cuBLAS (the host's CuPy
// matmul: batched over the groups, or for 16-bit dtypes one 2-D product a group), and the
// product copied into y. On a channels-last x the unroll's loads are a channel's stride apart
// across a warp (each one a sector of its own; neighbouring taps and channels then hit the
// same lines in L1): the layout it is built for is the channels-first one.
//
// Group g's matrix of a chunk, cols[g], is K x J (row stride J): column j holds the window of
// output position j0 + j of the call (positions (n, od, oh, ow) flattened, ow fastest); row
// k < terms is the term (c, kd, kh, kw) flattened, the filters' own order, so that a group's
// filters (Cog, Cg, KD, KH, KW) are its (Cog, terms) matrix as they lie. A tap in the zero
// padding is a zero. Rows from `terms` to K - 1: with a bias, row `terms` is all ones, the bias
// being one more term of every sum (the host appends it to the filters' matrix as a column), so
// that a 16-bit output is rounded once, after the bias is added; then zeros (the host pads a
// 16-bit K to a multiple of 8 for the tensor cores).
//
// The columns are of type C: T itself, or T's accumulator type (float for float16/bfloat16,
// widened exactly) where the host multiplies in float32 (16-bit calls with sigmoid or tanh,
// which do not commute with the rounding). The product P[g] (Cog x J, row stride J) is in C too.
//
// Both kernels run one thread per column and run of R rows (im2col: R (group, channel) pairs,
// each its kernel's taps; im2col_store: R output channels), the column fastest: neighbouring
// threads write (im2col) and read (im2col_store) neighbouring elements of every row, so those
// accesses coalesce, and on a channels-first x or y of unit stride they touch neighbouring
// elements of x or y. The host picks R (kernels.im2col_rows_a_thread) so that a launch has
// enough threads to fill the GPU even for few output positions and many terms (r50_res5: 1568
// columns of 4608 terms), and each thread splits its position once for R rows of work: no
// division per element. x and y are addressed through the record's element strides (any
// layout, views). All index arithmetic is 64-bit.
#include "gpuconv_index.cuh"
#include "gpuconv_params.cuh"
#include "gpuconv_types.cuh"

// T's values in the columns' type C (T or gc_num<T>::acc), and back.
template <typename A, typename B>
struct gc_same_type {
    static constexpr bool value = false;
};
template <typename A>
struct gc_same_type<A, A> {
    static constexpr bool value = true;
};

template <typename T, typename C>
struct gc_column {
    typedef gc_num<T> num;
    typedef typename num::acc acc_t;
    static_assert(gc_same_type<C, T>::value || gc_same_type<C, acc_t>::value,
                  "columns are of the storage type or its accumulator type");
    static constexpr bool widened = !gc_same_type<C, T>::value;
    // an element of x as a column entry
    static __device__ __forceinline__ C of_x(const T& v) {
        if constexpr (widened) {
            return num::load(v);
        } else {
            return v;
        }
    }
    // a value given in the accumulator type (zero, one: exact in every type) as a column entry
    static __device__ __forceinline__ C of_acc(const acc_t& v) {
        if constexpr (widened) {
            return v;
        } else {
            return num::store(v);
        }
    }
    // an entry of the product in the accumulator type
    static __device__ __forceinline__ acc_t to_acc(const C& v) {
        if constexpr (widened) {
            return v;
        } else {
            return num::load(v);
        }
    }
};

// 0 <= i < n, as one unsigned comparison.
__device__ __forceinline__ bool gc_inside(long long i, long long n) {
    return static_cast<unsigned long long>(i) < static_cast<unsigned long long>(n);
}

// 1 in an accumulator type (real or complex).
template <typename A>
struct gc_unit {
    static __device__ __forceinline__ A one() { return A(1); }
};
template <typename R>
struct gc_unit<gc_complex<R>> {
    static __device__ __forceinline__ gc_complex<R> one() { return {R(1), R(0)}; }
};

template <typename T, typename C>
__global__ void im2col(const T* __restrict__ x, C* __restrict__ cols, long long j0, long long J,
                       long long K, long long R, const gc_conv p) {
    typedef gc_column<T, C> col_t;
    const C zero = col_t::of_acc(gc_num<T>::zero());
    const C one = col_t::of_acc(gc_unit<typename gc_num<T>::acc>::one());
    const long long taps = p.KD * p.KH * p.KW, terms = p.Cg * taps;
    const long long rows = p.groups * p.Cg;  // (group, channel) pairs, R a thread
    const long long total = (rows + R - 1) / R * J;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long j = idx % J, r0 = idx / J * R;
        const gc_coords at = gc_split_index(j0 + j, 1LL, p.OD, p.OH, p.OW, false);
        const long long d0 = at.d * p.SD - p.PD, h0 = at.h * p.SH - p.PH,
                        w0 = at.w * p.SW - p.PW;
        const T* xn = x + at.n * p.xs_n;
        const long long KW = p.KW, DW = p.DW, IW = p.IW, xs_w = p.xs_w, x_step = DW * xs_w;
        long long g = r0 / p.Cg, c = r0 % p.Cg;
        const long long r_end = r0 + R < rows ? r0 + R : rows;
        for (long long r = r0; r < r_end; ++r) {
            const T* xc = xn + r * p.xs_c;  // channel r of x is channel c of group g
            C* out = cols + (g * K + c * taps) * J + j;  // its first term's row, this column
            for (long long kd = 0; kd < p.KD; ++kd) {
                const long long id = d0 + kd * p.DD;
                const bool d_in = gc_inside(id, p.ID);
                for (long long kh = 0; kh < p.KH; ++kh) {
                    const long long ih = h0 + kh * p.DH;
                    if (!(d_in && gc_inside(ih, p.IH))) {  // a row of the zero padding
                        for (long long kw = 0; kw < KW; ++kw, out += J) *out = zero;
                        continue;
                    }
                    // the row's taps stepped by pointer: no multiply per element
                    const T* xt = xc + id * p.xs_d + ih * p.xs_h + w0 * xs_w;
                    long long iw = w0;
                    for (long long kw = 0; kw < KW; ++kw, out += J, iw += DW, xt += x_step)
                        *out = gc_inside(iw, IW) ? col_t::of_x(*xt) : zero;
                }
            }
            if (++c == p.Cg) {  // the group's last channel: its rows after the terms too
                long long k = terms;
                if (p.has_bias) {
                    *out = one;
                    out += J;
                    ++k;
                }
                for (; k < K; ++k, out += J) *out = zero;
                c = 0;
                ++g;
            }
        }
    }
}

// y[n, co, od, oh, ow] = activation(P[co, j]) for the chunk's positions j0 + j (P is (G, Cog, J),
// i.e. (C_out, J)), rounded once from the accumulator type to T; R filters a thread. The bias
// is inside P (the columns' row of ones).
template <typename C, typename T, int ACT>
__global__ void im2col_store(const C* __restrict__ prod, T* __restrict__ y, long long j0,
                             long long J, long long R, const gc_conv p) {
    typedef gc_column<T, C> col_t;
    const long long total = (p.C_out + R - 1) / R * J;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long j = idx % J, co0 = idx / J * R;
        const gc_coords at = gc_split_index(j0 + j, 1LL, p.OD, p.OH, p.OW, false);
        const long long co_end = co0 + R < p.C_out ? co0 + R : p.C_out;
        const C* src = prod + co0 * J + j;
        T* dst = y + at.n * p.ys_n + co0 * p.ys_c + at.d * p.ys_d + at.h * p.ys_h +
                 at.w * p.ys_w;
        for (long long co = co0; co < co_end; ++co, src += J, dst += p.ys_c)
            *dst = gc_num<T>::store(gc_activate<ACT>(col_t::to_acc(*src)));
    }
}
