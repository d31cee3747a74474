// Native TensorFlow ops of tfe_lite, built by `python -m tfe_lite.ops.build` against the installed
// TensorFlow with -march=native:
//
//   RingMatMul         a @ b mod 2^64 on int64 (rank 2, or equal batch dimensions in front), with an
//                      AVX-512 IFMA kernel and an AMX kernel.
//   ChaCha20Keystream  the ChaCha20 keystream (RFC 8439 block function) as an int64 tensor.
//   ChaCha20Normal     standard normals (float32 or float64) from that keystream by Box-Muller, for DP noise.
//   RingBitSlice       the low bit planes of int64 elements, 64 elements per word (binary circuits).
//   RingPatches        im2col of NHWC int64 tensors (the ring's convolutions and pooling windows).
//
// All are pure functions of their inputs (not stateful) with CPU kernels that shard their work over the
// device's intra-op worker threads. tfe_lite/ops/__init__.py and tfe_lite/prg.py hold the pure-TensorFlow
// twins that must give bit-identical results (ChaCha20Normal: equal up to floating-point rounding;
// RingBitSlice, RingPatches: tfe_lite/ring.py).

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/tensor_util.h"
#include "tensorflow/core/util/work_sharder.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tfe_lite ring ops assume a little-endian machine (keystream words are stored as int64 bytes)"
#endif

#ifndef TFE_LITE_SOURCE_SHA256
#define TFE_LITE_SOURCE_SHA256 "unknown"
#endif

// The build records the SHA-256 of this file, so the loader can refuse a library built from older source.
extern "C" __attribute__((visibility("default"))) const char* tfe_lite_ring_ops_source_sha256() {
  return TFE_LITE_SOURCE_SHA256;
}

namespace tfe_lite {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

using u32 = uint32_t;

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}
using u64 = uint64_t;

// Runs work(begin, end) over [0, total) on the op's intra-op threads; cost is per unit, in rough cycles.
template <typename Work>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost_per_unit, Work work) {
  const auto& threads = *context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads.num_threads, threads.workers, total, cost_per_unit,
                      [&work](int64_t begin, int64_t end) { work(begin, end); });
}

// ---------------------------------------------------------------------------------------------------------
// Ring matmul, vector kernel: C = A B mod 2^64, row-major, via packed panels and a register-blocked
// micro-kernel. (The AMX kernel below is about 3x faster where the CPU has AMX.)
//
// With AVX-512 IFMA (52-bit multiply-accumulate, two per cycle here) a 64-bit product mod 2^64 costs three
// instructions instead of vpmullq's three micro-ops plus an add. Split x = a0 + 2^52 a1 (a0 < 2^52,
// a1 < 2^12) and y = b0 + 2^52 b1:
//
//   x y = a0 b0 + 2^52 (a0 b1 + a1 b0)                              (mod 2^64)
//   a0 b0 = lo52(a0 b0) + 2^52 hi52(a0 b0)                          (two IFMAs: vpmadd52luq, vpmadd52huq)
//   a0 b1 + a1 b0 = a0' b1 + a1 b0'  (mod 2^12), with a0' = a0 mod 2^12, b0' = b0 mod 2^12
//
// The cross term is one IFMA on packed operands u = a0' + 2^40 a1 and v = b0' + 2^40 b1:
//   lo52(u v) = a0' b0' + 2^40 ((a0' b1 + a1 b0') mod 2^12)        (a0' b0' < 2^24, 2^80 a1 b1 drops out)
// Summed over k < 2^16 terms, the a0' b0' parts stay below 2^40, so bits 40..51 of the cross accumulator
// are exactly the cross sum mod 2^12. Per K block:
//   C += lo + 2^52 (hi + (cross >> 40))                              (mod 2^64)
// Without IFMA: an AVX2 kernel (below), or a portable one (that the compiler vectorizes) doing plain a * b.
// ---------------------------------------------------------------------------------------------------------

constexpr int64_t kMR = 4;     // rows of A per micro-panel
constexpr int64_t kNR = 16;    // columns of B per micro-panel
constexpr int64_t kKC = 128;   // K block: a packed B micro-panel (kKC x kNR, 32 KiB with IFMA) stays in L1
constexpr int64_t kMC = 128;   // rows of a C tile (one work item)
constexpr int64_t kNC = 128;   // columns of a C tile
constexpr int64_t kRowTilesPerPass = 8;  // C tiles of a column tile that go through K together

#if defined(__AVX512F__)
// Lane mask of the first `count` (clamped to 0..8) 64-bit lanes.
inline __mmask8 LowMask(int64_t count) {
  return count >= 8 ? 0xFF : count <= 0 ? 0 : static_cast<__mmask8>((1u << count) - 1);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512IFMA__)
constexpr int64_t kWords = 2;  // packed words per element: the value and its cross-term operand u / v
static_assert(kKC < (int64_t{1} << 16), "the IFMA cross accumulator holds at most 2^16 terms");

inline u64 CrossOperand(u64 x) { return (x & 0xFFF) | ((x >> 52) << 40); }

// A micro-panel, per k: kMR values then their kMR cross operands. B micro-panel, per k: kNR values then
// kNR cross operands. Rows/columns beyond the matrix are packed as zeros.
inline void PackA(const u64* a, int64_t rows, int64_t k_total, int64_t lda, u64* out) {
  for (int64_t k = 0; k < k_total; ++k, out += kWords * kMR) {
    for (int64_t i = 0; i < kMR; ++i) {
      const u64 x = i < rows ? a[i * lda + k] : 0;
      out[i] = x;
      out[kMR + i] = CrossOperand(x);
    }
  }
}

inline void PackB(const u64* b, int64_t cols, int64_t k_total, int64_t ldb, u64* out) {
  const __mmask8 m0 = LowMask(cols), m1 = LowMask(cols - 8);
  const __m512i low12 = _mm512_set1_epi64(0xFFF);
  for (int64_t k = 0; k < k_total; ++k, b += ldb, out += kWords * kNR) {
    const __m512i y0 = _mm512_maskz_loadu_epi64(m0, b);
    const __m512i y1 = _mm512_maskz_loadu_epi64(m1, b + 8);
    _mm512_store_si512(out, y0);
    _mm512_store_si512(out + 8, y1);
    _mm512_store_si512(out + 16, _mm512_or_si512(_mm512_and_si512(y0, low12),
                                                 _mm512_slli_epi64(_mm512_srli_epi64(y0, 52), 40)));
    _mm512_store_si512(out + 24, _mm512_or_si512(_mm512_and_si512(y1, low12),
                                                 _mm512_slli_epi64(_mm512_srli_epi64(y1, 52), 40)));
  }
}

// C[0:rows, 0:cols] (+)= Apanel Bpanel over kc steps; rows <= kMR, cols <= kNR.
inline void MicroKernel(int64_t kc, const u64* __restrict ap, const u64* __restrict bp, u64* c, int64_t ldc,
                        int64_t rows, int64_t cols, bool accumulate) {
  if (accumulate) {  // the C tile is read at the end: start fetching it now
    for (int64_t i = 0; i < rows; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kNR - 1), _MM_HINT_T0);
    }
  }
  __m512i lo[kMR][2], hi[kMR][2], cross[kMR][2];
  for (int i = 0; i < kMR; ++i) {
    for (int j = 0; j < 2; ++j) {
      lo[i][j] = hi[i][j] = cross[i][j] = _mm512_setzero_si512();
    }
  }
  for (int64_t k = 0; k < kc; ++k, ap += kWords * kMR, bp += kWords * kNR) {
    const __m512i b0 = _mm512_load_si512(bp);
    const __m512i b1 = _mm512_load_si512(bp + 8);
    const __m512i v0 = _mm512_load_si512(bp + 16);
    const __m512i v1 = _mm512_load_si512(bp + 24);
#pragma GCC unroll 4
    for (int i = 0; i < kMR; ++i) {
      const __m512i x = _mm512_set1_epi64(static_cast<long long>(ap[i]));
      const __m512i u = _mm512_set1_epi64(static_cast<long long>(ap[kMR + i]));
      lo[i][0] = _mm512_madd52lo_epu64(lo[i][0], x, b0);
      hi[i][0] = _mm512_madd52hi_epu64(hi[i][0], x, b0);
      cross[i][0] = _mm512_madd52lo_epu64(cross[i][0], u, v0);
      lo[i][1] = _mm512_madd52lo_epu64(lo[i][1], x, b1);
      hi[i][1] = _mm512_madd52hi_epu64(hi[i][1], x, b1);
      cross[i][1] = _mm512_madd52lo_epu64(cross[i][1], u, v1);
    }
  }
  const __mmask8 m0 = LowMask(cols), m1 = LowMask(cols - 8);
  // Constant indices only (a fully unrolled loop), so the accumulators stay in registers.
#pragma GCC unroll 4
  for (int i = 0; i < kMR; ++i, c += ldc) {
    if (i >= rows) break;
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      const __m512i high = _mm512_add_epi64(hi[i][j], _mm512_srli_epi64(cross[i][j], 40));
      __m512i sum = _mm512_add_epi64(lo[i][j], _mm512_slli_epi64(high, 52));
      const __mmask8 m = j == 0 ? m0 : m1;
      if (accumulate) sum = _mm512_add_epi64(sum, _mm512_maskz_loadu_epi64(m, c + 8 * j));
      _mm512_mask_storeu_epi64(c + 8 * j, m, sum);
    }
  }
}

