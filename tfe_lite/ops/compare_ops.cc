// The mod-P steps of the producer-assisted comparison (protocols/pond/assisted.py, whose docstring gives the
// protocol), one pass over each element's positions instead of a dozen TensorFlow ops over [n, L] tensors.
// P = 67; K bit positions, L = K + 1 tested values per element. A value "below(w, b)" of a 64-bit keystream
// word w is floor(w * b / 2^64) (w read as unsigned): in 0 .. b - 1, within b / 2^64 of uniform.
//
// CompareBitShares (producer): q1[j, k] = (bit k of r[j] - below(q0_words[j, k], P)) mod P, as uint8.
// CompareTests (server i): from the opened m, the server's shares q of r's K low bits mod P (raw keystream
//   words to reduce with below() when `raw_q`, else values), and the words of the servers' common seed
//   (row j: word 0 gives v = below(w, 2L), the coin v & 1 and the rotation v >> 1; word 1 + k gives
//   v = below(w, P (P - 1)), the multiplier 1 + v mod (P - 1) and the mask v div (P - 1) of value k), the L
//   masked, multiplied and rotated test values mod P, as uint8.
// CompareAnyZero (producer): [some (d0 + d1)[j, k] = 0 mod P] per row, as int64 0/1.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tfe_lite {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using u64 = uint64_t;

constexpr int64_t kP = 67;

inline int64_t Below(int64_t word, int64_t bound) {
  const u64 w = static_cast<u64>(word);
  const u64 hi = w >> 32, lo = w & 0xFFFFFFFFu, b = static_cast<u64>(bound);
  return static_cast<int64_t>((hi * b + ((lo * b) >> 32)) >> 32);
}

inline int64_t ModP(int64_t v) {
  const int64_t r = v % kP;
  return r < 0 ? r + kP : r;
}

// Runs work(begin, end) over [0, total) on the op's intra-op threads (as ring_ops.cc's ParallelFor).
template <typename Work>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost_per_unit, Work work) {
  const auto& threads = *context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads.num_threads, threads.workers, total, cost_per_unit,
                      [&work](int64_t begin, int64_t end) { work(begin, end); });
}

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

class CompareBitSharesOp : public OpKernel {
 public:
  explicit CompareBitSharesOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& r_t = context->input(0);
    const Tensor& q0_t = context->input(1);
    OP_REQUIRES(context, r_t.dims() == 1 && q0_t.dims() == 2 && q0_t.dim_size(0) == r_t.dim_size(0) &&
                             q0_t.dim_size(1) >= 1 && q0_t.dim_size(1) <= 63,
                InvalidArgument("CompareBitShares: expected r [n] and q0_words [n, K] (1 <= K <= 63), got ",
                                     r_t.shape().DebugString(), " and ", q0_t.shape().DebugString()));
    const int64_t n = r_t.dim_size(0), bits = q0_t.dim_size(1);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({n, bits}), &out_t));
    const int64_t* r = r_t.flat<int64_t>().data();
    const int64_t* q0 = q0_t.flat<int64_t>().data();
    uint8_t* out = out_t->flat<uint8_t>().data();
    ParallelFor(context, n, 8 * bits, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const u64 value = static_cast<u64>(r[j]);
        for (int64_t k = 0; k < bits; ++k) {
          out[j * bits + k] = static_cast<uint8_t>(ModP(static_cast<int64_t>((value >> k) & 1) - Below(q0[j * bits + k], kP)));
        }
      }
    });
  }
};

