// Native TensorFlow ops of tfe_lite, built by `python -m tfe_lite.ops.build` against the installed
// TensorFlow with -march=native:
//
//   RingMatMul         a @ b mod 2^64 on int64 (rank 2, or equal batch dimensions in front).
//   ChaCha20Keystream  the ChaCha20 keystream (RFC 8439 block function) as an int64 tensor.
//
// Both are pure functions of their inputs (not stateful) with CPU kernels that shard their work over the
// device's intra-op worker threads. tfe_lite/ops/__init__.py and tfe_lite/prg.py hold the pure-TensorFlow
// twins that must give bit-identical results.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

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
// Ring matmul: C = A B mod 2^64, row-major, via packed panels and a register-blocked micro-kernel.
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
// Without IFMA a portable kernel (that the compiler vectorizes, e.g. with vpmullq) does plain a * b.
// ---------------------------------------------------------------------------------------------------------

constexpr int64_t kMR = 4;     // rows of A per micro-panel
constexpr int64_t kNR = 16;    // columns of B per micro-panel
constexpr int64_t kKC = 256;   // K block: the B micro-panel (kKC x kNR, packed) stays in L1/L2
constexpr int64_t kMC = 128;   // rows of a C tile (one work item)
constexpr int64_t kNC = 256;   // columns of a C tile

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
  const __mmask8 m0 = cols >= 8 ? 0xFF : static_cast<__mmask8>((1u << cols) - 1);
  const __mmask8 m1 = cols >= 16 ? 0xFF : cols <= 8 ? 0 : static_cast<__mmask8>((1u << (cols - 8)) - 1);
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
  const __mmask8 m0 = cols >= 8 ? 0xFF : static_cast<__mmask8>((1u << cols) - 1);
  const __mmask8 m1 = cols >= 16 ? 0xFF : cols <= 8 ? 0 : static_cast<__mmask8>((1u << (cols - 8)) - 1);
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

// batch independent products C_i = A_i B_i with A_i [m, k], B_i [k, n], all row-major and contiguous.
void RingGemm(OpKernelContext* context, const u64* a, const u64* b, u64* c, int64_t batch, int64_t m,
              int64_t k, int64_t n) {
  if (batch == 0 || m == 0 || n == 0) return;
  if (k == 0) {
    std::memset(c, 0, sizeof(u64) * batch * m * n);
    return;
  }
  const int64_t a_panels = CeilDiv(m, kMR), b_panels = CeilDiv(n, kNR);
  const int64_t a_panel_words = kWords * kMR * k, b_panel_words = kWords * kNR * k;
  Tensor a_packed_t, b_packed_t;
  OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_INT64,
                                                 TensorShape({batch * a_panels * a_panel_words}), &a_packed_t));
  OP_REQUIRES_OK(context, context->allocate_temp(::tensorflow::DT_INT64,
                                                 TensorShape({batch * b_panels * b_panel_words}), &b_packed_t));
  u64* a_packed = reinterpret_cast<u64*>(a_packed_t.flat<int64_t>().data());
  u64* b_packed = reinterpret_cast<u64*>(b_packed_t.flat<int64_t>().data());

  // Pack every panel once: units are A panels then B panels, over the batch.
  const int64_t pack_units = batch * (a_panels + b_panels);
  ParallelFor(context, pack_units, 8 * kNR * k, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      if (unit < batch * a_panels) {
        const int64_t bi = unit / a_panels, p = unit % a_panels;
        PackA(a + (bi * m + p * kMR) * k, std::min(kMR, m - p * kMR), k, k, a_packed + unit * a_panel_words);
      } else {
        const int64_t u = unit - batch * a_panels, bi = u / b_panels, q = u % b_panels;
        PackB(b + bi * k * n + q * kNR, std::min(kNR, n - q * kNR), k, n, b_packed + u * b_panel_words);
      }
    }
  });

  // Work items are kMC x kNC tiles of C; within a tile, each B micro-panel is reused across the tile's rows.
  const int64_t row_tiles = CeilDiv(m, kMC), col_tiles = CeilDiv(n, kNC);
  const int64_t tile_cost = std::min(m, kMC) * std::min(n, kNC) * k / 4 + 1;
  ParallelFor(context, batch * row_tiles * col_tiles, tile_cost, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / (row_tiles * col_tiles);
      const int64_t i0 = (item / col_tiles) % row_tiles * kMC, j0 = item % col_tiles * kNC;
      const int64_t i1 = std::min(m, i0 + kMC), j1 = std::min(n, j0 + kNC);
      const u64* a_base = a_packed + bi * a_panels * a_panel_words;
      const u64* b_base = b_packed + bi * b_panels * b_panel_words;
      u64* c_base = c + bi * m * n;
      for (int64_t k0 = 0; k0 < k; k0 += kKC) {
        const int64_t kc = std::min(kKC, k - k0);
        for (int64_t j = j0; j < j1; j += kNR) {
          const u64* bp = b_base + (j / kNR) * b_panel_words + k0 * kWords * kNR;
          for (int64_t i = i0; i < i1; i += kMR) {
            const u64* ap = a_base + (i / kMR) * a_panel_words + k0 * kWords * kMR;
            MicroKernel(kc, ap, bp, c_base + i * n + j, n, std::min(kMR, i1 - i), std::min(kNR, j1 - j),
                        k0 > 0);
          }
        }
      }
    }
  });
}

