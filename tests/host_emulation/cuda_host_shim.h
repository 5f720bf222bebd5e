// Just enough of CUDA C++ for gpuconv's kernels to compile as host C++, so that the test suite
// can run their real source on a machine without a GPU (launch.cpp). Grid-stride kernels run
// serially, one thread after another, which gives exactly what the GPU gives for kernels
// without shared memory or barriers. Tiled kernels run one block at a time with one host thread
// per CUDA thread: __shared__ variables become function statics (one copy, shared by the
// block's threads) and __syncthreads() is a barrier across them. The warp operations the
// kernels use, the tensor-core products (mma.m16n8k16, mma.m16n8k8) and ldmatrix, are emulated
// from PTX's documented fragment layouts with block-wide barriers, so they must be reached by
// every thread of the block together (conv_gemm_tc.cu calls them in uniform control flow);
// cp.async is a plain copy.
#pragma once
#include <atomic>
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))  // as CUDA defines it
#define __shared__ static
#define __launch_bounds__(...)

struct gc_emu_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
static thread_local gc_emu_dim3 threadIdx;
static gc_emu_dim3 blockIdx, blockDim, gridDim;

void __syncthreads();  // launch.cpp: a barrier across the block's host threads

using std::exp;
using std::tanh;

#include <cstdint>
#include <cstring>

// d += A (16 x 16) * B (16 x 8) for the calling thread's warp, each lane holding its fragments in
// the registers mma.sync.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 uses
// (lane = 4 * group + t):
// A r0..r3: (row group, terms 2t, 2t+1), (row group+8, same), (row group, 2t+8, 2t+9),
// (row group+8, same); B r0, r1: (column group, terms 2t, 2t+1), (same, 2t+8, 2t+9);
// d0..d3: (row group, columns 2t, 2t+1), (row group+8, same). The low half of a register is the
// lower-indexed value. Written independently of the kernel, from the PTX ISA's tables.
// One 16-bit operand as a float: IEEE binary16, or bfloat16 (a float's upper half).
template <bool BF16>
inline float gc_emu_operand(unsigned bits) {
    const unsigned short raw = static_cast<unsigned short>(bits & 0xffffu);
    if constexpr (BF16) {
        const unsigned u = static_cast<unsigned>(raw) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    } else {
        _Float16 h;
        std::memcpy(&h, &raw, 2);
        return static_cast<float>(h);
    }
}

template <bool BF16>
inline void gc_emulated_mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    static float A[32][16][16], B[32][16][8];  // per warp of the block being run
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned group = lane / 4, t = lane % 4;
    for (unsigned r = 0; r < 4; ++r)
        for (unsigned e = 0; e < 2; ++e)
            A[warp][group + 8 * (r % 2)][2 * t + e + 8 * (r / 2)] =
                gc_emu_operand<BF16>(a[r] >> (16 * e));
    for (unsigned r = 0; r < 2; ++r)
        for (unsigned e = 0; e < 2; ++e)
            B[warp][2 * t + e + 8 * r][group] = gc_emu_operand<BF16>(b[r] >> (16 * e));
    __syncthreads();  // every lane's fragments are in place
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = group + 8 * (i / 2), col = 2 * t + i % 2;
        float s = d[i];
        for (unsigned k = 0; k < 16; ++k) s += A[warp][row][k] * B[warp][k][col];
        d[i] = s;
    }
    __syncthreads();  // every lane has read them before the next product overwrites them
}

// d += A (16 x 8) * B (8 x 8) for mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32, operands being
// floats whose low 13 bits are zero (TF32): A r0..r3 = (row group, column t), (group + 8, t),
// (group, t + 4), (group + 8, t + 4); B r0, r1 = (row t, column group), (t + 4, group); d as for
// m16n8k16. From the PTX ISA's tables, written apart from the kernel.
inline void gc_emulated_mma_1688_tf32(float (&d)[4], const unsigned (&a)[4],
                                      const unsigned (&b)[2]) {
    static float A[32][16][8], B[32][8][8];
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const unsigned group = lane / 4, t = lane % 4;
    auto value = [](unsigned bits) {
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
    };
    for (unsigned r = 0; r < 4; ++r) A[warp][group + 8 * (r % 2)][t + 4 * (r / 2)] = value(a[r]);
    for (unsigned r = 0; r < 2; ++r) B[warp][t + 4 * r][group] = value(b[r]);
    __syncthreads();
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = group + 8 * (i / 2), col = 2 * t + i % 2;
        float s = d[i];
        for (unsigned k = 0; k < 8; ++k) s += A[warp][row][k] * B[warp][k][col];
        d[i] = s;
    }
    __syncthreads();
}

// Set by the emulated operations below when the kernel breaks one of their rules (launch.cpp
// resets it before a launch and reports it after): a misaligned cp.async or ldmatrix address.
inline std::atomic<int> gc_emu_fault{0};

