// Shared-weight members (nnreg.engine.shared.FastTabM, the "tabm" form with ReLU, no dropout,
// no embedding, squared error with or without row weights, one output): one training step,
// and the validation loss of the members' mean, each one call that works member by member.
//
// Built and loaded by nnreg/engine/native.py: plain C symbols called through ctypes, no
// Python or PyTorch headers; with OpenMP where the compiler has it, the members split between
// threads. A member's activations are kept transposed, (width, rows), the rows padded to a
// whole number of 32-byte vectors, so that every inner loop runs over rows in whole vectors
// and a block of a layer's outputs stays in registers while its inputs stream past. Padded
// rows have zero residuals, so they add nothing to any gradient.
//
// Per member m and layer l (a inputs, o outputs, n padded rows):
//   M = (s r^T) * W                       the adapters folded into the member's weights
//   H_l = relu(M @ H_{l-1} + b)           (o, n)
//   out = head_weight . H_L + head_bias;  D = (out - y) * scale, zero on padded rows
//   dZ_L = head_weight * D, masked by H_L > 0
//   db = sum_rows dZ;  dM = dZ @ H_{l-1}^T;  dZ_{l-1} = (M^T @ dZ), masked by H_{l-1} > 0
// then, over members: dW = sum_m dM * s r^T, dr = sum_j dM * W * s, ds = sum_i dM * W * r.
#include <cstring>

#include "adapters.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num() { return 0; }  // built without OpenMP: one thread
#endif

namespace {

using nnreg::fold;
using nnreg::unfold;

template <typename T>
struct Vec {
  static constexpr int width = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, 32);
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, 32);
}

template <typename T>
inline T total(typename Vec<T>::type v) {
  T s = 0;
  for (int q = 0; q < Vec<T>::width; ++q) s += v[q];
  return s;
}

// Eight accumulators c[0..7] summed lane-wise into sums of each: row0[q] = sum(c[q]) and
// row1[q] = sum(c[4 + q]) for q < 4, by a tree of pairwise shuffles and adds (extracting
// lanes one by one costs several times more than the dot products of a short block).
inline void reduce_block(const Vec<float>::type* c, float* row0, float* row1) {
  typedef Vec<float>::type V;
  typedef int M __attribute__((vector_size(32)));
  const M even = {0, 2, 8, 10, 4, 6, 12, 14}, odd = {1, 3, 9, 11, 5, 7, 13, 15};
  auto hadd = [&](V a, V b) { return __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd); };
  V u0 = hadd(hadd(c[0], c[1]), hadd(c[2], c[3]));
  V u1 = hadd(hadd(c[4], c[5]), hadd(c[6], c[7]));
  const M low = {0, 1, 2, 3, 8, 9, 10, 11}, high = {4, 5, 6, 7, 12, 13, 14, 15};
  V sums = __builtin_shuffle(u0, u1, low) + __builtin_shuffle(u0, u1, high);
  std::memcpy(row0, &sums, 4 * sizeof(float));
  std::memcpy(row1, reinterpret_cast<const float*>(&sums) + 4, 4 * sizeof(float));
}

inline void reduce_block(const Vec<double>::type* c, double* row0, double* row1) {
  typedef Vec<double>::type V;
  typedef long long M __attribute__((vector_size(32)));
  const M even = {0, 4, 2, 6}, odd = {1, 5, 3, 7}, low = {0, 1, 4, 5}, high = {2, 3, 6, 7};
  auto hadd = [&](V a, V b) { return __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd); };
  for (int half = 0; half < 2; ++half) {
    V t0 = hadd(c[4 * half], c[4 * half + 1]), t1 = hadd(c[4 * half + 2], c[4 * half + 3]);
    V sums = __builtin_shuffle(t0, t1, low) + __builtin_shuffle(t0, t1, high);
    std::memcpy(half ? row1 : row0, &sums, 4 * sizeof(double));
  }
}

