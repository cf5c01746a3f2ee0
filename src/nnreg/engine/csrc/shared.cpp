// Passes of nnreg.engine.shared.FastTabM's PyTorch step, compiled (nnreg.engine.native loads
// them): a "tabm" layer's adapters folded into per-member weights and back (adapters.h), and an
// activation with inverted dropout in one pass over a layer's (members, rows, width) block,
// forward and backward. The forward pass leaves mask * act'(pre-activation) where the
// pre-activations were, so the backward pass is one product. On the last layer a one-output head
// joins the passes: forward writes the head's output and not the layer's, backward starts from
// the output's gradient and makes the layer's output (and mask) again.
//
// The dropout mask is not drawn unit by unit from a generator: it is a function of one 64-bit
// key (drawn from the fit's generator per mask) and each unit's index, so a pass makes it where
// it needs it and no mask is stored, written or read. Unit u's 16 bits
// are bits 16 (u % 4) to 16 (u % 4) + 15 of SplitMix64's output for the counter u / 4:
//   word(w) = mix(key + (w + 1) * 0x9E3779B97F4A7C15)
//   mix(z)  = z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27, z *= 0x94D049BB133111EB,
//             z ^= z >> 31
// read as a signed 16-bit number, the unit is kept (times `factor`) where it is below
// `threshold`. nnreg.engine.kernels.CounterDropout computes the same bits with PyTorch
// operations (for the autograd engine, and where nothing is compiled).
//
// Activations: 0 ReLU, 1 SiLU. exp is computed here (Cephes' range reduction and polynomials:
// within a few units in the last place of float, about 1e-16 relative in double) so that the
// loops vectorise without fast-math.
#include <cstdint>
#include <cstring>
#include <vector>

#include "adapters.h"

// Wide vectors for the activation passes: on processors with 512-bit vectors GCC otherwise
// prefers 256-bit ones (the adapters' sums below keep them: they run slower in 512).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("prefer-vector-width=512")
#endif

namespace {

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The 16-bit draws of units first .. first + n - 1 into bits[0 .. n); words has room for
// n / 4 + 2 of them.
inline void draws(uint64_t key, long first, long n, uint64_t* words, int16_t* bits) {
  const long w0 = first >> 2, w1 = (first + n - 1) >> 2;
  for (long w = w0; w <= w1; ++w)
    words[w - w0] = mix(key + static_cast<uint64_t>(w + 1) * 0x9E3779B97F4A7C15ull);
  std::memcpy(bits, reinterpret_cast<const char*>(words) + 2 * (first - 4 * w0), 2 * n);
}

inline float exp_(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2**23
  const float fn = shifted - 12582912.0f;  // the integer nearest x / ln(2)
  const int32_t n = __builtin_bit_cast(int32_t, shifted) - 0x4B400000;  // its bits
  const float r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (n + 127) << 23);
}

inline double exp_(double x) {
  x = x > 709.0 ? 709.0 : x;
  x = x < -708.0 ? -708.0 : x;
  const double shifted = x * 1.4426950408889634073599 + 6755399441055744.0;  // 1.5 * 2**52
  const double fn = shifted - 6755399441055744.0;
  const int64_t n = __builtin_bit_cast(int64_t, shifted) - 0x4338000000000000;
  const double r = (x - fn * 6.93145751953125e-1) - fn * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * p / (q - p);
  return e * __builtin_bit_cast(double, (n + 1023) << 52);
}

// One layer's (k, rows, width) block and its dropout: the bias is per member ((k, width)) or
// shared ((width,)); unit (m, t, j) has the index first + (m * rows + t) * width + j.
template <typename T>
struct Layer {
  long k, rows, width;
  const T* bias;
  int per_member;
  uint64_t key;
  long first;
  int threshold;
  T factor;
  int activation;  // 0 ReLU, 1 SiLU

  const T* bias_of(long member) const { return bias + (per_member ? member * width : 0); }
};

// A row's units: a = act(z + b) * mask and, with `Derivative`, z = mask * act'(z + b) in place
// (what the backward pass multiplies by); without, z is left as it is.
template <bool Derivative, typename T>
void row_forward(const Layer<T>& L, T* __restrict__ z, const T* __restrict__ b,
                 const int16_t* __restrict__ bits, T* __restrict__ a) {
  const T factor = L.factor;  // locals: not loads the compiler must guard
  const int threshold = L.threshold;
  if (L.activation == 0) {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      a[j] = (x > T(0) ? x : T(0)) * keep;
      if constexpr (Derivative) z[j] = x > T(0) ? keep : T(0);
    }
  } else {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      const T sigmoid = T(1) / (T(1) + exp_(-x));
      a[j] = x * sigmoid * keep;
      if constexpr (Derivative) z[j] = keep * (sigmoid * (T(1) + x * (T(1) - sigmoid)));
    }
  }
}

// Rows are taken a few at a time, about BLOCK units, whose draws are made in one go.
constexpr long BLOCK = 2048;

