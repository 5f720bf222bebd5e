// Throughput probe for the benchmark's "% of measured peak": each thread runs CHAINS independent
// chains of dependent fused multiply-adds (enough chains to hide the FMA latency), so the SMs'
// FMA pipes are the only limit. 2 * CHAINS * iters flops per thread. The result is stored so that
// the compiler cannot drop the arithmetic; its value means nothing.
template <typename T>
__global__ void gc_fma_peak(T* __restrict__ out, int iters, T b, T c) {
    constexpr int CHAINS = 8;
    T a[CHAINS];
#pragma unroll
    for (int j = 0; j < CHAINS; ++j) a[j] = T(threadIdx.x + j);
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < CHAINS; ++j) a[j] = fma(a[j], b, c);
    }
    T s = T(0);
#pragma unroll
    for (int j = 0; j < CHAINS; ++j) s += a[j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
