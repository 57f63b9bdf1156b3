// AdamW's update of one float32 variable in a single pass over memory: an XLA custom
// call for CPUs, built and registered by tfbert/train/fused_adamw.py (which explains why).
//
// Operands: weights, m, v, gradient (n floats each, row-major), then 8 float scalars:
//   gradient scale, 1 - beta_1, 1 - beta_2, lr / (1 - beta_1^t), 1 / sqrt(1 - beta_2^t),
//   epsilon, weight decay, learning rate for the decay.
// Results: the new weights, m and v, each written over its operand (the custom call
// declares output_to_operand_aliasing, so XLA hands the same buffers in and out).
// backend_config: n, the number of elements, in decimal.
//
// The arithmetic is the XLA path's (tfbert.train.optimizers.AdamW) in the same order:
//   g = gradient * scale
//   m += (g - m) * (1 - beta_1);  v += (g * g - v) * (1 - beta_2)
//   w -= w * decay * lr;  w -= m * (lr / b1) / (sqrt(v) / sqrt(b2) + epsilon)

#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <string>

namespace xla {
// TensorFlow's libtensorflow_cc.so.2 exports this class's registry; declared here with the
// exported signatures so the kernel builds with a plain C++ compiler and no TF headers.
class CustomCallTargetRegistry {
 public:
  static CustomCallTargetRegistry* Global();
  void Register(const std::string& symbol, void* address, const std::string& platform);
};
}  // namespace xla

struct XlaCustomCallStatus;  // the kernel cannot fail, so it never sets one

namespace {

enum Scalar { kGradScale, kOneMinusBeta1, kOneMinusBeta2, kMScale, kVScale, kEpsilon,
              kDecay, kDecayRate, kNumScalars };

// XLA's calling convention for custom calls (API_VERSION_STATUS_RETURNING_UNIFIED): `out`
// holds one pointer per result, `in` one per operand.
void FusedAdamW(void* out, const void** in, const char* opaque, size_t opaque_len,
                XlaCustomCallStatus* /*status*/) {
  void** results = static_cast<void**>(out);
  // Read and written through the result pointers: each is its operand's buffer. One
  // pointer per array, so the compiler vectorises the loop with no aliasing check.
  float* __restrict w = static_cast<float*>(results[0]);
  float* __restrict m = static_cast<float*>(results[1]);
  float* __restrict v = static_cast<float*>(results[2]);
  const float* __restrict g = static_cast<const float*>(in[3]);
  const float* s = static_cast<const float*>(in[4]);
  const long n = std::strtol(std::string(opaque, opaque_len).c_str(), nullptr, 10);

  const float grad_scale = s[kGradScale], one_minus_beta1 = s[kOneMinusBeta1],
              one_minus_beta2 = s[kOneMinusBeta2], m_scale = s[kMScale],
              v_scale = s[kVScale], epsilon = s[kEpsilon], decay = s[kDecay],
              decay_rate = s[kDecayRate];
  for (long i = 0; i < n; ++i) {
    const float gi = g[i] * grad_scale;
    const float mi = m[i] + (gi - m[i]) * one_minus_beta1;
    const float vi = v[i] + (gi * gi - v[i]) * one_minus_beta2;
    m[i] = mi;
    v[i] = vi;
    const float wi = w[i] - w[i] * decay * decay_rate;
    w[i] = wi - (mi * m_scale) / (std::sqrt(vi) * v_scale + epsilon);
  }
}

static_assert(kNumScalars == 8, "fused_adamw.py passes 8 scalars");

}  // namespace

// Registers the kernel under `target` for XLA's CPU backend ("Host"). Returns the number
// of scalars the kernel reads, which the caller checks against what it passes.
extern "C" int tfbert_register_fused_adamw(const char* target) {
  xla::CustomCallTargetRegistry::Global()->Register(
      target, reinterpret_cast<void*>(&FusedAdamW), "Host");
  return kNumScalars;
}