template <typename T>
long chunk_rows(const Layer<T>& L) {
  return L.width >= BLOCK ? 1 : BLOCK / L.width;
}

// A one-output head on a layer: out = A @ weight[m] + bias[m] per member m ((k, width) and
// (k,) weights and biases); backward, from D = dLoss/dout, the layer's G = D weight[m]^T and
// the weight's gradient sum_rows A * D. A itself is never written: the backward pass makes it
// again from Z (as it makes the mask).
template <typename T>
struct Head {
  const T* weight = nullptr;  // null: no head, A written out
  const T* bias = nullptr;
  T* out = nullptr;      // forward: (k, rows)
  const T* D = nullptr;  // backward: (k, rows)
  T* dweight = nullptr;  // backward: (k, width)
};

// The sum of x[j] * y[j], in sixteen interleaved partial sums (one order, any vector width).
template <typename T>
T dot(long n, const T* __restrict__ x, const T* __restrict__ y) {
  T part[16] = {};
  long j = 0;
  for (; j + 16 <= n; j += 16)
    for (int q = 0; q < 16; ++q) part[q] += x[j + q] * y[j + q];
  for (; j < n; ++j) part[0] += x[j] * y[j];
  for (int width = 8; width > 0; width /= 2)
    for (int q = 0; q < width; ++q) part[q] += part[q + width];
  return part[0];
}

// A row's units: g = g * d (d = mask * act'), and db += g.
template <typename T>
void row_backward(long width, const T* __restrict__ d, T* __restrict__ g, T* __restrict__ db) {
  for (long j = 0; j < width; ++j) {
    g[j] *= d[j];
    db[j] += g[j];
  }
}

// A row's units with the head's gradient: a = act(z + b) * mask, g = d * w * mask *
// act'(z + b), db += g, dw += a * d.
template <typename T>
void row_backward_head(const Layer<T>& L, const T* __restrict__ z, const T* __restrict__ b,
                       const int16_t* __restrict__ bits, const T* __restrict__ w, T d,
                       T* __restrict__ g, T* __restrict__ db, T* __restrict__ dw) {
  const T factor = L.factor;
  const int threshold = L.threshold;
  if (L.activation == 0) {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      g[j] = x > T(0) ? d * w[j] * keep : T(0);
      db[j] += g[j];
      dw[j] += (x > T(0) ? x : T(0)) * keep * d;
    }
  } else {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      const T sigmoid = T(1) / (T(1) + exp_(-x));
      g[j] = d * w[j] * keep * (sigmoid * (T(1) + x * (T(1) - sigmoid)));
      db[j] += g[j];
      dw[j] += x * sigmoid * keep * d;
    }
  }
}

// A = act(Z + bias) * mask, or with a head its output alone; chunks of rows split between
// threads.
template <typename T>
void forward(int threads, const Layer<T>& L, T* Z, T* A, const Head<T>& head) {
  const long total = L.k * L.rows, per = chunk_rows(L), chunks = (total + per - 1) / per;
#pragma omp parallel num_threads(threads)
  {
    std::vector<int16_t> bits(per * L.width);
    std::vector<uint64_t> words(per * L.width / 4 + 2);
    std::vector<T> row_values(head.weight ? L.width : 0);
#pragma omp for schedule(static)
    for (long chunk = 0; chunk < chunks; ++chunk) {
      const long row0 = chunk * per, row1 = row0 + per < total ? row0 + per : total;
      draws(L.key, L.first + row0 * L.width, (row1 - row0) * L.width, words.data(), bits.data());
      for (long row = row0; row < row1; ++row) {
        const long at = row * L.width, m = row / L.rows;
        const int16_t* row_bits = bits.data() + (row - row0) * L.width;
        if (!head.weight) {
          row_forward<true>(L, Z + at, L.bias_of(m), row_bits, A + at);
          continue;
        }
        row_forward<false>(L, Z + at, L.bias_of(m), row_bits, row_values.data());
        head.out[row] = dot(L.width, row_values.data(), head.weight + m * L.width) + head.bias[m];
      }
    }
  }
}