// value where test > 0, else 0, as PyTorch's ReLU and its gradient decide: a NaN test keeps
// the value (so a NaN passes through, to be caught by the loss, as it would in PyTorch).
template <typename V>
inline V keep_if_positive(V value, V test) {
  V zero = {};
  return test <= zero ? zero : value;
}

// Rows j .. j + J of out[:, t .. t + one vector]: J accumulators held in registers while the
// inputs stream past, one broadcast weight each.
template <typename T, int J, bool Relu>
inline void linear_block(int j, int t, int a, int n, const T* W, int ws, int is, const T* bias,
                         const T* in, T* out, const T* mask) {
  typedef typename Vec<T>::type V;
  V c[J];
  for (int q = 0; q < J; ++q) c[q] = V{} + (bias ? bias[j + q] : T(0));
  const T* w = W + j * ws;
  for (int i = 0; i < a; ++i) {
    V h = load(in + i * n + t);
    for (int q = 0; q < J; ++q) c[q] += w[q * ws + i * is] * h;
  }
  for (int q = 0; q < J; ++q) {
    if (Relu) c[q] = keep_if_positive(c[q], c[q]);
    if (mask) c[q] = keep_if_positive(c[q], load(mask + (j + q) * n + t));
    store(out + (j + q) * n + t, c[q]);
  }
}

// out[j][t] = bias[j] + sum_i W[j * ws + i * is] * in[i][t]   (j < o, i < a, t < n), then
// ReLU (Relu) or a mask: kept where mask[j][t] > 0 (mask != nullptr). bias may be null.
template <typename T, bool Relu>
__attribute__((noinline)) void linear(int o, int a, int n, const T* W, int ws, int is,
                                      const T* bias, const T* in, T* out, const T* mask) {
  for (int t = 0; t < n; t += Vec<T>::width) {
    int j = 0;
    for (; j + 8 <= o; j += 8) linear_block<T, 8, Relu>(j, t, a, n, W, ws, is, bias, in, out, mask);
    for (; j + 4 <= o; j += 4) linear_block<T, 4, Relu>(j, t, a, n, W, ws, is, bias, in, out, mask);
    for (; j < o; ++j) linear_block<T, 1, Relu>(j, t, a, n, W, ws, is, bias, in, out, mask);
  }
}

// out[j] = sum_t A[j][t]   (j < o)
template <typename T>
void row_sums(int o, int n, const T* A, T* out) {
  typedef typename Vec<T>::type V;
  int j = 0;
  for (; j + 8 <= o; j += 8) {
    V c[8] = {};
    for (int t = 0; t < n; t += Vec<T>::width)
      for (int q = 0; q < 8; ++q) c[q] += load(A + (j + q) * n + t);
    reduce_block(c, out + j, out + j + 4);
  }
  for (; j < o; ++j) {
    V c = {};
    for (int t = 0; t < n; t += Vec<T>::width) c += load(A + j * n + t);
    out[j] = total<T>(c);
  }
}

// G[j][i] = sum_t A[j][t] * B[i][t]   (j < o, i < a): a 2 x 4 block of dot products at a time.
template <typename T>
__attribute__((noinline)) void gram(int o, int a, int n, const T* A, const T* B, T* G) {
  typedef typename Vec<T>::type V;
  const int step = Vec<T>::width;
  int j = 0;
  for (; j + 2 <= o; j += 2) {
    int i = 0;
    for (; i + 4 <= a; i += 4) {
      V c[2][4] = {};
      const T* x[2] = {A + j * n, A + (j + 1) * n};
      const T* y[4] = {B + i * n, B + (i + 1) * n, B + (i + 2) * n, B + (i + 3) * n};
      for (int t = 0; t < n; t += step) {
        V x0 = load(x[0] + t), x1 = load(x[1] + t);
        for (int q = 0; q < 4; ++q) {
          V yq = load(y[q] + t);
          c[0][q] += x0 * yq;
          c[1][q] += x1 * yq;
        }
      }
      reduce_block(&c[0][0], G + j * a + i, G + (j + 1) * a + i);
    }
    for (; i < a; ++i)
      for (int p = j; p < j + 2; ++p) {
        V c = {};
        for (int t = 0; t < n; t += step) c += load(A + p * n + t) * load(B + i * n + t);
        G[p * a + i] = total<T>(c);
      }
  }
  for (; j < o; ++j)
    for (int i = 0; i < a; ++i) {
      V c = {};
      for (int t = 0; t < n; t += step) c += load(A + j * n + t) * load(B + i * n + t);
      G[j * a + i] = total<T>(c);
    }
}