// cp.async.cg.shared.global [dst], [src], 16, (valid ? 16 : 0): the 16 bytes at src, or zeros.
// Both addresses must be 16-byte aligned. Done at once here: on the GPU the bytes land later,
// at the wait_group that covers them, and are read after a barrier, which the emulation runs too.
inline void gc_emulated_cp_async_16(void* dst, const void* src, bool valid) {
    if ((reinterpret_cast<std::uintptr_t>(dst) | reinterpret_cast<std::uintptr_t>(src)) % 16)
        gc_emu_fault = 1;
    if (valid)
        std::memcpy(dst, src, 16);
    else
        std::memset(dst, 0, 16);
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 for the calling thread's warp: lane l gives the
// address of row l % 8 of matrix l / 8 (8 16-bit elements, 16-byte aligned); lane l receives in
// r[j] the elements (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1) of matrix j, the lower
// column in the low half. From the PTX ISA's description, written apart from the kernel; like
// the mma, every thread of the block must reach it together.
inline void gc_emulated_ldmatrix_x4(unsigned (&r)[4], const void* row) {
    static const unsigned short* rows[32][32];  // [warp][lane]
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (reinterpret_cast<std::uintptr_t>(row) % 16) gc_emu_fault = 1;
    rows[warp][lane] = static_cast<const unsigned short*>(row);
    __syncthreads();
    for (unsigned j = 0; j < 4; ++j) {
        const unsigned short* source = rows[warp][8 * j + lane / 4];
        r[j] = unsigned(source[2 * (lane % 4)]) | (unsigned(source[2 * (lane % 4) + 1]) << 16);
    }
    __syncthreads();
}

// wgmma.mma_async.sync.aligned.m64n{N}k16.f32.{f16,bf16}.{f16,bf16} with both operands in
// shared memory, K-major (no transposition), scale 1: d += A (64 x 16) * B^T (N x 16), for the
// calling thread's warpgroup (warps 4 g .. 4 g + 3). Written apart from the kernel, from the
// PTX ISA: the descriptors' fields (start address / 16 in bits 0-13, stride byte offset / 16 in
// 32-45, base offset in 49-51, swizzle mode in 62-63) are decoded here, and only the layout the
// kernel is meant to use is accepted (64-byte swizzle, base offset 0, 8-row groups starting on
// 512 bytes): anything else sets gc_emu_fault. Row r, term k of an operand lies at byte
// start + (r / 8) * stride + (r % 8) * 64 + 2 k before the swizzle, which XORs address bits 4-5
// with bits 7-8. The host pointers the descriptors were made from are passed too (the
// descriptor holds 14 bits of a shared address; the emulation's shared memory is host memory):
// their low bits must be the descriptor's. D: register 4 j + e of lane 4 * group + t in warp w
// holds row 16 (w % 4) + group + 8 (e / 2), column 8 j + 2 t + e % 2. Done at once here: on the
// GPU the sums land at the wait_group, which the kernel reaches before reading them. Each
// thread reads the operands itself, so no barrier is needed (the stage is not written while the
// warpgroup multiplies it; the kernel's own barriers order that, and run here too).
template <bool BF16, int N>
inline void gc_emulated_wgmma(float (&d)[N / 2], unsigned long long da, unsigned long long db,
                              const void* a_tile, const void* b_tile) {
    struct Operand {
        const unsigned char* start;
        unsigned long long stride;
    };
    auto operand = [](unsigned long long desc, const void* tile) {
        const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(tile);
        const unsigned long long start = (desc & 0x3FFFull) << 4;
        const unsigned long long stride = ((desc >> 32) & 0x3FFFull) << 4;
        const unsigned base_offset = unsigned(desc >> 49) & 7u, swizzle = unsigned(desc >> 62);
        if (start != (at & 0x3FFF0u) || at % 16 || swizzle != 2 || base_offset != 0 ||
            stride != 512 || (at & 0x1C0u) != 0)
            gc_emu_fault = 1;
        return Operand{reinterpret_cast<const unsigned char*>(at), stride};
    };
    auto element = [](const Operand& m, unsigned row, unsigned k) {
        std::uintptr_t a = reinterpret_cast<std::uintptr_t>(m.start) + (row / 8) * m.stride +
                           (row % 8) * 64 + 2 * k;
        a ^= ((a >> 7) & 3u) << 4;
        unsigned short bits;
        std::memcpy(&bits, reinterpret_cast<const void*>(a), 2);
        return gc_emu_operand<BF16>(bits);
    };
    const Operand A = operand(da, a_tile), B = operand(db, b_tile);
    const unsigned lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    const unsigned group = lane / 4, t = lane % 4;
    for (unsigned j = 0; j < unsigned(N) / 8; ++j)
        for (unsigned e = 0; e < 4; ++e) {
            const unsigned row = 16 * warp + group + 8 * (e / 2), col = 8 * j + 2 * t + e % 2;
            float s = d[4 * j + e];
            for (unsigned k = 0; k < 16; ++k) s += element(A, row, k) * element(B, col, k);
            d[4 * j + e] = s;
        }
}