// G = G * Z in place, Z holding mask * act'(pre-activation) from the forward pass: the loss's
// gradient by the pre-activations. Or with a head (Z the pre-activations without the bias, as
// its forward pass left them): G = D weight^T * mask * act'(Z + bias) and the head weight's
// gradient, the mask and activation made again. And the bias's gradient. Each member's sums
// over its rows run in row order (members split between threads), then for a shared bias the
// sum over members in member order.
template <typename T>
void backward(int threads, const Layer<T>& L, T* G, const T* Z, T* db, const Head<T>& head) {
  std::vector<T> sums(L.k * L.width);
  const long per = chunk_rows(L);
#pragma omp parallel num_threads(threads)
  {
    std::vector<int16_t> bits(per * L.width);
    std::vector<uint64_t> words(per * L.width / 4 + 2);
#pragma omp for schedule(static)
    for (long m = 0; m < L.k; ++m) {
      T* sum = L.per_member ? db + m * L.width : sums.data() + m * L.width;
      std::memset(sum, 0, sizeof(T) * L.width);
      T* dw = head.weight ? head.dweight + m * L.width : nullptr;
      if (!dw) {
        for (long at = m * L.rows * L.width; at < (m + 1) * L.rows * L.width; at += L.width)
          row_backward(L.width, Z + at, G + at, sum);
        continue;
      }
      std::memset(dw, 0, sizeof(T) * L.width);
      for (long t0 = 0; t0 < L.rows; t0 += per) {
        const long t1 = t0 + per < L.rows ? t0 + per : L.rows, row0 = m * L.rows + t0;
        draws(L.key, L.first + row0 * L.width, (t1 - t0) * L.width, words.data(), bits.data());
        for (long t = t0; t < t1; ++t) {
          const long at = (m * L.rows + t) * L.width;
          const int16_t* row_bits = bits.data() + (t - t0) * L.width;
          row_backward_head(L, Z + at, L.bias_of(m), row_bits, head.weight + m * L.width,
                            head.D[m * L.rows + t], G + at, sum, dw);
        }
      }
    }
  }
  if (L.per_member) return;
  std::memset(db, 0, sizeof(T) * L.width);
  for (long m = 0; m < L.k; ++m)
    for (long j = 0; j < L.width; ++j) db[j] += sums[m * L.width + j];
}

}  // namespace

#define NNREG_DROPOUT(T, suffix)                                                               \
  extern "C" void nnreg_dropout_forward_##suffix(                                              \
      int threads, long k, long rows, long width, T* Z, const T* bias, int per_member, T* A,   \
      uint64_t key, long first, int threshold, T factor, int activation) {                     \
    const Layer<T> L{k, rows, width, bias, per_member, key, first, threshold, factor,          \
                     activation};                                                              \
    forward<T>(threads, L, Z, A, Head<T>{});                                                   \
  }                                                                                            \
  extern "C" void nnreg_dropout_backward_##suffix(int threads, long k, long rows, long width,   \
                                                 T* G, const T* D, int per_member, T* db) {    \
    const Layer<T> L{k, rows, width, nullptr, per_member, 0, 0, 0, T(0), 0};                   \
    backward<T>(threads, L, G, D, db, Head<T>{});                                              \
  }                                                                                            \
  extern "C" void nnreg_head_forward_##suffix(                                                 \
      int threads, long k, long rows, long width, const T* Z, const T* bias, int per_member,   \
      const T* head_weight, const T* head_bias, T* out, uint64_t key, long first,              \
      int threshold, T factor, int activation) {                                               \
    const Layer<T> L{k, rows, width, bias, per_member, key, first, threshold, factor,          \
                     activation};                                                              \
    Head<T> head;                                                                              \
    head.weight = head_weight, head.bias = head_bias, head.out = out;                          \
    forward<T>(threads, L, const_cast<T*>(Z), nullptr, head); /* Z is not written */           \
  }                                                                                            \
  extern "C" void nnreg_head_backward_##suffix(                                                \
      int threads, long k, long rows, long width, T* G, const T* Z, const T* bias,             \
      int per_member, T* db, const T* head_weight, const T* D, T* dhead, uint64_t key,         \
      long first, int threshold, T factor, int activation) {                                   \
    const Layer<T> L{k, rows, width, bias, per_member, key, first, threshold, factor,          \
                     activation};                                                              \
    Head<T> head;                                                                              \
    head.weight = head_weight, head.D = D, head.dweight = dhead;                               \
    backward<T>(threads, L, G, Z, db, head);                                                   \
  }

#define NNREG_ADAPTERS(T, suffix)                                                           \
  extern "C" void nnreg_fold_##suffix(int threads, int k, int o, int a, const T* W,          \
                                      const T* r, const T* s, T* M) {                         \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                        \
    for (int m = 0; m < k; ++m) nnreg::fold<T>(o, a, W, r + m * a, s + m * o, M + m * o * a); \
  }                                                                                          \
  extern "C" void nnreg_unfold_##suffix(int threads, int k, int o, int a, const T* W,        \
                                        const T* r, const T* s, const T* dM, T* dW, T* dr,   \
                                        T* ds) {                                              \
    nnreg::unfold<T>(threads, k, o, a, W, r, s, dM, dW, dr, ds);                              \
  }

NNREG_DROPOUT(float, float32)
NNREG_DROPOUT(double, float64)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

NNREG_ADAPTERS(float, float32)
NNREG_ADAPTERS(double, float64)

// The draws alone, for checking them against the PyTorch operations.
extern "C" void nnreg_dropout_draws(long n, int16_t* out, uint64_t key, long first) {
  std::vector<uint64_t> words(n / 4 + 2);
  draws(key, first, n, words.data(), out);
}
