// Passes of nnreg.engine.shared.FastTabM's PyTorch step, compiled (nnreg.engine.native loads
// them): a "tabm" layer's adapters folded into per-member weights and back (adapters.h), and an
// activation with inverted dropout in one pass over a layer's (members, rows, width) block,
// forward and backward.
//
// The dropout mask is not drawn unit by unit from a generator: it is a function of one 64-bit
// key (drawn from the fit's generator per mask) and each unit's index, so the backward pass
// makes it again where it needs it and no mask is stored, written or read. Unit u's 16 bits
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

// A row's units: a = act(z + b) * mask.
template <typename T>
void row_forward(const Layer<T>& L, const T* __restrict__ z, const T* __restrict__ b,
                 const int16_t* __restrict__ bits, T* __restrict__ a) {
  const T factor = L.factor;  // locals: not loads the compiler must guard
  const int threshold = L.threshold;
  if (L.activation == 0) {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      a[j] = (x > T(0) ? x : T(0)) * keep;
    }
  } else {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      a[j] = x * (T(1) / (T(1) + exp_(-x))) * keep;
    }
  }
}

// A row's units: g = g * mask * act'(z + b), and db += g.
template <typename T>
void row_backward(const Layer<T>& L, const T* __restrict__ z, const T* __restrict__ b,
                  const int16_t* __restrict__ bits, T* __restrict__ g, T* __restrict__ db) {
  const T factor = L.factor;
  const int threshold = L.threshold;
  if (L.activation == 0) {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      g[j] = z[j] + b[j] > T(0) ? g[j] * keep : T(0);
      db[j] += g[j];
    }
  } else {
    for (long j = 0; j < L.width; ++j) {
      const T keep = bits[j] < threshold ? factor : T(0);
      const T x = z[j] + b[j];
      const T sigmoid = T(1) / (T(1) + exp_(-x));
      g[j] = g[j] * keep * (sigmoid * (T(1) + x * (T(1) - sigmoid)));
      db[j] += g[j];
    }
  }
}

// Rows are taken a few at a time, about BLOCK units, whose draws are made in one go.
constexpr long BLOCK = 2048;

template <typename T>
long chunk_rows(const Layer<T>& L) {
  return L.width >= BLOCK ? 1 : BLOCK / L.width;
}

// A = act(Z + bias) * mask, chunks of rows split between threads.
template <typename T>
void forward(int threads, const Layer<T>& L, const T* Z, T* A) {
  const long total = L.k * L.rows, per = chunk_rows(L), chunks = (total + per - 1) / per;
#pragma omp parallel num_threads(threads)
  {
    std::vector<int16_t> bits(per * L.width);
    std::vector<uint64_t> words(per * L.width / 4 + 2);
#pragma omp for schedule(static)
    for (long chunk = 0; chunk < chunks; ++chunk) {
      const long row0 = chunk * per, row1 = row0 + per < total ? row0 + per : total;
      draws(L.key, L.first + row0 * L.width, (row1 - row0) * L.width, words.data(), bits.data());
      for (long row = row0; row < row1; ++row) {
        const long at = row * L.width;
        const int16_t* row_bits = bits.data() + (row - row0) * L.width;
        row_forward(L, Z + at, L.bias_of(row / L.rows), row_bits, A + at);
      }
    }
  }
}

// G = G * mask * act'(Z + bias) in place (the loss's gradient by the pre-activations), and
// the bias's gradient: each member's sum over its rows, in row order (members split between
// threads), then for a shared bias the sum over members in member order.
template <typename T>
void backward(int threads, const Layer<T>& L, T* G, const T* Z, T* db) {
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
      for (long t0 = 0; t0 < L.rows; t0 += per) {
        const long t1 = t0 + per < L.rows ? t0 + per : L.rows, row0 = m * L.rows + t0;
        draws(L.key, L.first + row0 * L.width, (t1 - t0) * L.width, words.data(), bits.data());
        for (long t = t0; t < t1; ++t) {
          const long at = (m * L.rows + t) * L.width;
          const int16_t* row_bits = bits.data() + (t - t0) * L.width;
          row_backward(L, Z + at, L.bias_of(m), row_bits, G + at, sum);
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
      int threads, long k, long rows, long width, const T* Z, const T* bias, int per_member,   \
      T* A, uint64_t key, long first, int threshold, T factor, int activation) {               \
    const Layer<T> L{k, rows, width, bias, per_member, key, first, threshold, factor,          \
                     activation};                                                              \
    forward<T>(threads, L, Z, A);                                                              \
  }                                                                                            \
  extern "C" void nnreg_dropout_backward_##suffix(                                             \
      int threads, long k, long rows, long width, T* G, const T* Z, const T* bias,             \
      int per_member, T* db, uint64_t key, long first, int threshold, T factor,                \
      int activation) {                                                                        \
    const Layer<T> L{k, rows, width, bias, per_member, key, first, threshold, factor,          \
                     activation};                                                              \
    backward<T>(threads, L, G, Z, db);                                                         \
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
NNREG_ADAPTERS(float, float32)
NNREG_ADAPTERS(double, float64)

// The draws alone, for checking them against the PyTorch operations.
extern "C" void nnreg_dropout_draws(long n, int16_t* out, uint64_t key, long first) {
  std::vector<uint64_t> words(n / 4 + 2);
  draws(key, first, n, words.data(), out);
}
