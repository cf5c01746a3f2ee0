// A "tabm" layer's adapters and its shared weight, folded into per-member weights and back:
// for the compiled step (tabm.cpp) and for the PyTorch step's passes (shared.cpp). Every sum
// runs in one order whatever the number of threads, so the results are the same bits on any.
#pragma once

#include <cstring>

namespace nnreg {

// M = (s r^T) * W: one member's adapters folded into its (o, a) weights.
template <typename T>
void fold(int o, int a, const T* __restrict__ W, const T* __restrict__ r,
          const T* __restrict__ s, T* __restrict__ M) {
  for (int j = 0; j < o; ++j)
    for (int i = 0; i < a; ++i) M[j * a + i] = s[j] * r[i] * W[j * a + i];
}

// The sum over i < a of x[i] * y[i] * z[i], in eight interleaved partial sums (so that it runs
// in vectors without reordering anything the compiler is not told to).
template <typename T>
T dot3(int a, const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z) {
  T part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= a; i += 8)
    for (int q = 0; q < 8; ++q) part[q] += x[i + q] * y[i + q] * z[i + q];
  for (; i < a; ++i) part[0] += x[i] * y[i] * z[i];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// From the k members' dM (k, o, a): dW = sum_m dM[m] * s[m] r[m]^T, dr[m] = (dM[m] * W)^T s[m],
// ds[m] = (dM[m] * W) r[m]. dW's and ds's rows split between threads, then dr's members.
template <typename T>
void unfold(int threads, int k, int o, int a, const T* __restrict__ W, const T* __restrict__ r,
            const T* __restrict__ s, const T* __restrict__ dM, T* __restrict__ dW,
            T* __restrict__ dr, T* __restrict__ ds) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int j = 0; j < o; ++j) {
    const T* __restrict__ w = W + j * a;
    T* __restrict__ dw = dW + j * a;
    std::memset(dw, 0, sizeof(T) * a);
    for (int m = 0; m < k; ++m) {
      const T sj = s[m * o + j];
      const T* __restrict__ g = dM + (m * o + j) * a;
      const T* __restrict__ rm = r + m * a;
      for (int i = 0; i < a; ++i) dw[i] += g[i] * sj * rm[i];
      ds[m * o + j] = dot3<T>(a, g, w, rm);
    }
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int m = 0; m < k; ++m) {
    T* __restrict__ drm = dr + m * a;
    std::memset(drm, 0, sizeof(T) * a);
    for (int j = 0; j < o; ++j) {
      const T sj = s[m * o + j];
      const T* __restrict__ g = dM + (m * o + j) * a;
      const T* __restrict__ w = W + j * a;
      for (int i = 0; i < a; ++i) drm[i] += g[i] * w[i] * sj;
    }
  }
}

}  // namespace nnreg
