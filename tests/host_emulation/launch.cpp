// Host launcher for one instantiation of a gpuconv kernel, called from Python via ctypes.
// Build: g++ -shared -fPIC -pthread -std=c++17 -DGC_KERNEL=<name<T, ...>>
//        -DGC_SOURCE=<expanded .cu file>
#include "cuda_host_shim.h"
#include GC_SOURCE

#include <pthread.h>

#include <cstring>
#include <thread>
#include <vector>
#include <type_traits>
#include <utility>

namespace {

template <typename A>
A take(std::size_t i, void* const* pointers, const long long* scalars, std::size_t n_pointers) {
    if constexpr (std::is_pointer_v<A>) {
        return static_cast<A>(pointers[i]);
    } else {
        return static_cast<A>(scalars[i - n_pointers]);
    }
}

template <typename... A, std::size_t... I>
void call(void (*f)(A...), void* const* pointers, const long long* scalars,
          std::size_t n_pointers, std::index_sequence<I...>) {
    f(take<A>(I, pointers, scalars, n_pointers)...);
}

template <typename F>
struct arity_of;
template <typename... A>
struct arity_of<void (*)(A...)> {
    static constexpr std::size_t value = sizeof...(A);
};

template <typename... A>
constexpr std::size_t count_pointers(void (*)(A...)) {
    return (std::size_t(0) + ... + (std::is_pointer_v<A> ? 1 : 0));
}

template <typename... A>
int check(void (*)(A...), const int* scalar_bytes, int n_scalars, std::size_t n_pointers) {
    constexpr std::size_t sizes[] = {sizeof(A)...};
    if (sizeof...(A) != n_pointers + n_scalars) return -1;  // argument count differs
    for (int i = 0; i < n_scalars; ++i)
        if (sizes[n_pointers + i] != std::size_t(scalar_bytes[i])) return -100 - i;  // type size
    return 0;
}

pthread_barrier_t block_barrier;

}  // namespace

void __syncthreads() { pthread_barrier_wait(&block_barrier); }

// pointers: the kernel's pointer arguments; scalars and scalar_bytes: the remaining arguments'
// values and the byte size Python gave each (CuPy would pass exactly that many bytes).
// Returns 0, or a negative code when Python's arguments do not fit the kernel's signature.
extern "C" int gc_emulate(void* const* pointers, int n_pointers, const long long* scalars,
                          const int* scalar_bytes, int n_scalars, unsigned grid, unsigned block) {
    auto f = &GC_KERNEL;
    if (count_pointers(f) != std::size_t(n_pointers)) return -2;
    int status = check(f, scalar_bytes, n_scalars, n_pointers);
    if (status) return status;
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            call(f, pointers, scalars, n_pointers,
                 std::make_index_sequence<arity_of<decltype(f)>::value>{});
        }
    }
    return 0;
}

// The same for a kernel launched on a (gx, gy, gz) grid of blocks of `block` threads that uses
// shared memory and barriers: every block runs, one after another, each on `block` host threads.
extern "C" int gc_emulate_tiled(void* const* pointers, int n_pointers, const long long* scalars,
                                const int* scalar_bytes, int n_scalars, unsigned gx, unsigned gy,
                                unsigned gz, unsigned block) {
    auto f = &GC_KERNEL;
    if (count_pointers(f) != std::size_t(n_pointers)) return -2;
    int status = check(f, scalar_bytes, n_scalars, n_pointers);
    if (status) return status;
    gridDim.x = gx;
    gridDim.y = gy;
    gridDim.z = gz;
    blockDim.x = block;
    pthread_barrier_init(&block_barrier, nullptr, block);
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
                        call(f, pointers, scalars, n_pointers,
                             std::make_index_sequence<arity_of<decltype(f)>::value>{});
                    });
                }
                for (auto& th : threads) th.join();
            }
        }
    }
    pthread_barrier_destroy(&block_barrier);
    return 0;
}
