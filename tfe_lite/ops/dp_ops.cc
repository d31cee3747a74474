// Native TensorFlow ops of tfe_lite for differential privacy, compiled into the same library as
// ring_ops.cc by `python -m tfe_lite.ops.build`:
//
//   PerRecordConv2DKernelGrad  each record's Conv2D kernel gradient, [records, kh, kw, in, out].
//
// DP-SGD clips every record's gradient, so for a convolution it needs the kernel gradient of each record
// rather than their sum. TensorFlow has no op for that: a loop of Conv2DBackpropFilter over records, a
// batched matmul per kernel offset, or a grouped convolution each run at less than half the speed of the
// summed Conv2DBackpropFilter on the same data. This kernel computes, for each record r (records in
// parallel on the op's intra-op threads),
//
//   grad[r][m, :] = sum over output positions t of  image_r[base[t] + offset[m]] * G_r[t, :],
//
// m = (i, j, c) a kernel offset and channel, G_r [positions, out] the output gradient, straight from the
// image (no im2col copy) in register blocks of 8 or 16 rows by one or two 64-byte vectors of units (16
// accumulators). The im2col-and-GEMM kernel it replaced ran at 3.5 to 5 GMAC/s on a single input channel
// (a first layer), this one at the speed of the summed Conv2DBackpropFilter (Opacus's 8x8 stride-2 first
// layer at batch 256: 0.64 ms against 3.75 ms; the summed gradient 0.70 ms). The Python wrapper
// (tfe_lite.ops.per_record_conv2d_kernel_grad) pads the input for "SAME" first, so the kernel only knows
// VALID windows; its pure-TensorFlow twin (one batched matmul per offset) gives the same values up to
// float rounding.

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

// SIMD vectors of one cache line (AVX-512 registers under -march=native on this project's machines; GCC's
// vector extension lowers them to narrower instructions elsewhere).
template <typename T>
struct Simd {
  static constexpr int kLanes = 64 / sizeof(T);
  typedef T Vector __attribute__((vector_size(64)));
};

// The register-blocked product behind every record's gradient: rows [MR] of the kernel gradient (kernel offsets
// and channels m, each reading image[base[t] + offsets[m]]) by NR vectors of units, accumulated over all
// positions t in MR x NR vector registers. It reads the image where the windows lie: no im2col copy.
template <typename T, int MR, int NR>
void MicroKernel(const T* image, const int64_t* base, int64_t positions, const int64_t* offsets, const T* grads,
                 int64_t grad_stride, T* out, int64_t out_stride) {
  using V = typename Simd<T>::Vector;
  constexpr int kLanes = Simd<T>::kLanes;
  V acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = V{};
  int64_t off[MR];
  for (int m = 0; m < MR; ++m) off[m] = offsets[m];
  for (int64_t t = 0; t < positions; ++t) {
    const T* pixels = image + base[t];
    V g[NR];
    for (int n = 0; n < NR; ++n) std::memcpy(&g[n], grads + t * grad_stride + n * kLanes, sizeof(V));
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const T p = pixels[off[m]];
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) acc[m][n] += g[n] * p;
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) std::memcpy(out + m * out_stride + n * kLanes, &acc[m][n], sizeof(V));
}

template <typename T, int NR>
void RowBlocks(const T* image, const int64_t* base, int64_t positions, const int64_t* offsets, int64_t patch,
               const T* grads, int64_t grad_stride, T* out, int64_t out_stride) {
  constexpr int kRows = NR == 1 ? 16 : 8;  // 16 accumulators either way, 32 registers on AVX-512
  int64_t m = 0;
  for (; m + kRows <= patch; m += kRows) {
    MicroKernel<T, kRows, NR>(image, base, positions, offsets + m, grads, grad_stride, out + m * out_stride,
                              out_stride);
  }
  for (; m < patch; ++m) {  // the last rows, one at a time
    MicroKernel<T, 1, NR>(image, base, positions, offsets + m, grads, grad_stride, out + m * out_stride,
                          out_stride);
  }
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
    const int64_t patch = w.kh * w.kw * channels;  // rows of a record's gradient
    const int64_t positions = out_h * out_w;
    T* out = output->flat<T>().data();
    if (records == 0 || patch == 0 || units == 0) return;
    if (positions == 0) {
      std::fill(out, out + output->NumElements(), T(0));
      return;
    }
    const T* in = input.flat<T>().data();
    const T* g = grad.flat<T>().data();

    // Where each position's window starts in a record's image, and where each gradient row reads in it.
    std::vector<int64_t> base(positions), offsets(patch);
    for (int64_t oh = 0; oh < out_h; ++oh)
      for (int64_t ow = 0; ow < out_w; ++ow) base[oh * out_w + ow] = (oh * w.sh * width + ow * w.sw) * channels;
    for (int64_t i = 0; i < w.kh; ++i)
      for (int64_t j = 0; j < w.kw; ++j)
        for (int64_t c = 0; c < channels; ++c)
          offsets[(i * w.kw + j) * channels + c] = (i * w.dh * width + j * w.dw) * channels + c;

    constexpr int64_t kLanes = Simd<T>::kLanes;
    const int64_t vectors = (units + kLanes - 1) / kLanes, padded = vectors * kLanes;
    const int64_t cost = 2 * positions * patch * padded;  // multiply-adds per record, about cycles / 4
    const auto& threads = *context->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(threads.num_threads, threads.workers, records, cost, [&](int64_t begin, int64_t end) {
      // Gradients padded to whole vectors (when units is not a multiple of the lanes) and the result rows.
      std::vector<T> grads_padded(units == padded ? 0 : positions * padded, T(0));
      std::vector<T> result(patch * padded);
      for (int64_t r = begin; r < end; ++r) {
        const T* image = in + r * height * width * channels;
        const T* grads = g + r * positions * units;
        if (units != padded) {
          for (int64_t t = 0; t < positions; ++t) {
            std::memcpy(grads_padded.data() + t * padded, grads + t * units, sizeof(T) * units);
          }
          grads = grads_padded.data();
        }
        T* rows = units == padded ? out + r * patch * units : result.data();
        int64_t n = 0;
        for (; n + 2 <= vectors; n += 2) {
          RowBlocks<T, 2>(image, base.data(), positions, offsets.data(), patch, grads + n * kLanes, padded,
                          rows + n * kLanes, padded);
        }
        if (n < vectors) {
          RowBlocks<T, 1>(image, base.data(), positions, offsets.data(), patch, grads + n * kLanes, padded,
                          rows + n * kLanes, padded);
        }
        if (units != padded) {
          T* dst = out + r * patch * units;
          for (int64_t m = 0; m < patch; ++m) std::memcpy(dst + m * units, rows + m * padded, sizeof(T) * units);
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
