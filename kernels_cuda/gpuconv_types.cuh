// Element types and arithmetic shared by gpuconv's CUDA kernels.
//
// The kernels are compiled by NVRTC through cupy.RawModule, and also by the test suite with plain
// NVRTC on machines without CuPy or a GPU, so this header needs nothing but the compiler: half
// precision is carried as raw bits and converted with PTX cvt, complex numbers are a two-field
// struct with NumPy's memory layout (real, imag).
#pragma once

// Activation codes: the Python side names them in template name expressions (kernels.py), so the
// names below are the single source of truth.
#define GC_ACT_NONE 0
#define GC_ACT_RELU 1
#define GC_ACT_SIGMOID 2
#define GC_ACT_TANH 3

// IEEE binary16 as stored by NumPy/CuPy float16 arrays.
struct gc_half {
    unsigned short bits;
};

// bfloat16 as stored by ml_dtypes/CuPy bfloat16 arrays: the upper half of a float's bits.
struct gc_bfloat16 {
    unsigned short bits;
};

// NumPy complex64/complex128 layout: real part then imaginary part, aligned to the whole number.
template <typename R>
struct __align__(2 * sizeof(R)) gc_complex {
    R re;
    R im;
};

template <typename R>
__device__ __forceinline__ gc_complex<R> operator+(gc_complex<R> a, gc_complex<R> b) {
    return {a.re + b.re, a.im + b.im};
}

template <typename R>
__device__ __forceinline__ gc_complex<R> operator*(gc_complex<R> a, gc_complex<R> b) {
    return {a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re};
}

// Complex conjugate (identity for real numbers): the adjoints are Hermitian.
__device__ __forceinline__ float gc_conj(float v) { return v; }
__device__ __forceinline__ double gc_conj(double v) { return v; }
template <typename R>
__device__ __forceinline__ gc_complex<R> gc_conj(gc_complex<R> v) {
    return {v.re, -v.im};
}

// acc += a * b in the accumulator type.
__device__ __forceinline__ float gc_madd(float acc, float a, float b) { return fmaf(a, b, acc); }
__device__ __forceinline__ double gc_madd(double acc, double a, double b) { return fma(a, b, acc); }
template <typename R>
__device__ __forceinline__ gc_complex<R> gc_madd(gc_complex<R> acc, gc_complex<R> a,
                                                 gc_complex<R> b) {
    return acc + a * b;
}

// Storage type T <-> accumulator type: float16 and bfloat16 accumulate in float, the others in
// themselves.
template <typename T>
struct gc_num {
    typedef T acc;
    static __device__ __forceinline__ acc load(const T& v) { return v; }
    static __device__ __forceinline__ T store(const acc& v) { return v; }
    static __device__ __forceinline__ acc zero() { return acc{}; }
};

template <>
struct gc_num<gc_half> {
    typedef float acc;
    static __device__ __forceinline__ float load(const gc_half& v) {
        float f;
#ifdef __CUDA_ARCH__
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
#else  // host compilation: the test suite's serial emulation of the kernels
        _Float16 h;
        __builtin_memcpy(&h, &v.bits, 2);
        f = static_cast<float>(h);
#endif
        return f;
    }
    static __device__ __forceinline__ gc_half store(const float& f) {
        gc_half h;
#ifdef __CUDA_ARCH__
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));  // round to nearest even
#else
        _Float16 r = static_cast<_Float16>(f);  // also round to nearest even
        __builtin_memcpy(&h.bits, &r, 2);
#endif
        return h;
    }
    static __device__ __forceinline__ float zero() { return 0.0f; }
};

template <>
struct gc_num<gc_bfloat16> {
    typedef float acc;
    static __device__ __forceinline__ float load(const gc_bfloat16& v) {
        const unsigned u = static_cast<unsigned>(v.bits) << 16;  // exact: float's upper half
#ifdef __CUDA_ARCH__
        return __uint_as_float(u);
#else
        float f;
        __builtin_memcpy(&f, &u, 4);
        return f;
#endif
    }
    // Round to nearest, ties to even, as ml_dtypes' float32 -> bfloat16 conversion; NaN stays a
    // (quiet) NaN rather than rounding into infinity.
    static __device__ __forceinline__ gc_bfloat16 store(const float& f) {
#ifdef __CUDA_ARCH__
        const unsigned u = __float_as_uint(f);
#else
        unsigned u;
        __builtin_memcpy(&u, &f, 4);
#endif
        gc_bfloat16 b;
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            b.bits = static_cast<unsigned short>((u >> 16) | 0x0040u);
        } else {
            b.bits = static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
        return b;
    }
    static __device__ __forceinline__ float zero() { return 0.0f; }
};

// Activation applied to the biased sum in the accumulator type, before the store. Only
// GC_ACT_NONE is defined for complex accumulators; the Python side never asks for others.
template <int ACT, typename A>
__device__ __forceinline__ A gc_activate(A v) {
    if constexpr (ACT == GC_ACT_NONE) {
        return v;
    } else if constexpr (ACT == GC_ACT_RELU) {
        return v < A(0) ? A(0) : v;  // NaN < 0 is false: NaN propagates, as in NumPy and PyTorch
    } else if constexpr (ACT == GC_ACT_SIGMOID) {
        return A(1) / (A(1) + exp(-v));
    } else {
        static_assert(ACT == GC_ACT_TANH, "unknown activation code");
        return tanh(v);
    }
}
