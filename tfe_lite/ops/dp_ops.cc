// Native TensorFlow ops of tfe_lite for differential privacy, compiled into the same library as
// ring_ops.cc by `python -m tfe_lite.ops.build`:
//
//   PerRecordConv2DKernelGrad  each record's Conv2D kernel gradient, [records, kh, kw, in, out].
//
// DP-SGD clips every record's gradient, so for a convolution it needs the kernel gradient of each record
// rather than their sum. TensorFlow has no op for that: a loop of Conv2DBackpropFilter over records, a
// batched matmul per kernel offset, or a grouped convolution each run at less than half the speed of the
// summed Conv2DBackpropFilter on the same data. This kernel does, for each record r (records in parallel on
// the op's intra-op threads),
//
//   grad[r] = P_r^T G_r,   P_r = im2col(input[r])   [positions, kh * kw * in],   G_r   [positions, out],
//
// with P_r built block by block (kBlockRows output positions at a time) in a per-thread buffer that stays
// in cache, and Eigen's GEMM for the product. The Python wrapper (tfe_lite.ops.per_record_conv2d_kernel_grad)
// pads the input for "SAME" first, so the kernel only knows VALID windows; its pure-TensorFlow twin (one
// batched matmul per offset) gives the same values up to float rounding.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"
#include "Eigen/Core"

namespace tfe_lite {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

// Output positions per im2col block: 256 rows x (3 * 3 * 64) floats = 576 KiB, within a core's L2.
constexpr int64_t kBlockRows = 256;

struct Window {
  int64_t kh, kw, sh, sw, dh, dw;
};

absl::Status ReadWindow(OpKernelConstruction* context, Window* window) {
  std::vector<int32_t> kernel, strides, dilations;
  TF_RETURN_IF_ERROR(context->GetAttr("kernel_size", &kernel));
  TF_RETURN_IF_ERROR(context->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(context->GetAttr("dilations", &dilations));
  for (const auto* values : {&kernel, &strides, &dilations}) {
    if (values->size() != 2 || (*values)[0] < 1 || (*values)[1] < 1) {
      return InvalidArgument("PerRecordConv2DKernelGrad: kernel_size, strides and dilations must each be "
                             "two positive ints, got kernel_size=[", absl::StrJoin(kernel, ","),
                             "] strides=[", absl::StrJoin(strides, ","), "] dilations=[",
                             absl::StrJoin(dilations, ","), "]");
    }
  }
  *window = {kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1]};
  return absl::OkStatus();
}

// The VALID output size of one spatial dimension.
int64_t OutputSize(int64_t size, int64_t kernel, int64_t stride, int64_t dilation) {
  const int64_t span = (kernel - 1) * dilation + 1;
  return size < span ? 0 : (size - span) / stride + 1;
}

template <typename T>
class PerRecordConv2DKernelGradOp : public OpKernel {
 public:
  explicit PerRecordConv2DKernelGradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, ReadWindow(context, &window_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& input = context->input(0);
    const Tensor& grad = context->input(1);
    OP_REQUIRES(context, input.dims() == 4 && grad.dims() == 4,
                InvalidArgument("PerRecordConv2DKernelGrad: input and out_backprop must be rank 4 "
                                "(NHWC), got shapes ", input.shape().DebugString(), " and ",
                                grad.shape().DebugString()));
    const int64_t records = input.dim_size(0), height = input.dim_size(1), width = input.dim_size(2),
                  channels = input.dim_size(3), units = grad.dim_size(3);
    const Window& w = window_;
    const int64_t out_h = OutputSize(height, w.kh, w.sh, w.dh), out_w = OutputSize(width, w.kw, w.sw, w.dw);
    OP_REQUIRES(context,
                grad.dim_size(0) == records && grad.dim_size(1) == out_h && grad.dim_size(2) == out_w,
                InvalidArgument("PerRecordConv2DKernelGrad: out_backprop shape ", grad.shape().DebugString(),
                                " does not match the VALID output [", records, ",", out_h, ",", out_w,
                                ",*] of input ", input.shape().DebugString()));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({records, w.kh, w.kw, channels, units}), &output));
    const int64_t patch = w.kh * w.kw * channels;  // im2col columns
    const int64_t positions = out_h * out_w;
    T* out = output->flat<T>().data();
    if (records == 0 || patch == 0 || units == 0) return;
    if (positions == 0) {
      std::fill(out, out + output->NumElements(), T(0));
      return;
    }
    const T* in = input.flat<T>().data();
    const T* g = grad.flat<T>().data();