#elif defined(__AVX2__)
// AVX2 (no 64-bit vector multiply): with x = xl + 2^32 xh and y = yl + 2^32 yh,
//   x y = xl yl + 2^32 (xl yh + xh yl)                              (mod 2^64)
// vpmuludq gives xl yl exactly (64-bit lanes); vpmulld of x with y's halves swapped gives xl yh and xh yl
// mod 2^32 in the two 32-bit halves of a lane. Summed over k with 64-bit adds (lo) and 32-bit adds (cross),
//   C = lo + 2^32 (cross_low_half + cross_high_half)                (mod 2^64)
// Two multiplies and two adds per 4 products; B is packed with each value's swapped copy beside it.
constexpr int64_t kWords = 2;  // packed words per element: the value and (B only) its halves swapped

inline void PackA(const u64* a, int64_t rows, int64_t k_total, int64_t lda, u64* out) {
  for (int64_t k = 0; k < k_total; ++k, out += kWords * kMR) {
    for (int64_t i = 0; i < kMR; ++i) {
      out[i] = i < rows ? a[i * lda + k] : 0;
      out[kMR + i] = 0;  // unused (the layout of the packed panels is shared with B's)
    }
  }
}

inline void PackB(const u64* b, int64_t cols, int64_t k_total, int64_t ldb, u64* out) {
  for (int64_t k = 0; k < k_total; ++k, b += ldb, out += kWords * kNR) {
    for (int64_t j = 0; j < kNR; ++j) {
      const u64 y = j < cols ? b[j] : 0;
      out[j] = y;
      out[kNR + j] = (y >> 32) | (y << 32);
    }
  }
}

// One pass: rows r0, r0 + 1 of the A micro-panel against columns j0 .. j0 + 7 of the B micro-panel.
inline void MicroPass(int64_t kc, const u64* __restrict ap, const u64* __restrict bp, int64_t r0, int64_t j0,
                      u64 out[kMR][kNR]) {
  __m256i lo[2][2], cross[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) lo[i][j] = cross[i][j] = _mm256_setzero_si256();
  }
  for (int64_t k = 0; k < kc; ++k, ap += kWords * kMR, bp += kWords * kNR) {
    const __m256i y0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + j0));
    const __m256i y1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + j0 + 4));
    const __m256i s0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + kNR + j0));
    const __m256i s1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + kNR + j0 + 4));
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m256i x = _mm256_set1_epi64x(static_cast<long long>(ap[r0 + i]));
      lo[i][0] = _mm256_add_epi64(lo[i][0], _mm256_mul_epu32(x, y0));
      cross[i][0] = _mm256_add_epi32(cross[i][0], _mm256_mullo_epi32(x, s0));
      lo[i][1] = _mm256_add_epi64(lo[i][1], _mm256_mul_epu32(x, y1));
      cross[i][1] = _mm256_add_epi32(cross[i][1], _mm256_mullo_epi32(x, s1));
    }
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      const __m256i c = cross[i][j];
      const __m256i high = _mm256_add_epi64(c, _mm256_slli_epi64(c, 32));  // (c_lo + c_hi) in the high half
      const __m256i sum = _mm256_add_epi64(lo[i][j], _mm256_and_si256(high, _mm256_set1_epi64x(
          static_cast<long long>(0xFFFFFFFF00000000ULL))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&out[r0 + i][j0 + 4 * j]), sum);
    }
  }
}

inline void MicroKernel(int64_t kc, const u64* __restrict ap, const u64* __restrict bp, u64* c, int64_t ldc,
                        int64_t rows, int64_t cols, bool accumulate) {
  alignas(32) u64 acc[kMR][kNR];
  for (int64_t r0 = 0; r0 < kMR; r0 += 2) {
    if (r0 >= rows) break;
    for (int64_t j0 = 0; j0 < kNR; j0 += 8) {
      if (j0 >= cols) break;
      MicroPass(kc, ap, bp, r0, j0, acc);
    }
  }
  for (int64_t i = 0; i < rows; ++i, c += ldc) {
    for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + acc[i][j] : acc[i][j];
  }
}

#else  // portable kernel

constexpr int64_t kWords = 1;

inline void PackA(const u64* a, int64_t rows, int64_t k_total, int64_t lda, u64* out) {
  for (int64_t k = 0; k < k_total; ++k, out += kMR) {
    for (int64_t i = 0; i < kMR; ++i) out[i] = i < rows ? a[i * lda + k] : 0;
  }
}

inline void PackB(const u64* b, int64_t cols, int64_t k_total, int64_t ldb, u64* out) {
  for (int64_t k = 0; k < k_total; ++k, b += ldb, out += kNR) {
    for (int64_t j = 0; j < kNR; ++j) out[j] = j < cols ? b[j] : 0;
  }
}

inline void MicroKernel(int64_t kc, const u64* __restrict ap, const u64* __restrict bp, u64* c, int64_t ldc,
                        int64_t rows, int64_t cols, bool accumulate) {
  u64 acc[kMR][kNR] = {};
  for (int64_t k = 0; k < kc; ++k, ap += kMR, bp += kNR) {
    for (int64_t i = 0; i < kMR; ++i) {
      for (int64_t j = 0; j < kNR; ++j) acc[i][j] += ap[i] * bp[j];
    }
  }
  for (int64_t i = 0; i < rows; ++i, c += ldc) {
    for (int64_t j = 0; j < cols; ++j) c[j] = accumulate ? c[j] + acc[i][j] : acc[i][j];
  }
}

#endif

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The blocked GEMM of `batch` independent products C_i = A_i B_i (A_i [m, k], B_i [k, n], row-major and
// contiguous), free of TensorFlow types so that it can be benchmarked alone.
//
// Packed layout: per batch entry and K block (k0, kc), all micro-panels of that block are contiguous, so a
// K block of a C tile reads one contiguous stretch of packed A and of packed B.
struct Gemm {
  using Packed = u64;
  const u64* a;
  const u64* b;
  u64* c;
  int64_t batch, m, k, n;

  int64_t a_panels() const { return CeilDiv(m, kMR); }
  int64_t b_panels() const { return CeilDiv(n, kNR); }
  int64_t a_packed_words() const { return batch * a_panels() * kWords * kMR * k; }
  int64_t b_packed_words() const { return batch * b_panels() * kWords * kNR * k; }
  int64_t row_tiles() const { return CeilDiv(m, kMC); }
  int64_t col_tiles() const { return CeilDiv(n, kNC); }

  // Pack unit u < batch * (a_panels + b_panels): one A micro-panel or one B micro-panel over all of K.
  void Pack(int64_t unit, u64* a_packed, u64* b_packed) const {
    if (unit < batch * a_panels()) {
      const int64_t bi = unit / a_panels(), p = unit % a_panels();
      const u64* src = a + (bi * m + p * kMR) * k;
      u64* dst = a_packed + bi * a_panels() * kWords * kMR * k;
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        PackA(src + k0, std::min(kMR, m - p * kMR), kc, k,
              dst + kWords * kMR * (k0 * a_panels() + p * kc));
      }
    } else {
      const int64_t u = unit - batch * a_panels(), bi = u / b_panels(), q = u % b_panels();
      const u64* src = b + bi * k * n + q * kNR;
      u64* dst = b_packed + bi * b_panels() * kWords * kNR * k;
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        PackB(src + k0 * n, std::min(kNR, n - q * kNR), kc, n, dst + kWords * kNR * (k0 * b_panels() + q * kc));
      }
    }
  }

  // Work items are kMC x kNC tiles of C, numbered (batch, column tile, row tile) with rows fastest. Up to
  // kRowTilesPerPass items of a column tile run K block by K block together, so each packed B block
  // (kKC x kNC) is fetched into L2 once for all of them while their C tiles also stay in L2; within a
  // row tile, each B micro-panel stays in L1 while the A micro-panels stream past it.
  void Compute(int64_t begin, int64_t end, const u64* a_packed, const u64* b_packed) const {
    const int64_t rows = row_tiles(), cols = col_tiles();
    for (int64_t item = begin; item < end;) {
      const int64_t group = item / rows;  // (batch, column tile)
      const int64_t last = std::min({end, (group + 1) * rows, item + kRowTilesPerPass});
      const int64_t bi = group / cols, j0 = group % cols * kNC, j1 = std::min(n, j0 + kNC);
      const u64* a_base = a_packed + bi * a_panels() * kWords * kMR * k;
      const u64* b_base = b_packed + bi * b_panels() * kWords * kNR * k;
      u64* c_base = c + bi * m * n;
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        const u64* a_block = a_base + kWords * kMR * k0 * a_panels();
        const u64* b_block = b_base + kWords * kNR * k0 * b_panels();
        for (int64_t tile = item % rows; tile < item % rows + (last - item); ++tile) {
          const int64_t i0 = tile * kMC, i1 = std::min(m, i0 + kMC);
          for (int64_t j = j0; j < j1; j += kNR) {
            const u64* bp = b_block + kWords * kNR * kc * (j / kNR);
            for (int64_t i = i0; i < i1; i += kMR) {
              MicroKernel(kc, a_block + kWords * kMR * kc * (i / kMR), bp, c_base + i * n + j, n,
                          std::min(kMR, i1 - i), std::min(kNR, j1 - j), k0 > 0);
            }
          }
        }
      }
      item = last;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------
// AMX ring matmul. A 64-bit product is a sum of byte products: with x = sum_i x_i 2^(8i) and
// y = sum_j y_j 2^(8j) (bytes x_i, y_j),
//
//   sum_k x_k y_k = sum_s 2^(8s) P_s  (mod 2^64),   P_s = sum_k sum_{i+j=s} x_{k,i} y_{k,j},  s = 0..7
//
// 36 byte-matrix products X_i Y_j (i + j <= 7), each an AMX TDPBUUD (u8 x u8 -> int32 accumulate, 16x16
// outputs x 64 k per instruction). P_s accumulates in int32 and must be exact only modulo 2^(64-8s): for
// s >= 4 wrapping is harmless, for s <= 3 P_s < k * 4 * 255^2 < 2^32 holds for k <= 16384 (kAmxMaxK),
// the K block after which the P_s are folded into C.
//
// Packed operands: per 16-row block of A and 64-k chunk, 8 tiles (one per byte plane i) of 16 rows x 64
// bytes; per 16-column block of B and chunk, 8 tiles of 16 rows (groups of 4 k) x [16 columns][4 k]
// bytes, the layout TDPBUUD expects for its second operand. Tile registers: 0-3 accumulate four s levels,
// 4 holds an A plane, 5-7 up to three B planes; the s levels go in two passes, 0-3 and 4-7.
// ---------------------------------------------------------------------------------------------------------

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512VBMI__) && defined(__AVX512F__)
#define TFE_LITE_HAVE_AMX 1

