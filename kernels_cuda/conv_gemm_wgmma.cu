// conv_gemm_wgmma: the channels-last implicit GEMM of gpuconv_gemm_cl.cuh for float16 and
// bfloat16 (filters of a multiple of 8 kernels, as conv_gemm_tc_cl), multiplied by Hopper's
// warpgroup instruction wgmma.mma_async. sm_90a only: the host compiles this file with
// -arch=sm_90a, and only for devices of compute capability 9.0 (kernels.module_options).
//
// The block's 256 threads are two warpgroups (warps 0-3 and 4-7); warpgroup g multiplies rows
// 64 g .. 64 g + 63 of the block's 128 output positions by all BN filters. Per step (32 terms)
// each issues two wgmma m64nBNk16 whose A (64 positions x 16 terms) and B (BN filters x 16
// terms) the tensor cores read from the ring's stage themselves: no ldmatrix, no operand
// registers, so a thread's registers hold its accumulators and the copies' addresses.
//
// The ring's rows are what wgmma's 64-byte swizzle mode reads for K-major operands (PTX ISA,
// "Shared Memory Matrix Layout"): rows of 64 bytes (32 terms), 16-byte chunk c of row r at
// chunk c ^ ((r / 2) % 4), i.e. address bits 4-5 XORed with bits 7-8, the 8-row groups 512
// bytes apart (the descriptor's stride byte offset); a stage's tiles start on 1024 bytes, so
// the swizzle by address is the ring's swizzle by row, and the second 16 terms of a step are
// the descriptor's start moved by 32 bytes. The copies (cp.async) write the stage in the
// generic proxy and wgmma reads it in the async proxy: each thread fences its copies into the
// async proxy (fence.proxy.async) before the barrier that publishes the stage.
//
// Accumulators (wgmma's D layout for m64nNk16, lane = 4 * group + t, warp w of its group):
// register 4 j + e holds row 16 (w % 4) + group + 8 (e / 2), filter 8 j + 2 t + e % 2 of the
// warpgroup's 64 x BN: mma.m16n8k16's layout repeated over the filters, so the epilogue is
// gc_tc_store's with warps of WARP_M = 16 rows by WARP_N = BN filters.
//
// A step waits for its own products (wgmma.wait_group 0) before the next barrier, so a stage
// is never overwritten while the tensor cores read it; the copies of the next two steps are in
// flight meanwhile, as in the other channels-last kernels.
#include "gpuconv_gemm_cl.cuh"

// A shared-memory address as wgmma's descriptors hold it (its low 18 bits, by 16 bytes).
__device__ __forceinline__ unsigned gc_shared_address(const void* p) {
#ifdef __CUDA_ARCH__
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
#else  // the host emulation's shared memory is host memory; its low bits stand in
    return static_cast<unsigned>(reinterpret_cast<unsigned long long>(p));
#endif
}

// The descriptor of a K-major operand tile in the ring (PTX ISA, "Matrix Descriptor Format"):
// bits 0-13 the start address / 16; 16-29 the leading byte offset / 16 (not used by K-major
// swizzled layouts whose step of 16 terms lies in one swizzled row: 1); 32-45 the stride byte
// offset / 16 (8 rows of 64 bytes: 512 / 16); 49-51 the base offset (0: the 8-row groups start
// on 512 bytes); 62-63 the swizzle mode (2: 64 bytes).
__device__ __forceinline__ unsigned long long gc_wgmma_desc(const void* tile) {
    const unsigned long long start = (gc_shared_address(tile) & 0x3FFFFu) >> 4;
    return start | (1ull << 16) | ((512ull >> 4) << 32) | (2ull << 62);
}

// One wgmma m64n64k16 (32 float accumulators a thread), A and B from shared memory by their
// descriptors, both K-major (no transposition), D += A B.
#define GC_WGMMA_N64(AB, d, da, db)                                                         \
    asm volatile(                                                                             \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                          \
    "wgmma.mma_async.sync.aligned.m64n64k16.f32." AB "." AB " {" \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
    "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                               \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),  \
      "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),  \
      "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
      "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
      "+f"(d[30]), "+f"(d[31]) \
    : "l"(da), "l"(db), "r"(1))