class RingMatMulOp : public OpKernel {
 public:
  explicit RingMatMulOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& a = context->input(0);
    const Tensor& b = context->input(1);
    const int rank = a.dims();
    OP_REQUIRES(context, rank >= 2 && b.dims() == rank,
                InvalidArgument(
                    "RingMatMul expects operands of equal rank >= 2, got shapes ", a.shape().DebugString(),
                    " and ", b.shape().DebugString()));
    TensorShape out_shape;
    int64_t batch = 1;
    for (int d = 0; d < rank - 2; ++d) {
      OP_REQUIRES(context, a.dim_size(d) == b.dim_size(d),
                  InvalidArgument(
                      "RingMatMul expects equal batch dimensions, got shapes ", a.shape().DebugString(), " and ",
                      b.shape().DebugString()));
      OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(a.dim_size(d)));
      batch *= a.dim_size(d);
    }
    const int64_t m = a.dim_size(rank - 2), k = a.dim_size(rank - 1), n = b.dim_size(rank - 1);
    OP_REQUIRES(context, b.dim_size(rank - 2) == k,
                InvalidArgument("RingMatMul: inner dimensions differ, got shapes ",
                                                      a.shape().DebugString(), " and ",
                                                      b.shape().DebugString()));
    OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(m));
    OP_REQUIRES_OK(context, out_shape.AddDimWithStatus(n));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, out_shape, &out));
    RingGemm(context, reinterpret_cast<const u64*>(a.flat<int64_t>().data()),
             reinterpret_cast<const u64*>(b.flat<int64_t>().data()),
             reinterpret_cast<u64*>(out->flat<int64_t>().data()), batch, m, k, n);
  }
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

}  // namespace
}  // namespace tfe_lite

REGISTER_OP("RingMatMul")
    .Input("a: int64")
    .Input("b: int64")
    .Output("product: int64")
    .SetShapeFn(tfe_lite::RingMatMulShape)
    .Doc(R"doc(
a @ b modulo 2^64 for int64 operands of equal rank >= 2 with equal batch dimensions (no broadcasting).
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

REGISTER_KERNEL_BUILDER(Name("RingMatMul").Device(tensorflow::DEVICE_CPU), tfe_lite::RingMatMulOp);
REGISTER_KERNEL_BUILDER(Name("ChaCha20Keystream").Device(tensorflow::DEVICE_CPU), tfe_lite::ChaCha20KeystreamOp);