constexpr int64_t kAmxTile = 16;                   // rows and columns of an output tile
constexpr int64_t kAmxChunk = 64;                  // k per tile product
constexpr int64_t kAmxTileBytes = 1024;
constexpr int64_t kAmxChunkBytes = 8 * kAmxTileBytes;  // 8 byte planes
constexpr int64_t kAmxMaxK = 16384;
static_assert(kAmxMaxK * 4 * 255 * 255 < (int64_t{1} << 32), "P_0..P_3 must not wrap in int32");

// Whether this process may use AMX tiles: Linux grants the permission on request (once per process).
bool AmxPermitted() {
  static const bool permitted = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

struct AmxTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// r[j] becomes (r0[j], r1[j], ..., r7[j]): an 8x8 transpose of 64-bit words.
inline void Transpose8x8(__m512i r[8]) {
  __m512i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_epi64(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi64(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    u[4 * h + 0] = _mm512_shuffle_i64x2(t[4 * h], t[4 * h + 2], 0x88);
    u[4 * h + 1] = _mm512_shuffle_i64x2(t[4 * h], t[4 * h + 2], 0xDD);
    u[4 * h + 2] = _mm512_shuffle_i64x2(t[4 * h + 1], t[4 * h + 3], 0x88);
    u[4 * h + 3] = _mm512_shuffle_i64x2(t[4 * h + 1], t[4 * h + 3], 0xDD);
  }
  r[0] = _mm512_shuffle_i64x2(u[0], u[4], 0x88);
  r[4] = _mm512_shuffle_i64x2(u[0], u[4], 0xDD);
  r[2] = _mm512_shuffle_i64x2(u[1], u[5], 0x88);
  r[6] = _mm512_shuffle_i64x2(u[1], u[5], 0xDD);
  r[1] = _mm512_shuffle_i64x2(u[2], u[6], 0x88);
  r[5] = _mm512_shuffle_i64x2(u[2], u[6], 0xDD);
  r[3] = _mm512_shuffle_i64x2(u[3], u[7], 0x88);
  r[7] = _mm512_shuffle_i64x2(u[3], u[7], 0xDD);
}

// Byte permutations: kPlanes turns 8 int64 into [byte plane i][value t]; kKGroups turns [h][k b][column
// n'] into [h][column n'][k b], the 4-k groups of a TDPBUUD B row.
alignas(64) constexpr uint8_t kPlanes[64] = {
    0, 8, 16, 24, 32, 40, 48, 56, 1, 9, 17, 25, 33, 41, 49, 57, 2, 10, 18, 26, 34, 42, 50, 58,
    3, 11, 19, 27, 35, 43, 51, 59, 4, 12, 20, 28, 36, 44, 52, 60, 5, 13, 21, 29, 37, 45, 53, 61,
    6, 14, 22, 30, 38, 46, 54, 62, 7, 15, 23, 31, 39, 47, 55, 63};
alignas(64) constexpr uint8_t kKGroups[64] = {
    0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27, 4, 12, 20, 28, 5, 13, 21, 29,
    6, 14, 22, 30, 7, 15, 23, 31, 32, 40, 48, 56, 33, 41, 49, 57, 34, 42, 50, 58, 35, 43, 51, 59,
    36, 44, 52, 60, 37, 45, 53, 61, 38, 46, 54, 62, 39, 47, 55, 63};

// Tile register numbers must be literals (g++ pastes them into inline assembly), hence the templates.
template <int C, int B>
inline void AmxDpbuud() {
#define TFE_LITE_DPBUUD(c, b) \
  if constexpr (C == c && B == b) _tile_dpbuud(c, 4, b);
  TFE_LITE_DPBUUD(0, 5) TFE_LITE_DPBUUD(0, 6) TFE_LITE_DPBUUD(0, 7)
  TFE_LITE_DPBUUD(1, 5) TFE_LITE_DPBUUD(1, 6) TFE_LITE_DPBUUD(1, 7)
  TFE_LITE_DPBUUD(2, 5) TFE_LITE_DPBUUD(2, 6) TFE_LITE_DPBUUD(2, 7)
  TFE_LITE_DPBUUD(3, 5) TFE_LITE_DPBUUD(3, 6) TFE_LITE_DPBUUD(3, 7)
#undef TFE_LITE_DPBUUD
}

template <int S0, int J0, int NJ, int I, int JJ>
inline void AmxDot() {
  constexpr int s = I + J0 + JJ;
  if constexpr (JJ < NJ && s >= S0 && s < S0 + 4) AmxDpbuud<s - S0, 5 + JJ>();
}

template <int S0, int J0, int NJ, int I>
inline void AmxRow(const uint8_t* a_chunk) {
  constexpr bool used = (I + J0 < S0 + 4) && (I + J0 + NJ - 1 >= S0);
  if constexpr (used) {
    _tile_loadd(4, a_chunk + I * kAmxTileBytes, 64);
    AmxDot<S0, J0, NJ, I, 0>();
    AmxDot<S0, J0, NJ, I, 1>();
    AmxDot<S0, J0, NJ, I, 2>();
  }
}

template <int S0, int J0, int NJ, int... I>
inline void AmxGroup(const uint8_t* a_chunk, const uint8_t* b_chunk, std::integer_sequence<int, I...>) {
  _tile_loadd(5, b_chunk + J0 * kAmxTileBytes, 64);
  if constexpr (NJ > 1) _tile_loadd(6, b_chunk + (J0 + 1) * kAmxTileBytes, 64);
  if constexpr (NJ > 2) _tile_loadd(7, b_chunk + (J0 + 2) * kAmxTileBytes, 64);
  (AmxRow<S0, J0, NJ, I>(a_chunk), ...);
}

// One pass: tiles 0-3 accumulate P_S0 .. P_S0+3 over `chunks` chunks, then go to p[S0 .. S0+3].
template <int S0>
void AmxPass(const uint8_t* a, const uint8_t* b, int64_t chunks, int32_t* p) {
  using Rows = std::make_integer_sequence<int, 8>;
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for (int64_t c = 0; c < chunks; ++c, a += kAmxChunkBytes, b += kAmxChunkBytes) {
    if constexpr (S0 == 0) {  // byte planes j = 0..3 pair with i <= 3 - j
      AmxGroup<S0, 0, 3>(a, b, Rows{});
      AmxGroup<S0, 3, 1>(a, b, Rows{});
    } else {
      AmxGroup<S0, 0, 3>(a, b, Rows{});
      AmxGroup<S0, 3, 3>(a, b, Rows{});
      AmxGroup<S0, 6, 2>(a, b, Rows{});
    }
  }
  _tile_stored(0, p + (S0 + 0) * 256, 64);
  _tile_stored(1, p + (S0 + 1) * 256, 64);
  _tile_stored(2, p + (S0 + 2) * 256, 64);
  _tile_stored(3, p + (S0 + 3) * 256, 64);
}

struct AmxGemm {
  using Packed = uint8_t;
  const u64* a;
  const u64* b;
  u64* c;
  int64_t batch, m, k, n;

  int64_t row_blocks() const { return CeilDiv(m, kAmxTile); }
  int64_t col_blocks() const { return CeilDiv(n, kAmxTile); }
  int64_t chunks() const { return CeilDiv(k, kAmxChunk); }
  int64_t a_packed_bytes() const { return batch * row_blocks() * chunks() * kAmxChunkBytes; }
  int64_t b_packed_bytes() const { return batch * col_blocks() * chunks() * kAmxChunkBytes; }

  // Pack unit: (batch, row block or column block, chunk), A units first.
  int64_t pack_units() const { return batch * (row_blocks() + col_blocks()) * chunks(); }

  void Pack(int64_t unit, uint8_t* a_packed, uint8_t* b_packed) const {
    const __m512i planes = _mm512_load_si512(kPlanes);
    const int64_t a_units = batch * row_blocks() * chunks();
    if (unit < a_units) {
      const int64_t bi = unit / (row_blocks() * chunks()), p = unit / chunks() % row_blocks();
      const int64_t chunk = unit % chunks(), k0 = chunk * kAmxChunk;
      uint8_t* dst = a_packed + unit * kAmxChunkBytes;
      for (int64_t r = 0; r < kAmxTile; ++r) {  // tile row r of the 8 planes
        const int64_t row = p * kAmxTile + r;
        __m512i v[8];
        for (int seg = 0; seg < 8; ++seg) {
          const int64_t kk = k0 + 8 * seg;
          const __mmask8 mask = row < m ? LowMask(k - kk) : 0;
          const u64* src = a + (bi * m + std::min(row, m - 1)) * k + std::min(kk, k);
          v[seg] = _mm512_permutexvar_epi8(planes, _mm512_maskz_loadu_epi64(mask, src));
        }
        Transpose8x8(v);  // v[i]: plane i of the 64 values of this row
        for (int i = 0; i < 8; ++i) _mm512_store_si512(dst + i * kAmxTileBytes + r * 64, v[i]);
      }
    } else {
      const int64_t u = unit - a_units;
      const int64_t bi = u / (col_blocks() * chunks()), q = u / chunks() % col_blocks();
      const int64_t chunk = u % chunks(), k0 = chunk * kAmxChunk;
      const int64_t col = q * kAmxTile;
      const __mmask8 mask0 = LowMask(n - col), mask1 = LowMask(n - col - 8);
      const __m512i groups = _mm512_load_si512(kKGroups);
      uint8_t* dst = b_packed + u * kAmxChunkBytes;
      for (int64_t g = 0; g < kAmxTile; ++g) {  // tile row g: k = k0 + 4g .. k0 + 4g + 3
        __m512i v[8];  // v[4h + kb]: row k0 + 4g + kb, columns col + 8h ..
        for (int kb = 0; kb < 4; ++kb) {
          const int64_t row = k0 + 4 * g + kb;
          const u64* src = b + (bi * k + std::min(row, k - 1)) * n + col;
          const bool inside = row < k;
          v[kb] = _mm512_permutexvar_epi8(planes, _mm512_maskz_loadu_epi64(inside ? mask0 : 0, src));
          v[4 + kb] = _mm512_permutexvar_epi8(planes, _mm512_maskz_loadu_epi64(inside ? mask1 : 0, src + 8));
        }
        Transpose8x8(v);  // v[j]: plane j as [h][kb][n']
        for (int j = 0; j < 8; ++j) {
          _mm512_store_si512(dst + j * kAmxTileBytes + g * 64, _mm512_permutexvar_epi8(groups, v[j]));
        }
      }
    }
  }

  // C block (p, q) (+)= sum_s 2^(8s) P_s.
  void Fold(const int32_t* p_levels, u64* c_block, int64_t rows, int64_t cols, bool accumulate) const {
    const __mmask8 mask0 = LowMask(cols), mask1 = LowMask(cols - 8);
    for (int64_t r = 0; r < rows; ++r, c_block += n) {
      __m512i sum0 = _mm512_setzero_si512(), sum1 = _mm512_setzero_si512();
      for (int s = 0; s < 8; ++s) {
        const __m512i level = _mm512_load_si512(p_levels + s * 256 + r * 16);
        const __m128i shift = _mm_cvtsi32_si128(8 * s);
        sum0 = _mm512_add_epi64(sum0, _mm512_sll_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(level)), shift));
        sum1 = _mm512_add_epi64(sum1,
                                _mm512_sll_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(level, 1)), shift));
      }
      if (accumulate) {
        sum0 = _mm512_add_epi64(sum0, _mm512_maskz_loadu_epi64(mask0, c_block));
        sum1 = _mm512_add_epi64(sum1, _mm512_maskz_loadu_epi64(mask1, c_block + 8));
      }
      _mm512_mask_storeu_epi64(c_block, mask0, sum0);
      _mm512_mask_storeu_epi64(c_block + 8, mask1, sum1);
    }
  }

  // Column blocks per group: the packed B of a group (about 1 MiB) stays in L2 while the row blocks pass.
  int64_t group_cols() const { return std::max<int64_t>(1, (int64_t{1} << 20) / (chunks() * kAmxChunkBytes)); }

  // Items are output blocks, per batch entry in groups of group_cols() column blocks; within a group, row
  // block by row block, so consecutive items share the packed A of their row block and each group's B is
  // fetched into L2 once. Configures the calling thread's tiles and releases them after.
  void Compute(int64_t begin, int64_t end, const uint8_t* a_packed, const uint8_t* b_packed) const {
    AmxTileConfig config;
    for (int t = 0; t < 8; ++t) {
      config.rows[t] = kAmxTile;
      config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
    alignas(64) int32_t levels[8 * 256];
    const int64_t rb = row_blocks(), cb = col_blocks(), ch = chunks(), gc = group_cols();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / (rb * cb), index = item % (rb * cb);
      const int64_t group = index / (rb * gc), offset = index % (rb * gc);
      const int64_t width = std::min(gc, cb - group * gc);
      const int64_t p = offset / width, q = group * gc + offset % width;
      const uint8_t* a_base = a_packed + (bi * rb + p) * ch * kAmxChunkBytes;
      const uint8_t* b_base = b_packed + (bi * cb + q) * ch * kAmxChunkBytes;
      u64* c_block = c + bi * m * n + p * kAmxTile * n + q * kAmxTile;
      constexpr int64_t kBlockChunks = kAmxMaxK / kAmxChunk;
      for (int64_t c0 = 0; c0 < ch; c0 += kBlockChunks) {
        const int64_t count = std::min(kBlockChunks, ch - c0);
        AmxPass<0>(a_base + c0 * kAmxChunkBytes, b_base + c0 * kAmxChunkBytes, count, levels);
        AmxPass<4>(a_base + c0 * kAmxChunkBytes, b_base + c0 * kAmxChunkBytes, count, levels);
        Fold(levels, c_block, std::min(kAmxTile, m - p * kAmxTile), std::min(kAmxTile, n - q * kAmxTile), c0 > 0);
      }
    }
    _tile_release();
  }
};
#endif  // AMX

