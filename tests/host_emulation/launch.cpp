// Host launcher for one instantiation of a gpuconv kernel, called from Python via ctypes.
// Build: g++ -shared -fPIC -pthread -std=c++17 -DGC_KERNEL=<name<T, ...>>
//        -DGC_SOURCE=<expanded .cu file>
#include "cuda_host_shim.h"
#include GC_SOURCE

#include <pthread.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <type_traits>
#include <utility>

namespace {

// Argument i of the kernel, from the bytes Python gave for it (as CuPy's launch does: every
// argument is the bytes of its value; a pointer's value is the address).
template <typename A>
A take(std::size_t i, void* const* args) {
    std::remove_cv_t<A> value;
    std::memcpy(&value, args[i], sizeof(value));
    return value;
}

template <typename... A, std::size_t... I>
void call(void (*f)(A...), void* const* args, std::index_sequence<I...>) {
    f(take<A>(I, args)...);
}

template <typename F>
struct arity_of;
template <typename... A>
struct arity_of<void (*)(A...)> {
    static constexpr std::size_t value = sizeof...(A);
};

// 0 when Python's arguments fit the kernel's signature: as many, each a pointer exactly where
// the kernel takes one, each of the byte size the kernel declares; else a negative code.
template <typename... A>
int check(void (*)(A...), const int* sizes, const int* is_pointer, int n) {
    constexpr std::size_t size[] = {sizeof(A)...};
    constexpr bool pointer[] = {std::is_pointer_v<A>...};
    if (sizeof...(A) != std::size_t(n)) return -1;  // argument count differs
    for (int i = 0; i < n; ++i) {
        if (pointer[i] != (is_pointer[i] != 0)) return -200 - i;  // pointer against value
        if (size[i] != std::size_t(sizes[i])) return -100 - i;    // byte size differs
    }
    return 0;
}

// 0 when every pointer argument is aligned for its element type (a GPU faults on a misaligned
// load; the host would not notice), else -300 - the argument's index.
template <typename A>
int misaligned(std::size_t i, void* const* args) {
    if constexpr (std::is_pointer_v<A>) {
        typedef std::remove_cv_t<std::remove_pointer_t<A>> element;
        if (reinterpret_cast<std::uintptr_t>(take<A>(i, args)) % alignof(element))
            return -300 - int(i);
    }
    return 0;
}

template <typename... A, std::size_t... I>
int check_alignment(void (*)(A...), void* const* args, std::index_sequence<I...>) {
    int status = 0;
    ((status = status ? status : misaligned<A>(I, args)), ...);
    return status;
}

// check, then check_alignment: 0 when the arguments fit the kernel, else their negative code.
template <typename F>
int validate(F f, void* const* args, const int* sizes, const int* is_pointer, int n) {
    if (int status = check(f, sizes, is_pointer, n)) return status;
    return check_alignment(f, args, std::make_index_sequence<arity_of<F>::value>{});
}

pthread_barrier_t block_barrier;

}  // namespace

void __syncthreads() { pthread_barrier_wait(&block_barrier); }

// args[i]: the bytes of argument i, sizes[i] their count, is_pointer[i] whether it is a pointer
// (CuPy would pass exactly those bytes). Returns 0, or a negative code when the arguments do not
// fit the kernel's signature or a pointer is misaligned (see validate).
extern "C" int gc_emulate(void* const* args, const int* sizes, const int* is_pointer, int n,
                          unsigned grid, unsigned block) {
    auto f = &GC_KERNEL;
    if (int status = validate(f, args, sizes, is_pointer, n)) return status;
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            call(f, args, std::make_index_sequence<arity_of<decltype(f)>::value>{});
        }
    }
    return 0;
}

// The same for a kernel launched on a (gx, gy, gz) grid of blocks of `block` threads that uses
// shared memory and barriers: every block runs, one after another, each on `block` host threads.
extern "C" int gc_emulate_tiled(void* const* args, const int* sizes, const int* is_pointer,
                                int n, unsigned gx, unsigned gy, unsigned gz, unsigned block) {
    auto f = &GC_KERNEL;
    if (int status = validate(f, args, sizes, is_pointer, n)) return status;
    gridDim.x = gx;
    gridDim.y = gy;
    gridDim.z = gz;
    blockDim.x = block;
    pthread_barrier_init(&block_barrier, nullptr, block);
    gc_emu_fault = 0;
    for (unsigned z = 0; z < gz; ++z) {
        for (unsigned y = 0; y < gy; ++y) {
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                std::vector<std::thread> threads;
                for (unsigned t = 0; t < block; ++t) {
                    threads.emplace_back([=] {
                        threadIdx.x = t;
                        call(f, args,
                             std::make_index_sequence<arity_of<decltype(f)>::value>{});
                    });
                }
                for (auto& th : threads) th.join();
            }
        }
    }
    pthread_barrier_destroy(&block_barrier);
    return gc_emu_fault ? -400 : 0;  // an emulated warp or copy operation was misused
}