// One wgmma m64n128k16 (64 float accumulators a thread), A and B from shared memory by their
// descriptors, both K-major (no transposition), D += A B.
#define GC_WGMMA_N128(AB, d, da, db)                                                         \
    asm volatile(                                                                             \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                          \
    "wgmma.mma_async.sync.aligned.m64n128k16.f32." AB "." AB " {" \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
    "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                               \
    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),  \
      "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),  \
      "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
      "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
      "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),  \
      "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),  \
      "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),  \
      "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
    : "l"(da), "l"(db), "r"(1))

// The accumulators' registers stay where wgmma left them: the compiler may not move accesses
// of them across the fences and waits (what CUTLASS calls warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void gc_wgmma_hold(float (&d)[N]) {
#ifdef __CUDA_ARCH__
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// wgmma's ordering: fence (the accumulators and the stage are ready), commit the products
// issued since as one group, wait until none of this thread's groups is in flight.
__device__ __forceinline__ void gc_wgmma_fence() {
#ifdef __CUDA_ARCH__
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void gc_wgmma_commit_and_wait() {
#ifdef __CUDA_ARCH__
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}

// Which 16-bit type wgmma reads (its .f16 or .bf16 operands).
template <typename T>
struct gc_wgmma_type;
template <>
struct gc_wgmma_type<gc_half> {
    static constexpr bool bf16 = false;
};
template <>
struct gc_wgmma_type<gc_bfloat16> {
    static constexpr bool bf16 = true;
};

// d (BN / 2 floats) += the m64 x BN x k16 product of the tiles at a_tile (64 rows of positions)
// and b_tile (BN rows of filters), both from the same 16 terms of the ring's rows.
template <typename T, int BN>
__device__ __forceinline__ void gc_wgmma(float (&d)[BN / 2], const void* a_tile,
                                         const void* b_tile) {
    static_assert(BN == 64 || BN == 128, "built for 64 and 128 filters");
    const unsigned long long da = gc_wgmma_desc(a_tile), db = gc_wgmma_desc(b_tile);
#ifdef __CUDA_ARCH__
    if constexpr (gc_wgmma_type<T>::bf16) {
        if constexpr (BN == 128)
            GC_WGMMA_N128("bf16", d, da, db);
        else
            GC_WGMMA_N64("bf16", d, da, db);
    } else {
        if constexpr (BN == 128)
            GC_WGMMA_N128("f16", d, da, db);
        else
            GC_WGMMA_N64("f16", d, da, db);
    }
#else  // the test suite's host emulation reads the tiles as the descriptors describe them
    gc_emulated_wgmma<gc_wgmma_type<T>::bf16, BN>(d, da, db, a_tile, b_tile);
#endif
}

// How conv_gemm_wgmma multiplies one stage (the Mul of gc_gemm_cl, see gpuconv_gemm_cl.cuh).
template <typename T, int BN>
struct gc_cl_wgmma {
    typedef unsigned short raw_t;
    static constexpr int E = 8, WARP_M = 16, WARP_N = BN;
    int a_row;  // the first A row (output position of the block) of this thread's warpgroup
    __device__ __forceinline__ explicit gc_cl_wgmma(const gc_tc_place& me)
        : a_row(me.wm / 64 * 64) {}
    static __device__ __forceinline__ void landed() {
#ifdef __CUDA_ARCH__
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
    }
    template <int MT, int NT, int BK>
    __device__ __forceinline__ void step(float (&acc)[MT][NT][4], const raw_t* As,
                                         const raw_t* Bs) const {
        static_assert(MT == 1 && NT * 8 == BN && BK == 32, "a warp's 16 x BN, 32 terms a step");
        float(&d)[BN / 2] = reinterpret_cast<float(&)[BN / 2]>(acc);
        gc_wgmma_hold(d);
        gc_wgmma_fence();
#pragma unroll
        for (int h = 0; h < 2; ++h)  // terms 16 h .. 16 h + 15 of every row
            gc_wgmma<T, BN>(d, As + a_row * BK + 16 * h, Bs + 16 * h);
        gc_wgmma_commit_and_wait();
        gc_wgmma_hold(d);
    }
};

// 4 blocks an SM would need 4 x 49152 bytes of shared memory (128 filters) and leave 64
// registers a thread; 2 leave 128 (64 accumulators and the copies' addresses).
template <typename T, int ACT, int BN>
__global__ void __launch_bounds__(256, 2)
conv_gemm_wgmma(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                T* __restrict__ y, float* __restrict__ partial, long long splits,
                long long per_split, const gc_conv p) {
    gc_gemm_cl<gc_cl_wgmma<T, BN>, T, ACT, BN>(x, w, bias, y, partial, splits, per_split, p);
}