bool AmxAvailable() {
#ifdef TFE_LITE_HAVE_AMX
  return AmxPermitted();
#else
  return false;
#endif
}

// C = A B for the batch, on the op's worker threads: pack both operands, then compute the output tiles.
template <typename Kernel>
void RingGemm(OpKernelContext* context, const Kernel& gemm, int64_t a_packed_words, int64_t b_packed_words,
              int64_t pack_units, int64_t pack_cost, int64_t items, int64_t item_cost) {
  Tensor a_packed_t, b_packed_t;
  OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_INT64, TensorShape({a_packed_words}),
                                                 &a_packed_t));
  OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_INT64, TensorShape({b_packed_words}),
                                                 &b_packed_t));
  auto* a_packed = reinterpret_cast<typename Kernel::Packed*>(a_packed_t.flat<int64_t>().data());
  auto* b_packed = reinterpret_cast<typename Kernel::Packed*>(b_packed_t.flat<int64_t>().data());
  ParallelFor(context, pack_units, pack_cost, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) gemm.Pack(unit, a_packed, b_packed);
  });
  ParallelFor(context, items, item_cost,
              [&](int64_t begin, int64_t end) { gemm.Compute(begin, end, a_packed, b_packed); });
}

class RingMatMulOp : public OpKernel {
 public:
  explicit RingMatMulOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("kernel", &kernel_));
    OP_REQUIRES(context, kernel_ != "amx" || AmxAvailable(),
                absl::UnimplementedError("RingMatMul: kernel='amx' needs a CPU and Linux kernel with AMX "
                                         "(and a library built for it); use kernel='auto'"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& a = context->input(0);
    const Tensor& b = context->input(1);
    const int rank = a.dims();
    OP_REQUIRES(context, rank >= 2 && b.dims() == rank,
                InvalidArgument("RingMatMul expects operands of equal rank >= 2, got shapes ",
                                a.shape().DebugString(), " and ", b.shape().DebugString()));
    TensorShape out_shape;
    int64_t batch = 1;
    for (int d = 0; d < rank - 2; ++d) {
      OP_REQUIRES(context, a.dim_size(d) == b.dim_size(d),
                  InvalidArgument("RingMatMul expects equal batch dimensions, got shapes ",
                                  a.shape().DebugString(), " and ", b.shape().DebugString()));
      OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(a.dim_size(d)));
      batch *= a.dim_size(d);
    }
    const int64_t m = a.dim_size(rank - 2), k = a.dim_size(rank - 1), n = b.dim_size(rank - 1);
    OP_REQUIRES(context, b.dim_size(rank - 2) == k,
                InvalidArgument("RingMatMul: inner dimensions differ, got shapes ", a.shape().DebugString(),
                                " and ", b.shape().DebugString()));
    OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(m));
    OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(n));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, out_shape, &out));
    if (batch == 0 || m == 0 || n == 0) return;
    const u64* a_data = reinterpret_cast<const u64*>(a.flat<int64_t>().data());
    const u64* b_data = reinterpret_cast<const u64*>(b.flat<int64_t>().data());
    u64* c_data = reinterpret_cast<u64*>(out->flat<int64_t>().data());
    if (k == 0) {
      std::memset(c_data, 0, sizeof(u64) * batch * m * n);
      return;
    }
#ifdef TFE_LITE_HAVE_AMX
    // AMX computes 16 x 16 output tiles: below that the vector kernel wastes less.
    const bool amx = kernel_ == "amx" || (kernel_ == "auto" && m >= 16 && n >= 16 && k >= 32 && AmxAvailable());
    if (amx) {
      const AmxGemm gemm{a_data, b_data, c_data, batch, m, k, n};
      RingGemm(context, gemm, CeilDiv(gemm.a_packed_bytes(), 8), CeilDiv(gemm.b_packed_bytes(), 8),
               gemm.pack_units(), 16 * kAmxChunk * 4, batch * gemm.row_blocks() * gemm.col_blocks(),
               gemm.chunks() * 36 * 16 * 2);
      return;
    }
