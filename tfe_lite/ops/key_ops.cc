// SystemRandomKey: a fresh 256-bit key from the operating system's CSPRNG, made on the device (host) the op
// runs on. In multi-host mode each player's randomness key is created by this op on that player's own
// server, so no key ever exists in the driving process.
#include <errno.h>
#include <sys/random.h>

#include <cstdint>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tfe_lite {

class SystemRandomKeyOp : public tensorflow::OpKernel {
 public:
  explicit SystemRandomKeyOp(tensorflow::OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(tensorflow::OpKernelContext* context) override {
    tensorflow::Tensor* key = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, tensorflow::TensorShape({4}), &key));
    auto* bytes = reinterpret_cast<char*>(key->flat<int64_t>().data());
    size_t filled = 0;
    while (filled < 32) {
      ssize_t got = getrandom(bytes + filled, 32 - filled, 0);
      if (got < 0 && errno == EINTR) continue;
      OP_REQUIRES(context, got > 0,
                  tensorflow::errors::Unavailable("SystemRandomKey: getrandom(2) failed with errno ", errno));
      filled += static_cast<size_t>(got);
    }
  }
};

}  // namespace tfe_lite

REGISTER_OP("SystemRandomKey")
    .Output("key: int64")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(4));
      return absl::OkStatus();
    })
    .Doc("256 bits (int64[4]) from the OS CSPRNG (getrandom), made where the op runs.");

REGISTER_KERNEL_BUILDER(Name("SystemRandomKey").Device(tensorflow::DEVICE_CPU), tfe_lite::SystemRandomKeyOp);