    using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using ConstMap = Eigen::Map<const Matrix>;
    using Map = Eigen::Map<Matrix>;
    const int64_t cost = 2 * positions * patch * units;  // multiply-adds per record, about cycles / 4
    const auto& threads = *context->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads.num_threads, threads.workers, records, cost, [&](int64_t begin, int64_t end) {
      std::vector<T> buffer(std::min(positions, kBlockRows) * patch);
      for (int64_t r = begin; r < end; ++r) {
        const T* image = in + r * height * width * channels;
        Map result(out + r * patch * units, patch, units);
        for (int64_t first = 0; first < positions; first += kBlockRows) {
          const int64_t rows = std::min(kBlockRows, positions - first);
          for (int64_t t = 0; t < rows; ++t) {  // im2col rows of this block
            const int64_t oh = (first + t) / out_w, ow = (first + t) % out_w;
            T* row = buffer.data() + t * patch;
            for (int64_t i = 0; i < w.kh; ++i) {
              const T* line = image + ((oh * w.sh + i * w.dh) * width + ow * w.sw) * channels;
              for (int64_t j = 0; j < w.kw; ++j, row += channels) {
                std::memcpy(row, line + j * w.dw * channels, sizeof(T) * channels);
              }
            }
          }
          ConstMap block(buffer.data(), rows, patch);
          ConstMap grads(g + (r * positions + first) * units, rows, units);
          if (first == 0) {
            result.noalias() = block.transpose() * grads;
          } else {
            result.noalias() += block.transpose() * grads;
          }
        }
      }
    });
  }

 private:
  Window window_;
};

absl::Status PerRecordConv2DKernelGradShape(InferenceContext* c) {
  ShapeHandle input, grad;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &grad));
  std::vector<int32_t> kernel;
  TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &kernel));
  if (kernel.size() != 2) return InvalidArgument("kernel_size must have 2 elements");
  DimensionHandle records;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(input, 0), c->Dim(grad, 0), &records));
  c->set_output(0, c->MakeShape({records, c->MakeDim(kernel[0]), c->MakeDim(kernel[1]), c->Dim(input, 3),
                                 c->Dim(grad, 3)}));
  return absl::OkStatus();
}

}  // namespace
}  // namespace tfe_lite

REGISTER_OP("PerRecordConv2DKernelGrad")
    .Input("input: T")
    .Input("out_backprop: T")
    .Output("kernel_grads: T")
    .Attr("T: {float, double}")
    .Attr("kernel_size: list(int)")
    .Attr("strides: list(int) = [1, 1]")
    .Attr("dilations: list(int) = [1, 1]")
    .SetShapeFn(tfe_lite::PerRecordConv2DKernelGradShape)
    .Doc(R"doc(
Each record's Conv2D kernel gradient for VALID windows (pad the input first for SAME), NHWC layout:
kernel_grads[r, i, j, c, u] = sum over output positions (y, x) of
input[r, y * strides[0] + i * dilations[0], x * strides[1] + j * dilations[1], c] * out_backprop[r, y, x, u].
)doc");

REGISTER_KERNEL_BUILDER(Name("PerRecordConv2DKernelGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T"),
                        tfe_lite::PerRecordConv2DKernelGradOp<float>);
REGISTER_KERNEL_BUILDER(Name("PerRecordConv2DKernelGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<double>("T"),
                        tfe_lite::PerRecordConv2DKernelGradOp<double>);