#endif
    const Gemm gemm{a_data, b_data, c_data, batch, m, k, n};
    RingGemm(context, gemm, gemm.a_packed_words(), gemm.b_packed_words(),
             batch * (gemm.a_panels() + gemm.b_panels()), 4 * kNR * k, batch * gemm.col_tiles() * gemm.row_tiles(),
             std::min(m, kMC) * std::min(n, kNC) * k / 4 + 1);
  }

 private:
  std::string kernel_;
};

absl::Status RingMatMulShape(InferenceContext* c) {
  ShapeHandle a, b;
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(0), 2, &a));
  TF_RETURN_IF_ERROR(c->WithRankAtLeast(c->input(1), 2, &b));
  if (!c->RankKnown(a) || !c->RankKnown(b)) {
    c->set_output(0, c->UnknownShape());
    return absl::OkStatus();
  }
  const int32_t rank = c->Rank(a);
  if (c->Rank(b) != rank) {
    return InvalidArgument("RingMatMul expects operands of equal rank, got ",
                                                 c->DebugString(a), " and ", c->DebugString(b));
  }
  ShapeHandle a_batch, b_batch, batch, out;
  TF_RETURN_IF_ERROR(c->Subshape(a, 0, rank - 2, &a_batch));
  TF_RETURN_IF_ERROR(c->Subshape(b, 0, rank - 2, &b_batch));
  TF_RETURN_IF_ERROR(c->Merge(a_batch, b_batch, &batch));
  DimensionHandle inner;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(a, rank - 1), c->Dim(b, rank - 2), &inner));
  TF_RETURN_IF_ERROR(c->Concatenate(batch, c->Matrix(c->Dim(a, rank - 2), c->Dim(b, rank - 1)), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// ChaCha20 keystream. State words: 0..3 the constant "expand 32-byte k", 4..11 the key, 12..13 a 64-bit
// block counter (low word first), 14..15 a 64-bit stream id (low word first). With counter < 2^32 and
// stream = nonce words 1..2 this is exactly RFC 8439's block function (word 13 is its first nonce word).
// Output int64 i is little-endian bytes 8i..8i+7 of the keystream starting at block `first_block`.
// ---------------------------------------------------------------------------------------------------------

constexpr u32 kSigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
constexpr int64_t kBlockInt64s = 8;  // a 64-byte block gives 8 int64

inline u32 Rotl(u32 x, int n) { return (x << n) | (x >> (32 - n)); }

inline void QuarterRound(u32* x, int a, int b, int c, int d) {
  x[a] += x[b]; x[d] = Rotl(x[d] ^ x[a], 16);
  x[c] += x[d]; x[b] = Rotl(x[b] ^ x[c], 12);
  x[a] += x[b]; x[d] = Rotl(x[d] ^ x[a], 8);
  x[c] += x[d]; x[b] = Rotl(x[b] ^ x[c], 7);
}

void InitialState(const u64 key[4], u64 stream, u32 state[16]) {
  for (int i = 0; i < 4; ++i) {
    state[i] = kSigma[i];
    state[4 + 2 * i] = static_cast<u32>(key[i]);
    state[5 + 2 * i] = static_cast<u32>(key[i] >> 32);
  }
  state[14] = static_cast<u32>(stream);
  state[15] = static_cast<u32>(stream >> 32);
}

// One 64-byte block at counter `block` (wrapping mod 2^64).
void ChaChaBlock(const u32 initial[16], u64 block, u32 out[16]) {
  u32 in[16], x[16];
  std::memcpy(in, initial, sizeof(in));
  in[12] = static_cast<u32>(block);
  in[13] = static_cast<u32>(block >> 32);
  std::memcpy(x, in, sizeof(x));
  for (int round = 0; round < 10; ++round) {
    QuarterRound(x, 0, 4, 8, 12); QuarterRound(x, 1, 5, 9, 13);
    QuarterRound(x, 2, 6, 10, 14); QuarterRound(x, 3, 7, 11, 15);
    QuarterRound(x, 0, 5, 10, 15); QuarterRound(x, 1, 6, 11, 12);
    QuarterRound(x, 2, 7, 8, 13); QuarterRound(x, 3, 4, 9, 14);
  }
  for (int i = 0; i < 16; ++i) out[i] = x[i] + in[i];
}

#if defined(__AVX512F__)
constexpr int64_t kParallelBlocks = 16;  // one block per 32-bit lane

#define TFE_QR(a, b, c, d)                                                                   \
  x[a] = _mm512_add_epi32(x[a], x[b]); x[d] = _mm512_rol_epi32(_mm512_xor_si512(x[d], x[a]), 16); \
  x[c] = _mm512_add_epi32(x[c], x[d]); x[b] = _mm512_rol_epi32(_mm512_xor_si512(x[b], x[c]), 12); \
  x[a] = _mm512_add_epi32(x[a], x[b]); x[d] = _mm512_rol_epi32(_mm512_xor_si512(x[d], x[a]), 8);  \
  x[c] = _mm512_add_epi32(x[c], x[d]); x[b] = _mm512_rol_epi32(_mm512_xor_si512(x[b], x[c]), 7)

// kParallelBlocks (16) consecutive blocks from counter `block`, written as 1024 contiguous bytes.
void ChaChaBlockGroup(const u32 initial[16], u64 block, u32* out) {
  __m512i in[16], x[16];
  for (int i = 0; i < 16; ++i) in[i] = _mm512_set1_epi32(static_cast<int>(initial[i]));
  // Counters block + lane as 64-bit numbers split over words 12 (low) and 13 (high), with carry.
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i base_low = _mm512_set1_epi32(static_cast<int>(static_cast<u32>(block)));
  in[12] = _mm512_add_epi32(base_low, lane);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(in[12], base_low);
  in[13] = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<u32>(block >> 32))), carry,
                                 _mm512_set1_epi32(static_cast<int>(static_cast<u32>(block >> 32))),
                                 _mm512_set1_epi32(1));
  for (int i = 0; i < 16; ++i) x[i] = in[i];
  for (int round = 0; round < 10; ++round) {
    TFE_QR(0, 4, 8, 12); TFE_QR(1, 5, 9, 13); TFE_QR(2, 6, 10, 14); TFE_QR(3, 7, 11, 15);
    TFE_QR(0, 5, 10, 15); TFE_QR(1, 6, 11, 12); TFE_QR(2, 7, 8, 13); TFE_QR(3, 4, 9, 14);
  }
  for (int i = 0; i < 16; ++i) x[i] = _mm512_add_epi32(x[i], in[i]);
  // Transpose: x[w] holds word w of the 16 blocks; block b must be 16 contiguous words. First interleave
  // within 128-bit lanes, so t[4g + c] lane L = words 4g..4g+3 of block 4L + c ...
  __m512i s[16], t[16];
  for (int i = 0; i < 8; ++i) {
    s[2 * i] = _mm512_unpacklo_epi32(x[2 * i], x[2 * i + 1]);
    s[2 * i + 1] = _mm512_unpackhi_epi32(x[2 * i], x[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    t[4 * g + 0] = _mm512_unpacklo_epi64(s[4 * g], s[4 * g + 2]);
    t[4 * g + 1] = _mm512_unpackhi_epi64(s[4 * g], s[4 * g + 2]);
    t[4 * g + 2] = _mm512_unpacklo_epi64(s[4 * g + 1], s[4 * g + 3]);
    t[4 * g + 3] = _mm512_unpackhi_epi64(s[4 * g + 1], s[4 * g + 3]);
  }
  // ... then a 4x4 transpose of 128-bit lanes across t[c], t[4 + c], t[8 + c], t[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i p01 = _mm512_shuffle_i32x4(t[c], t[4 + c], 0x44);
    const __m512i q01 = _mm512_shuffle_i32x4(t[c], t[4 + c], 0xEE);
    const __m512i p23 = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0x44);
    const __m512i q23 = _mm512_shuffle_i32x4(t[8 + c], t[12 + c], 0xEE);
    _mm512_storeu_si512(out + 16 * (0 + c), _mm512_shuffle_i32x4(p01, p23, 0x88));
    _mm512_storeu_si512(out + 16 * (4 + c), _mm512_shuffle_i32x4(p01, p23, 0xDD));
    _mm512_storeu_si512(out + 16 * (8 + c), _mm512_shuffle_i32x4(q01, q23, 0x88));
    _mm512_storeu_si512(out + 16 * (12 + c), _mm512_shuffle_i32x4(q01, q23, 0xDD));
  }
}
#undef TFE_QR

#else
constexpr int64_t kParallelBlocks = 1;
void ChaChaBlockGroup(const u32 initial[16], u64 block, u32* out) { ChaChaBlock(initial, block, out); }
#endif