// Member m's prediction for each row, into out (n): its adapters folded into M, its layers'
// outputs (after ReLU) into H.
template <typename T>
void forward(int m, int n, int layers, const int* sizes, const T* x, T* const* W, T* const* b,
             T* const* r, T* const* s, const T* hw, const T* hb, T* const* M, T* const* H,
             T* out) {
  const T* h = x;
  for (int l = 0; l < layers; ++l) {
    int a = sizes[l], o = sizes[l + 1];
    T* Mm = M[l] + static_cast<long>(m) * o * a;
    fold<T>(o, a, W[l], r[l] + m * a, s[l] + m * o, Mm);
    T* Hm = H[l] + static_cast<long>(m) * o * n;
    linear<T, true>(o, a, n, Mm, a, 1, b[l] + m * o, h, Hm, nullptr);
    h = Hm;
  }
  const int last = sizes[layers];
  linear<T, false>(1, last, n, hw + m * last, last, 1, hb + m, h, out, nullptr);
}

// Member m's forward and backward: its loss (the sum of squared residuals, each times its
// row's weight w[t] where w is given) and its dM, db, head gradients (dLoss/d(residual) is
// 2 * scale * residual, times w[t]). D, G1 and G2 are the calling thread's own scratch.
template <typename T>
T member(int m, int n, int rows, int layers, const int* sizes, const T* x, const T* y,
         const T* w, T scale,
         T* const* W, T* const* b, T* const* r, T* const* s, const T* hw, const T* hb,
         T* const* db, T* dhw, T* dhb, T* const* M, T* const* dM, T* const* H, T* D, T* G1,
         T* G2) {
  forward<T>(m, n, layers, sizes, x, W, b, r, s, hw, hb, M, H, D);
  const int last = sizes[layers];
  const T* h = H[layers - 1] + static_cast<long>(m) * last * n;
  T loss = 0, sum = 0;
  for (int t = 0; t < rows; ++t) {
    T d = D[t] - y[t];
    T weighted = w ? w[t] * d : d;
    loss += weighted * d;
    d = weighted * scale;
    D[t] = d;
    sum += d;
  }
  for (int t = rows; t < n; ++t) D[t] = 0;
  dhb[m] = sum;
  gram<T>(1, last, n, D, h, dhw + m * last);
  T* dz = G1;
  T* other = G2;
  linear<T, false>(last, 1, n, hw + m * last, 1, 1, nullptr, D, dz, h);
  for (int l = layers - 1; l >= 0; --l) {
    int a = sizes[l], o = sizes[l + 1];
    const T* in = l == 0 ? x : H[l - 1] + static_cast<long>(m) * a * n;
    row_sums<T>(o, n, dz, db[l] + m * o);
    gram<T>(o, a, n, dz, in, dM[l] + static_cast<long>(m) * o * a);
    if (l > 0) {
      linear<T, false>(a, o, n, M[l] + static_cast<long>(m) * o * a, 1, a, nullptr, dz, other,
                       in);
      T* swap = dz;
      dz = other;
      other = swap;
    }
  }
  return loss;
}