class CompareTestsOp : public OpKernel {
 public:
  explicit CompareTestsOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("party", &party_));
    OP_REQUIRES_OK(context, context->GetAttr("raw_q", &raw_q_));
    OP_REQUIRES(context, party_ == 0 || party_ == 1, InvalidArgument("CompareTests: party must be 0 or 1, got ", party_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& m_t = context->input(0);
    const Tensor& q_t = context->input(1);
    const Tensor& words_t = context->input(2);
    OP_REQUIRES(context, m_t.dims() == 1 && q_t.dims() == 2 && words_t.dims() == 2, InvalidArgument("CompareTests: expected m [n], q [n, K], words [n, K + 2]"));
    const int64_t n = m_t.dim_size(0), bits = q_t.dim_size(1), length = bits + 1;
    OP_REQUIRES(context, q_t.dim_size(0) == n && words_t.dim_size(0) == n && words_t.dim_size(1) == length + 1 &&
                             bits >= 1 && bits <= 63,
                InvalidArgument("CompareTests: expected m [n], q [n, K] (1 <= K <= 63), words [n, K + 2], got ",
                                     m_t.shape().DebugString(), ", ", q_t.shape().DebugString(), ", ",
                                     words_t.shape().DebugString()));
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({n, length}), &out_t));
    const int64_t* m = m_t.flat<int64_t>().data();
    const int64_t* q = q_t.flat<int64_t>().data();
    const int64_t* words = words_t.flat<int64_t>().data();
    uint8_t* out = out_t->flat<uint8_t>().data();
    const bool first = party_ == 0, raw = raw_q_;
    ParallelFor(context, n, 40 * length, [&](int64_t begin, int64_t end) {
      int64_t c[64];
      for (int64_t j = begin; j < end; ++j) {
        const u64 value = static_cast<u64>(m[j]);
        const int64_t* w = words + j * (length + 1);
        const int64_t coin = Below(w[0], 2 * length);  // the coin and the rotation, jointly uniform
        const int64_t beta = coin & 1, sign = 1 - 2 * beta, rotation = coin >> 1;
        const int64_t* row = q + j * bits;
        // From the top position down: above = the sum of w_j over the positions above k (shares mod P).
        int64_t above = 0;
        for (int64_t k = bits - 1; k >= 0; --k) {
          const int64_t mk = static_cast<int64_t>((value >> k) & 1);
          const int64_t qk = raw ? Below(row[k], kP) : row[k];
          const int64_t mine = first ? mk : 0;
          c[k] = sign * (mine - qk) + above + (first ? 1 : 0);
          above += mine + (1 - 2 * mk) * qk;
        }
        c[bits] = beta * above + (first ? 1 - beta : 0);
        uint8_t* d = out + j * length;
        for (int64_t k = 0; k < length; ++k) {
          const int64_t pair = Below(w[1 + k], kP * (kP - 1));  // multiplier and mask, jointly uniform
          const int64_t s = 1 + pair % (kP - 1), t = pair / (kP - 1);
          const int64_t v = ModP(s * c[k] + (first ? t : -t));
          int64_t at = k - rotation;  // entry (k - o) mod L of the output holds value k
          if (at < 0) at += length;
          d[at] = static_cast<uint8_t>(v);
        }
      }
    });
  }

 private:
  int party_;
  bool raw_q_;
};

class CompareAnyZeroOp : public OpKernel {
 public:
  explicit CompareAnyZeroOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& a_t = context->input(0);
    const Tensor& b_t = context->input(1);
    OP_REQUIRES(context, a_t.dims() == 2 && a_t.shape() == b_t.shape(),
                InvalidArgument("CompareAnyZero: expected two [n, L] tensors, got ", a_t.shape().DebugString(),
                                     " and ", b_t.shape().DebugString()));
    const int64_t n = a_t.dim_size(0), length = a_t.dim_size(1);
    Tensor* out_t = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, TensorShape({n}), &out_t));
    const uint8_t* a = a_t.flat<uint8_t>().data();
    const uint8_t* b = b_t.flat<uint8_t>().data();
    int64_t* out = out_t->flat<int64_t>().data();
    ParallelFor(context, n, 4 * length, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        int64_t hit = 0;
        for (int64_t k = 0; k < length; ++k) {
          const int sum = a[j * length + k] + b[j * length + k];
          hit |= (sum == 0) | (sum == kP);
        }
        out[j] = hit;
      }
    });
  }
};

// [rows of input `input`, columns of input `columns_input` + extra].
absl::Status MatrixLike(InferenceContext* c, int input, int columns_input, int extra) {
  ::tensorflow::shape_inference::DimensionHandle cols;
  TF_RETURN_IF_ERROR(c->Add(c->Dim(c->input(columns_input), 1), extra, &cols));
  c->set_output(0, c->Matrix(c->Dim(c->input(input), 0), cols));
  return absl::OkStatus();
}

}  // namespace
}  // namespace tfe_lite

REGISTER_OP("CompareBitShares")
    .Input("r: int64")
    .Input("q0_words: int64")
    .Output("q1: uint8")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) { return tfe_lite::MatrixLike(c, 0, 1, 0); })
    .Doc("(bit k of r[j] - below(q0_words[j, k], 67)) mod 67: server1's shares of r's low bits.");

REGISTER_OP("CompareTests")
    .Input("m: int64")
    .Input("q: int64")
    .Input("words: int64")
    .Output("tests: uint8")
    .Attr("party: int")
    .Attr("raw_q: bool = false")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) { return tfe_lite::MatrixLike(c, 0, 1, 1); })
    .Doc("A server's masked, multiplied, rotated test values mod 67 of the assisted comparison.");

REGISTER_OP("CompareAnyZero")
    .Input("a: uint8")
    .Input("b: uint8")
    .Output("hit: int64")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(c->Dim(c->input(0), 0)));
      return absl::OkStatus();
    })
    .Doc("Per row, 1 if some a + b is 0 mod 67, else 0.");

REGISTER_KERNEL_BUILDER(Name("CompareBitShares").Device(tensorflow::DEVICE_CPU), tfe_lite::CompareBitSharesOp);
REGISTER_KERNEL_BUILDER(Name("CompareTests").Device(tensorflow::DEVICE_CPU), tfe_lite::CompareTestsOp);
REGISTER_KERNEL_BUILDER(Name("CompareAnyZero").Device(tensorflow::DEVICE_CPU), tfe_lite::CompareAnyZeroOp);