class ChaCha20KeystreamOp : public OpKernel {
 public:
  explicit ChaCha20KeystreamOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& key_t = context->input(0);
    const Tensor& stream_t = context->input(1);
    const Tensor& first_block_t = context->input(2);
    const Tensor& shape_t = context->input(3);
    OP_REQUIRES(context, key_t.dims() == 1 && key_t.dim_size(0) == 4,
                InvalidArgument("ChaCha20Keystream: key must be int64[4], got shape ",
                                                      key_t.shape().DebugString()));
    OP_REQUIRES(context, TensorShapeUtils::IsScalar(stream_t.shape()),
                InvalidArgument("ChaCha20Keystream: stream must be a scalar, got shape ",
                                                      stream_t.shape().DebugString()));
    OP_REQUIRES(context, TensorShapeUtils::IsScalar(first_block_t.shape()),
                InvalidArgument(
                    "ChaCha20Keystream: first_block must be a scalar, got shape ",
                    first_block_t.shape().DebugString()));
    TensorShape shape;
    OP_REQUIRES_OK(context, ::tensorflow::tensor::MakeShape(shape_t, &shape));
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &out_t));
    const int64_t count = shape.num_elements();
    if (count == 0) return;

    u64 key[4];
    for (int i = 0; i < 4; ++i) key[i] = static_cast<u64>(key_t.flat<int64_t>()(i));
    u32 initial[16];
    InitialState(key, static_cast<u64>(stream_t.scalar<int64_t>()()), initial);
    const u64 first_block = static_cast<u64>(first_block_t.scalar<int64_t>()());
    int64_t* out = out_t->flat<int64_t>().data();

    // Whole groups of kParallelBlocks blocks go straight to the output, in parallel.
    constexpr int64_t kGroupInt64s = kParallelBlocks * kBlockInt64s;
    const int64_t groups = count / kGroupInt64s;
    ParallelFor(context, groups, 600 * kParallelBlocks, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        ChaChaBlockGroup(initial, first_block + static_cast<u64>(g * kParallelBlocks),
                       reinterpret_cast<u32*>(out + g * kGroupInt64s));
      }
    });
    // The rest block by block, through a buffer for the last partial block.
    for (int64_t done = groups * kGroupInt64s; done < count; done += kBlockInt64s) {
      u32 words[16];
      ChaChaBlock(initial, first_block + static_cast<u64>(done / kBlockInt64s), words);
      std::memcpy(out + done, words, sizeof(int64_t) * std::min(kBlockInt64s, count - done));
    }
  }
};

absl::Status ChaCha20KeystreamShape(InferenceContext* c) {
  ShapeHandle unused, out;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
  DimensionHandle key_words;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(c->input(0), 0), 4, &key_words));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &out));
  c->set_output(0, out);
  return absl::OkStatus();
}


// ---------------------------------------------------------------------------------------------------------
// ChaCha20Normal: standard normals from the ChaCha20 keystream by the Box-Muller transform (DP noise).
//
// The keystream is ChaCha20Keystream's for (key, stream) from block `first_block` on. Block b (counting
// from first_block) gives the normals k b .. k b + k - 1, k = kNormalsPerBlock, h = k / 2:
//
//   float32 (k = 16): the block's 32-bit little-endian words w_0..w_15 (keystream bytes 4i..4i+3) give
//     uniforms U(w) = ((w >> 8) + 1) 2^-24 in (0, 1] (the top 24 bits of a word);
//   float64 (k = 8): its 64-bit words x_0..x_7 (ChaCha20Keystream's int64 outputs 8b..8b+7) give
//     U(x) = ((x >> 11) + 1) 2^-53 in (0, 1] (the top 53 bits);
//   for j < h: r = sqrt(max(-2 ln U_j, 0)), t = 2 pi U_{h+j} (2 pi rounded to the type), and
//     normal k b + j = r cos t, normal k b + h + j = r sin t.
//
// (The clamp at 0 only guards sqrt against a rounding error of ln near 1.) Output i is (normal s i + ... +
// normal s i + s - 1) * (1 / sqrt(s)) for s = summands, summed left to right in the output type, with
// 1 / sqrt(s) rounded to it; the normals of the last block that no output needs are dropped. U is never 0,
// so ln U is finite, and |normal| <= sqrt(2 ln 2^24) = 5.77 (float32) or sqrt(2 ln 2^53) = 8.57 (float64).
//
// Work unit: the outputs of one group of kParallelBlocks blocks (256 float32 or 128 float64 outputs),
// computed from s groups (ChaChaBlockGroup) whose keystream stays in L1, so the op writes only its output.
// Block counter = position, so the result does not depend on how the units are spread over threads. With
// AVX-512 and glibc's libmvec (TFE_LITE_HAVE_LIBMVEC, defined by the build when -lmvec links) log, sin and
// cos are libmvec's 16 x float32 / 8 x float64 functions (at most 4 ulp error); otherwise std::log,
// std::sin and std::cos one value at a time (libm). Either way the pure TensorFlow twin
// (tfe_lite.prg._normal_tf) gives the same values up to a few ulp.
// ---------------------------------------------------------------------------------------------------------

template <typename T>
struct NormalTraits;

template <>
struct NormalTraits<float> {
  static constexpr int64_t kNormalsPerBlock = 16;
  static constexpr float kTwoPi = static_cast<float>(6.283185307179586476925286766559);
  // U of 32-bit word i of a block.
  static float Uniform(const u32* block, int64_t i) {
    return static_cast<float>((block[i] >> 8) + 1) * 0x1p-24f;
  }
};

template <>
struct NormalTraits<double> {
  static constexpr int64_t kNormalsPerBlock = 8;
  static constexpr double kTwoPi = 6.283185307179586476925286766559;
  // U of 64-bit word i of a block.
  static double Uniform(const u32* block, int64_t i) {
    u64 x;
    std::memcpy(&x, block + 2 * i, sizeof(x));
    return static_cast<double>((x >> 11) + 1) * 0x1p-53;
  }
};

// The normals of one block (16 words) into out[0, kNormalsPerBlock), one value at a time.
template <typename T>
void BoxMullerBlock(const u32* block, T* out) {
  using Traits = NormalTraits<T>;
  constexpr int64_t half = Traits::kNormalsPerBlock / 2;
  for (int64_t j = 0; j < half; ++j) {
    const T radius = std::sqrt(std::max(T(-2) * std::log(Traits::Uniform(block, j)), T(0)));
    const T angle = Traits::kTwoPi * Traits::Uniform(block, half + j);
    out[j] = radius * std::cos(angle);
    out[half + j] = radius * std::sin(angle);
  }
}

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(TFE_LITE_HAVE_LIBMVEC)
#define TFE_LITE_VECTOR_NORMALS 1

// glibc libmvec's AVX-512 variants (x86-64 vector function ABI: "e" = AVX-512, "N16v" = 16 lanes, one
// vector argument), declared here because math.h declares them only under -ffast-math.
extern "C" {
__m512 _ZGVeN16v_logf(__m512);
__m512 _ZGVeN16v_sinf(__m512);
__m512 _ZGVeN16v_cosf(__m512);
__m512d _ZGVeN8v_log(__m512d);
__m512d _ZGVeN8v_sin(__m512d);
__m512d _ZGVeN8v_cos(__m512d);
}

// U of each 32-bit lane (top 24 bits) and of each 64-bit lane (top 53 bits): exact conversions.
inline __m512 Uniform24(__m512i w) {
  const __m512 top = _mm512_cvtepi32_ps(_mm512_srli_epi32(w, 8));
  return _mm512_mul_ps(_mm512_add_ps(top, _mm512_set1_ps(1.0f)), _mm512_set1_ps(0x1p-24f));
}

inline __m512d Uniform53(__m512i x) {
  const __m512d top = _mm512_cvtepu64_pd(_mm512_srli_epi64(x, 11));
  return _mm512_mul_pd(_mm512_add_pd(top, _mm512_set1_pd(1.0)), _mm512_set1_pd(0x1p-53));
}

// Two consecutive blocks (32 words) into 2 kNormalsPerBlock normals. The first half of a block (128-bit
// quarters 0-1) feeds its radii and the second half (quarters 2-3) its angles, so the radius words of both
// blocks go into one vector and the angle words into another (lanes: first block, then second); the cos
// and sin results go back the same way.
inline void BoxMullerBlockPair(const u32* blocks, float* out) {
  const __m512i first = _mm512_loadu_si512(blocks), second = _mm512_loadu_si512(blocks + 16);
  const __m512 u_radius = Uniform24(_mm512_shuffle_i64x2(first, second, 0x44));
  const __m512 u_angle = Uniform24(_mm512_shuffle_i64x2(first, second, 0xEE));
  const __m512 minus_2_ln = _mm512_mul_ps(_mm512_set1_ps(-2.0f), _ZGVeN16v_logf(u_radius));
  const __m512 radius = _mm512_sqrt_ps(_mm512_max_ps(minus_2_ln, _mm512_setzero_ps()));
  const __m512 angle = _mm512_mul_ps(_mm512_set1_ps(NormalTraits<float>::kTwoPi), u_angle);
  const __m512 c = _mm512_mul_ps(radius, _ZGVeN16v_cosf(angle));
  const __m512 s = _mm512_mul_ps(radius, _ZGVeN16v_sinf(angle));
  _mm512_storeu_ps(out, _mm512_shuffle_f32x4(c, s, 0x44));       // first block: cos 0-7, sin 0-7
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(c, s, 0xEE));  // second block: cos 8-15, sin 8-15
}