// The members split between `threads` threads (each with its own scratch: D, G1 and G2 hold
// `threads` blocks); then the shared weights' gradients, summed over members in one order
// whatever the thread count, so the gradients are the same bits on any number of threads.
template <typename T>
T step(int threads, int k, int n, int rows, int layers, const int* sizes, const T* x,
       const T* y, const T* w, T scale, T* const* W, T* const* b, T* const* r, T* const* s, const T* hw,
       const T* hb, T* const* dW, T* const* db, T* const* dr, T* const* ds, T* dhw, T* dhb,
       T* const* M, T* const* dM, T* const* H, T* D, T* G1, T* G2, T* losses) {
  int width = 0;
  for (int l = 0; l <= layers; ++l) width = sizes[l] > width ? sizes[l] : width;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int m = 0; m < k; ++m) {
    const long at = omp_get_thread_num();
    losses[m] = member<T>(m, n, rows, layers, sizes, x, y, w, scale, W, b, r, s, hw, hb, db, dhw,
                          dhb, M, dM, H, D + at * n, G1 + at * width * n, G2 + at * width * n);
  }
  for (int l = 0; l < layers; ++l)
    unfold<T>(threads, k, sizes[l + 1], sizes[l], W[l], r[l], s[l], dM[l], dW[l], dr[l], ds[l]);
  T loss = 0;
  for (int m = 0; m < k; ++m) loss += losses[m];
  return loss;
}

// The members' mean prediction's sum of squared residuals over the first `rows` rows (each
// times its row's weight w[t] where w is given); each member's predictions land in P (k, n).
template <typename T>
T mean_loss(int threads, int k, int n, int rows, int layers, const int* sizes, const T* x,
            const T* y, const T* w, T* const* W, T* const* b, T* const* r, T* const* s, const T* hw,
            const T* hb, T* const* M, T* const* H, T* P) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int m = 0; m < k; ++m) forward<T>(m, n, layers, sizes, x, W, b, r, s, hw, hb, M, H, P + m * n);
  T loss = 0;
  for (int t = 0; t < rows; ++t) {
    T mean = 0;
    for (int m = 0; m < k; ++m) mean += P[m * n + t];
    T d = mean / k - y[t];
    loss += (w ? w[t] : T(1)) * d * d;
  }
  return loss;
}

}  // namespace

#define NNREG_STEP(name, T)                                                                 \
  extern "C" T name(int threads, int k, int n, int rows, int layers, const int* sizes,      \
                    const T* x, const T* y, const T* w, T scale, T* const* W, T* const* b,  \
                    T* const* r, T* const* s, const T* hw, const T* hb, T* const* dW,       \
                    T* const* db, T* const* dr, T* const* ds, T* dhw, T* dhb, T* const* M,  \
                    T* const* dM, T* const* H, T* D, T* G1, T* G2, T* losses) {             \
    return step<T>(threads, k, n, rows, layers, sizes, x, y, w, scale, W, b, r, s, hw, hb,  \
                   dW, db, dr, ds, dhw, dhb, M, dM, H, D, G1, G2, losses);                  \
  }

#define NNREG_MEAN_LOSS(name, T)                                                           \
  extern "C" T name(int threads, int k, int n, int rows, int layers, const int* sizes,     \
                    const T* x, const T* y, const T* w, T* const* W, T* const* b,          \
                    T* const* r, T* const* s, const T* hw, const T* hb, T* const* M,       \
                    T* const* H, T* P) {                                                   \
    return mean_loss<T>(threads, k, n, rows, layers, sizes, x, y, w, W, b, r, s, hw, hb, M, \
                        H, P);                                                             \
  }

NNREG_STEP(nnreg_tabm_step_float32, float)
NNREG_STEP(nnreg_tabm_step_float64, double)
NNREG_MEAN_LOSS(nnreg_tabm_mean_loss_float32, float)
NNREG_MEAN_LOSS(nnreg_tabm_mean_loss_float64, double)
