#include "tessera/nn/linear.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/kernels/gemm.hpp"

#include <cmath>

namespace tessera::nn {
using kernels::Trans;

Linear::Linear(std::string name, const Shape& input, const LinearOptions& options)
    : Layer(std::move(name)), m_out(options.out), m_bias(options.bias) {
  if (input.size() != 1 || input[0] < 1) {
    TESSERA_THROW("linear '{}': input shape {} must be (in,) with in >= 1 (flatten first)",
                  this->name(), to_string(input));
  }
  if (options.out < 1) {
    TESSERA_THROW("linear '{}': option out = {} must be >= 1", this->name(), options.out);
  }
  m_in = input[0];
  const float bound = 1.0F / std::sqrt(static_cast<float>(m_in));
  add_parameter("weight", {m_out, m_in}, InitSpec::uniform(-bound, bound));  // (out, in)
  if (m_bias) {
    add_parameter("bias", {m_out}, InitSpec::uniform(-bound, bound), /*decay=*/false);  // (out,)
  }
}

Shape Linear::output_shape(const Shape& input) const {
  if (input != Shape{m_in}) {
    TESSERA_THROW("linear '{}': input sample shape {} does not fit, expected ({},)", name(),
                  to_string(input), m_in);
  }
  return {m_out};
}

ForwardResult Linear::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, {m_in}, "input");
  const Index n = x.dim(0);
  const Tensor y = m_output.get(name() + ".output", {n, m_out});  // (N, out), uninitialised
  // y = b + x · Wᵀ: (N, in) · (in, out). broadcast_bias writes the bias into every row and the
  // GEMM accumulates onto it (beta = 1): the bias costs what the GEMM's own zeroing of C (beta =
  // 0, no bias) would.
  if (m_bias) {
    kernels::broadcast_bias(y, parameters()[1].value);
  }
  kernels::gemm(Trans::no, Trans::yes, n, m_out, m_in, 1.0F, x.data(), m_in,
                parameters()[0].value.data(), m_in, m_bias ? 1.0F : 0.0F, y.data(), m_out);
  Context ctx;
  ctx.saved = {x};  // (N, in)
  ctx.input_shape = x.shape();
  return {y, std::move(ctx)};
}

Tensor Linear::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, {m_out}, "output grad");
  TESSERA_CHECK(ctx.saved.size() == 1 && ctx.saved[0].shape() == (Shape{dy.dim(0), m_in}),
                "linear '{}': backward context does not match output grad {} (call backward once "
                "with the context of the forward call that produced it)",
                name(), to_string(dy.shape()));
  const Tensor& x = ctx.saved[0];  // (N, in)
  const Index n = dy.dim(0);
  Parameter& w = parameters()[0];
  // dW += dyᵀ · x: (out, N) · (N, in).
  kernels::gemm(Trans::yes, Trans::no, m_out, m_in, n, 1.0F, dy.data(), m_out, x.data(), m_in, 1.0F,
                w.grad.data(), m_in);
  if (m_bias) {
    kernels::bias_grad(dy, parameters()[1].grad);  // db += Σ_n dy
  }
  if (!needs_input_grad()) {
    return Tensor();  // a first layer on data: nobody needs dL/dx
  }
  // dx = dy · W: (N, out) · (out, in).
  const Tensor dx = m_input_grad.get(name() + ".input_grad", {n, m_in});  // (N, in); beta = 0
  kernels::gemm(Trans::no, Trans::no, n, m_in, m_out, 1.0F, dy.data(), m_out, w.value.data(), m_in,
                0.0F, dx.data(), m_in);
  return dx;
}

}  // namespace tessera::nn