inline void BoxMullerBlockPair(const u32* blocks, double* out) {
  const __m512i first = _mm512_loadu_si512(blocks), second = _mm512_loadu_si512(blocks + 16);
  const __m512d u_radius = Uniform53(_mm512_shuffle_i64x2(first, second, 0x44));
  const __m512d u_angle = Uniform53(_mm512_shuffle_i64x2(first, second, 0xEE));
  const __m512d minus_2_ln = _mm512_mul_pd(_mm512_set1_pd(-2.0), _ZGVeN8v_log(u_radius));
  const __m512d radius = _mm512_sqrt_pd(_mm512_max_pd(minus_2_ln, _mm512_setzero_pd()));
  const __m512d angle = _mm512_mul_pd(_mm512_set1_pd(NormalTraits<double>::kTwoPi), u_angle);
  const __m512d c = _mm512_mul_pd(radius, _ZGVeN8v_cos(angle));
  const __m512d s = _mm512_mul_pd(radius, _ZGVeN8v_sin(angle));
  _mm512_storeu_pd(out, _mm512_shuffle_f64x2(c, s, 0x44));      // first block: cos 0-3, sin 0-3
  _mm512_storeu_pd(out + 8, _mm512_shuffle_f64x2(c, s, 0xEE));  // second block: cos 4-7, sin 4-7
}
#endif

// The normals of `blocks` consecutive keystream blocks (16 words each) into out[0, blocks kNormalsPerBlock):
// pairs of blocks by the vector code where built, the rest one by one.
template <typename T>
void BoxMuller(const u32* keystream, int64_t blocks, T* out) {
  constexpr int64_t per_block = NormalTraits<T>::kNormalsPerBlock;
  int64_t b = 0;
#ifdef TFE_LITE_VECTOR_NORMALS
  for (; b + 2 <= blocks; b += 2) BoxMullerBlockPair(keystream + 16 * b, out + per_block * b);
#endif
  for (; b < blocks; ++b) BoxMullerBlock(keystream + 16 * b, out + per_block * b);
}

template <typename T>
class ChaCha20NormalOp : public OpKernel {
 public:
  explicit ChaCha20NormalOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("summands", &summands_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& key_t = context->input(0);
    const Tensor& stream_t = context->input(1);
    const Tensor& first_block_t = context->input(2);
    const Tensor& size_tensor = context->input(3);
    OP_REQUIRES(context, key_t.dims() == 1 && key_t.dim_size(0) == 4,
                InvalidArgument("ChaCha20Normal: key must be int64[4], got shape ",
                                key_t.shape().DebugString()));
    for (const Tensor* scalar : {&stream_t, &first_block_t, &size_tensor}) {
      OP_REQUIRES(context, TensorShapeUtils::IsScalar(scalar->shape()),
                  InvalidArgument("ChaCha20Normal: stream, first_block and size must be scalars, got shape ",
                                  scalar->shape().DebugString()));
    }
    const int64_t size = size_tensor.scalar<int64_t>()();
    // Normals needed: size * summands, kept far below 2^63 so that block counts cannot overflow.
    OP_REQUIRES(context, size >= 0 && size <= (int64_t{1} << 56) / summands_,
                InvalidArgument("ChaCha20Normal: size must be in [0, 2^56 / summands], got size=", size,
                                " with summands=", summands_));
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({size}), &out_t));
    if (size == 0) return;

    u64 key[4];
    for (int i = 0; i < 4; ++i) key[i] = static_cast<u64>(key_t.flat<int64_t>()(i));
    u32 initial[16];
    InitialState(key, static_cast<u64>(stream_t.scalar<int64_t>()()), initial);
    const u64 first_block = static_cast<u64>(first_block_t.scalar<int64_t>()());
    T* out = out_t->flat<T>().data();

    // Unit u: outputs [u C, (u + 1) C) from groups [u s, (u + 1) s), C = the normals of one group.
    constexpr int64_t kGroupNormals = kParallelBlocks * NormalTraits<T>::kNormalsPerBlock;
    const int64_t s = summands_;
    const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(s)));
    const int64_t units = CeilDiv(size, kGroupNormals);
    ParallelFor(context, units, s * kParallelBlocks * 900, [&](int64_t begin, int64_t end) {
      alignas(64) u32 keystream[16 * kParallelBlocks];
      std::vector<T> normals(s * kGroupNormals);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t outputs = std::min(kGroupNormals, size - unit * kGroupNormals);
        T* target = out + unit * kGroupNormals;
        // One summand and a whole unit: straight into the output; otherwise through the buffer.
        T* normal = s == 1 && outputs == kGroupNormals ? target : normals.data();
        const int64_t groups = CeilDiv(outputs * s, kGroupNormals);
        for (int64_t g = 0; g < groups; ++g) {
          const u64 block = first_block + static_cast<u64>((unit * s + g) * kParallelBlocks);
          ChaChaBlockGroup(initial, block, keystream);
          BoxMuller(keystream, kParallelBlocks, normal + g * kGroupNormals);
        }
        if (normal == target) continue;
        if (s == 1) {
          std::copy(normal, normal + outputs, target);
          continue;
        }
        for (int64_t i = 0; i < outputs; ++i) {
          T sum = normal[s * i];
          for (int64_t t = 1; t < s; ++t) sum += normal[s * i + t];
          target[i] = sum * scale;
        }
      }
    });
  }

 private:
  int64_t summands_;
};

absl::Status ChaCha20NormalShape(InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &unused));
  DimensionHandle key_words, size;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(c->input(0), 0), 4, &key_words));
  for (int i = 1; i <= 3; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(3, &size));
  c->set_output(0, c->Vector(size));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// RingBitSlice: the low `bits` bit planes of int64 elements, 64 elements per word ("bit slicing", a 64 x
// bits bit-matrix transpose per block): out[j][w] has bit l equal to bit j of element 64 w + l (0 past the
// end). Binary circuits over the planes then work on 64 elements per word operation.
// ---------------------------------------------------------------------------------------------------------

// The `bits` planes of 64 elements x[0..count) (count <= 64), plane j written to out[j * stride].
void SliceBlock(const int64_t* x, int64_t count, int bits, int64_t stride, int64_t* out) {
#if defined(__AVX512F__)
  __m512i v[8];
  for (int i = 0; i < 8; ++i) {
    const int64_t left = std::min<int64_t>(std::max<int64_t>(count - 8 * i, 0), 8);
    const __mmask8 lanes = left >= 8 ? 0xFF : static_cast<__mmask8>((1u << left) - 1);
    v[i] = _mm512_maskz_loadu_epi64(lanes, x + 8 * i);
  }
  for (int j = 0; j < bits; ++j) {
    const __m512i bit = _mm512_set1_epi64(static_cast<long long>(u64{1} << j));
    u64 word = 0;
    for (int i = 0; i < 8; ++i) word |= static_cast<u64>(_mm512_test_epi64_mask(v[i], bit)) << (8 * i);
    out[j * stride] = static_cast<int64_t>(word);
  }
#else
  for (int j = 0; j < bits; ++j) {
    u64 word = 0;
    for (int64_t l = 0; l < count; ++l) word |= ((static_cast<u64>(x[l]) >> j) & 1) << l;
    out[j * stride] = static_cast<int64_t>(word);
  }
#endif
}

class RingBitSliceOp : public OpKernel {
 public:
  explicit RingBitSliceOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("bits", &bits_));
    OP_REQUIRES(context, bits_ >= 1 && bits_ <= 64,
                InvalidArgument("RingBitSlice: bits must be in [1, 64], got ", bits_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x_t = context->input(0);
    const int64_t n = x_t.NumElements();
    const int64_t words = (n + 63) / 64;
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({bits_, words}), &out_t));
    if (words == 0) return;
    const int64_t* x = x_t.flat<int64_t>().data();
    int64_t* out = out_t->flat<int64_t>().data();
    const int bits = bits_;
    ParallelFor(context, words, 16 * bits + 32, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) {
        SliceBlock(x + 64 * w, std::min<int64_t>(64, n - 64 * w), bits, words, out + w);
      }
    });
  }

 private:
  int bits_;
};

absl::Status RingBitSliceShape(InferenceContext* c) {
  int bits;
  TF_RETURN_IF_ERROR(c->GetAttr("bits", &bits));
  DimensionHandle n = c->NumElements(c->input(0));
  DimensionHandle words = c->UnknownDim();
  if (c->ValueKnown(n)) words = c->MakeDim((c->Value(n) + 63) / 64);
  c->set_output(0, c->Matrix(bits, words));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// RingPatches: im2col of an NHWC int64 tensor, as tf.image.extract_patches (rates 1) and the (kh, kw, C)
// order of tf.nn.conv2d's filters: out[n, y, x, (i kw + j) C + c] = in[n, y sh + i - top, x sw + j - left, c],
// 0 outside the input (TensorFlow's SAME padding: top = total / 2 of total = max((out - 1) s + k - size, 0)).
// Each window row is one contiguous run of kw C input elements, copied with memcpy.
// ---------------------------------------------------------------------------------------------------------

struct PatchGeometry {
  int64_t n, h, w, c, kh, kw, sh, sw, out_h, out_w, top, left;
};

void MakePatchGeometry(int64_t n, int64_t h, int64_t w, int64_t c, const std::vector<int32_t>& ksizes,
                       const std::vector<int32_t>& strides, const std::string& padding, PatchGeometry* g) {
  *g = PatchGeometry{n, h, w, c, ksizes[0], ksizes[1], strides[0], strides[1], 0, 0, 0, 0};
  if (padding == "SAME") {
    g->out_h = (h + g->sh - 1) / g->sh;
    g->out_w = (w + g->sw - 1) / g->sw;
    g->top = std::max<int64_t>((g->out_h - 1) * g->sh + g->kh - h, 0) / 2;
    g->left = std::max<int64_t>((g->out_w - 1) * g->sw + g->kw - w, 0) / 2;
  } else {
    g->out_h = h >= g->kh ? (h - g->kh) / g->sh + 1 : 0;
    g->out_w = w >= g->kw ? (w - g->kw) / g->sw + 1 : 0;
  }
}

// Output rows [begin, end) of the N * out_h rows.
void PatchRows(const PatchGeometry& g, const int64_t* in, int64_t* out, int64_t begin, int64_t end) {
  const int64_t depth = g.kh * g.kw * g.c, run = g.kw * g.c;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t image = r / g.out_h, y = r % g.out_h;
    for (int64_t x = 0; x < g.out_w; ++x) {
      int64_t* dst = out + (r * g.out_w + x) * depth;
      const int64_t col = x * g.sw - g.left;
      for (int64_t i = 0; i < g.kh; ++i, dst += run) {
        const int64_t row = y * g.sh + i - g.top;
        if (row < 0 || row >= g.h) {
          std::memset(dst, 0, sizeof(int64_t) * run);
        } else if (col >= 0 && col + g.kw <= g.w) {
          std::memcpy(dst, in + ((image * g.h + row) * g.w + col) * g.c, sizeof(int64_t) * run);
        } else {
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t at = col + j;
            if (at < 0 || at >= g.w) {
              std::memset(dst + j * g.c, 0, sizeof(int64_t) * g.c);
            } else {
              std::memcpy(dst + j * g.c, in + ((image * g.h + row) * g.w + at) * g.c, sizeof(int64_t) * g.c);
            }
          }
        }
      }
    }
  }
}

class RingPatchesOp : public OpKernel {
 public:
  explicit RingPatchesOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("ksizes", &ksizes_));
    OP_REQUIRES_OK(context, context->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(context, context->GetAttr("padding", &padding_));
    OP_REQUIRES(context, ksizes_.size() == 2 && strides_.size() == 2 && ksizes_[0] > 0 && ksizes_[1] > 0 &&
                             strides_[0] > 0 && strides_[1] > 0,
                InvalidArgument("RingPatches: ksizes and strides must be two positive ints each"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& x_t = context->input(0);
    OP_REQUIRES(context, x_t.dims() == 4,
                InvalidArgument("RingPatches: x must be NHWC (rank 4), got shape ", x_t.shape().DebugString()));
    PatchGeometry g;
    MakePatchGeometry(x_t.dim_size(0), x_t.dim_size(1), x_t.dim_size(2), x_t.dim_size(3), ksizes_, strides_,
                      padding_, &g);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({g.n, g.out_h, g.out_w, g.kh * g.kw * g.c}), &out_t));
    if (out_t->NumElements() == 0) return;
    const int64_t* in = x_t.flat<int64_t>().data();
    int64_t* out = out_t->flat<int64_t>().data();
    ParallelFor(context, g.n * g.out_h, g.out_w * g.kh * (g.kw * g.c + 8),
                [&](int64_t begin, int64_t end) { PatchRows(g, in, out, begin, end); });
  }

 private:
  std::vector<int32_t> ksizes_, strides_;
  std::string padding_;
};

absl::Status RingPatchesShape(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  std::vector<int32_t> ksizes, strides;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("ksizes", &ksizes));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  if (ksizes.size() != 2 || strides.size() != 2) return InvalidArgument("RingPatches: two ksizes and strides");
  std::vector<DimensionHandle> dims(4, c->UnknownDim());
  dims[0] = c->Dim(x, 0);
  for (int a = 0; a < 2; ++a) {
    DimensionHandle size = c->Dim(x, 1 + a);
    if (!c->ValueKnown(size)) continue;
    const int64_t s = c->Value(size), k = ksizes[a], st = strides[a];
    dims[1 + a] = c->MakeDim(padding == "SAME" ? (s + st - 1) / st : (s >= k ? (s - k) / st + 1 : 0));
  }
  DimensionHandle channels = c->Dim(x, 3);
  if (c->ValueKnown(channels)) dims[3] = c->MakeDim(c->Value(channels) * ksizes[0] * ksizes[1]);
  c->set_output(0, c->MakeShape(dims));
  return absl::OkStatus();
}

}  // namespace
}  // namespace tfe_lite

// Whether RingMatMul's kernel='amx' works in this process (for tests and benchmarks).
extern "C" __attribute__((visibility("default"))) int tfe_lite_ring_ops_amx_available() {
  return tfe_lite::AmxAvailable() ? 1 : 0;
}

// The Box-Muller stage of ChaCha20Normal alone, for tests of chosen keystream words (uniform edge cases):
// the normals of `blocks` blocks (64 bytes each) of `keystream` into `out` (float32 if `double_precision`
// is 0, else float64), through the same code as the op.
extern "C" __attribute__((visibility("default"))) void tfe_lite_box_muller(const void* keystream,
                                                                         int64_t blocks, int double_precision,
                                                                         void* out) {
  const auto* words = static_cast<const uint32_t*>(keystream);
  if (double_precision) {
    tfe_lite::BoxMuller(words, blocks, static_cast<double*>(out));
  } else {
    tfe_lite::BoxMuller(words, blocks, static_cast<float*>(out));
  }
}

// Whether ChaCha20Normal uses libmvec's AVX-512 functions (1) or the scalar std:: ones (0).
extern "C" __attribute__((visibility("default"))) int tfe_lite_vector_normals() {
#ifdef TFE_LITE_VECTOR_NORMALS
  return 1;
#else
  return 0;
#endif
}

REGISTER_OP("RingMatMul")
    .Input("a: int64")
    .Input("b: int64")
    .Output("product: int64")
    .Attr("kernel: {'auto', 'amx', 'vector'} = 'auto'")
    .SetShapeFn(tfe_lite::RingMatMulShape)
    .Doc(R"doc(
a @ b modulo 2^64 for int64 operands of equal rank >= 2 with equal batch dimensions (no broadcasting).
kernel: 'amx' (AMX byte-plane products), 'vector' (AVX-512 IFMA; AVX2 32-bit products where the build has
no IFMA; else portable code), or 'auto': AMX where available and the product has at least 16 x 16 outputs,
else vector.
)doc");

REGISTER_OP("ChaCha20Keystream")
    .Input("key: int64")
    .Input("stream: int64")
    .Input("first_block: int64")
    .Input("shape: Tshape")
    .Output("output: int64")
    .Attr("Tshape: {int32, int64} = DT_INT32")
    .SetShapeFn(tfe_lite::ChaCha20KeystreamShape)
    .Doc(R"doc(
ChaCha20 keystream as int64 of `shape`: key = the 32 little-endian bytes of `key`, 64-bit block counter
from `first_block` (state words 12-13), 64-bit `stream` id (state words 14-15). Element i holds the
little-endian keystream bytes 8i..8i+7.
)doc");

REGISTER_OP("ChaCha20Normal")
    .Input("key: int64")
    .Input("stream: int64")
    .Input("first_block: int64")
    .Input("size: int64")
    .Output("output: dtype")
    .Attr("dtype: {float, double} = DT_FLOAT")
    .Attr("summands: int >= 1 = 1")
    .SetShapeFn(tfe_lite::ChaCha20NormalShape)
    .Doc(R"doc(
`size` standard normals of `dtype` from the ChaCha20 keystream of (`key`, `stream`) from block `first_block`
on (as ChaCha20Keystream) by the Box-Muller transform: per 64-byte block 16 (float32, 24-bit uniforms) or 8
(float64, 53-bit uniforms) normals; each output is the sum of `summands` consecutive normals over
sqrt(summands). The exact mapping of keystream bits to outputs is documented in ring_ops.cc.
)doc");

REGISTER_OP("RingBitSlice")
    .Input("x: int64")
    .Output("planes: int64")
    .Attr("bits: int >= 1 = 64")
    .SetShapeFn(tfe_lite::RingBitSliceShape)
    .Doc(R"doc(
The low `bits` bit planes of the elements of `x` (flattened), 64 elements per int64 word: planes[j, w] has
bit l equal to bit j of element 64 w + l (0 past the last element). Shape [bits, ceil(size(x) / 64)].
)doc");

REGISTER_OP("RingPatches")
    .Input("x: int64")
    .Output("patches: int64")
    .Attr("ksizes: list(int) >= 2")
    .Attr("strides: list(int) >= 2")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn(tfe_lite::RingPatchesShape)
    .Doc(R"doc(
im2col of an NHWC int64 tensor: [N, H', W', kh * kw * C] in (kh, kw, C) order, as tf.image.extract_patches
with ksizes [1, kh, kw, 1], strides [1, sh, sw, 1] and rates 1 (`ksizes` = [kh, kw], `strides` = [sh, sw]).
)doc");

REGISTER_KERNEL_BUILDER(Name("RingMatMul").Device(tensorflow::DEVICE_CPU), tfe_lite::RingMatMulOp);
REGISTER_KERNEL_BUILDER(Name("ChaCha20Keystream").Device(tensorflow::DEVICE_CPU), tfe_lite::ChaCha20KeystreamOp);
REGISTER_KERNEL_BUILDER(Name("ChaCha20Normal").Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("dtype"),
                        tfe_lite::ChaCha20NormalOp<float>);
REGISTER_KERNEL_BUILDER(Name("ChaCha20Normal").Device(tensorflow::DEVICE_CPU).TypeConstraint<double>("dtype"),
                        tfe_lite::ChaCha20NormalOp<double>);
REGISTER_KERNEL_BUILDER(Name("RingBitSlice").Device(tensorflow::DEVICE_CPU), tfe_lite::RingBitSliceOp);
REGISTER_KERNEL_BUILDER(Name("RingPatches").Device(tensorflow::DEVICE_CPU), tfe_lite::RingPatchesOp);
