#include "tessera/nn/linear.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/kernels/gemm.hpp"

#include <algorithm>
#include <cmath>

namespace tessera::nn {
using kernels::Trans;

const char* linear_split_name(LinearSplit split) {
  switch (split) {
    case LinearSplit::none:
      return "none";
    case LinearSplit::output:
      return "output";
    case LinearSplit::input:
      return "input";
  }
  return "unknown";
}

Linear::Linear(std::string name, const Shape& input, const LinearOptions& options,
               BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_out(options.out),
      m_bias(options.bias),
      m_split(options.split),
      m_region(this->context(), this->name()) {
  const bool ok = (input.size() == 1 || input.size() == 2) &&
                  std::all_of(input.begin(), input.end(), [](Index e) { return e >= 1; });
  if (!ok) {
    TESSERA_THROW(
        "linear '{}': input shape {} must be (in,) or (tokens, in) with extents >= 1 (flatten "
        "first)",
        this->name(), to_string(input));
  }
  if (options.out < 1) {
    TESSERA_THROW("linear '{}': option out = {} must be >= 1", this->name(), options.out);
  }
  m_in = input.back();
  m_lead = Shape(input.begin(), input.end() - 1);
  const int tensor = m_region.size();
  const Index split_extent = m_split == LinearSplit::output ? m_out : m_in;
  if (m_split != LinearSplit::none && split_extent < tensor) {
    TESSERA_THROW(
        "linear '{}': split = \"{}\" cuts its {} {} features over {} tensor ranks; "
        "every rank needs at least one",
        this->name(), linear_split_name(m_split), split_extent,
        m_split == LinearSplit::output ? "output" : "input", tensor);
  }
  const float bound = 1.0F / std::sqrt(static_cast<float>(m_in));
  const InitSpec init = InitSpec::uniform(-bound, bound);
  Layout weight = Layout::replicated({m_out, m_in});  // (out, in)
  Layout bias = Layout::replicated({m_out});          // (out,)
  if (m_split == LinearSplit::output) {
    weight.and_split(0, GridAxis::tensor);
    bias.and_split(0, GridAxis::tensor);
  } else if (m_split == LinearSplit::input) {
    weight.and_split(1, GridAxis::tensor);
  }
  const Parameter& w = add_parameter("weight", weight, init);
  m_local_out = w.value.dim(0);
  m_local_in = w.value.dim(1);
  if (m_bias) {
    add_parameter("bias", bias, init, /*decay=*/false);
  }
  m_local_x = sample_shape(m_split == LinearSplit::input ? m_local_in : m_in);
  m_local_y = sample_shape(m_split == LinearSplit::output ? m_local_out : m_out);
}

Shape Linear::sample_shape(Index features) const {
  Shape s = m_lead;
  s.push_back(features);
  return s;
}

Shape Linear::output_shape(const Shape& input) const {
  if (input != sample_shape(m_in)) {
    TESSERA_THROW("linear '{}': input sample shape {} does not fit, expected {}", name(),
                  to_string(input), to_string(sample_shape(m_in)));
  }
  return sample_shape(m_out);
}

Layout Linear::place_input(const Layout& input) {
  (void)output_shape(input.global_shape());
  const int features = static_cast<int>(m_lead.size());  // the last dimension
  const GridPlace& place = context().place();
  m_sliced = m_split != LinearSplit::input && m_region.is_sliced(input);
  Layout out;
  if (m_split == LinearSplit::input) {
    if (input != Layout::split(sample_shape(m_in), features, GridAxis::tensor)) {
      TESSERA_THROW(
          "linear '{}' (split = \"input\") takes its input features split over the tensor "
          "axis, as a split = \"output\" layer before it leaves them, but its input is {}",
          name(), input.to_string());
    }
    out = m_region.outside(sample_shape(m_out));  // whole for (out,) samples
  } else if (m_split == LinearSplit::output) {
    if (!m_sliced) {
      require_whole(input);
    }
    out = Layout::split(sample_shape(m_out), features, GridAxis::tensor);
  } else {
    if (!m_sliced) {
      require_whole(input);
    }
    out =
        m_sliced ? m_region.outside(sample_shape(m_out)) : Layout::replicated(sample_shape(m_out));
    // On a token slice the weight's gradient is this rank's tokens' part: summed over tensor too.
    for (Parameter& p : parameters()) {
      p.partial = m_sliced ? AxisSet{GridAxis::data, GridAxis::tensor} : AxisSet{GridAxis::data};
    }
  }
  m_local_x = input.local_shape(place);
  m_local_y = out.local_shape(place);
  return out;
}

ForwardResult Linear::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, m_local_x, "input");
  // Split by output, the input enters the region whole: gathered from the token slices with
  // sequence parallelism, else as it is (copy_to).
  const Tensor xin = m_split == LinearSplit::output ? m_region.enter_forward(x, m_sliced) : x;
  const Index n = xin.numel() / m_local_in;  // GEMM rows: samples × tokens
  Shape y_shape = xin.shape();
  y_shape.back() = m_local_out;
  const Tensor y = m_output.get(name() + ".output", y_shape);  // uninitialised
  // y = b + x · Wᵀ: (rows, in) · (in, out). broadcast_bias writes the bias into every row and the
  // GEMM accumulates onto it (beta = 1): the bias costs what the GEMM's own zeroing of C (beta =
  // 0, no bias) would. Split by input, only tensor rank 0 starts from the bias: the sum over the
  // tensor axis then adds it once.
  const bool add_bias = m_bias && (m_split != LinearSplit::input ||
                                   context().place().coord_of(GridAxis::tensor) == 0);
  if (add_bias) {
    kernels::broadcast_bias(y.reshaped({n, m_local_out}), parameters()[1].value);
  }
  kernels::gemm(Trans::no, Trans::yes, n, m_local_out, m_local_in, 1.0F, xin.data(), m_local_in,
                parameters()[0].value.data(), m_local_in, add_bias ? 1.0F : 0.0F, y.data(),
                m_local_out);
  Context ctx;
  ctx.saved = {xin};  // (N, [T,] local in): whole tokens when split by output
  ctx.input_shape = x.shape();
  if (m_split == LinearSplit::input) {
    return {m_region.leave_forward(y), std::move(ctx)};  // partial over tensor → the sum (slice)
  }
  return {y, std::move(ctx)};
}

Tensor Linear::backward(const Tensor& dy_in, Context&& ctx) {
  check_batch(dy_in, m_local_y, "output grad");
  TESSERA_CHECK(ctx.saved.size() == 1 && ctx.input_shape == batch_shape(dy_in.dim(0), m_local_x),
                "linear '{}': backward context does not match output grad {} (call backward once "
                "with the context of the forward call that produced it)",
                name(), to_string(dy_in.shape()));
  // Split by input, dy of the whole tokens (joined from the slices with sequence parallelism).
  const Tensor dy = m_split == LinearSplit::input ? m_region.leave_backward(dy_in) : dy_in;
  const Tensor& x = ctx.saved[0];            // (N, [T,] in)
  const Index n = dy.numel() / m_local_out;  // GEMM rows
  TESSERA_CHECK(x.numel() == n * m_local_in, "linear '{}': saved input {} does not fit dy {}",
                name(), to_string(x.shape()), to_string(dy.shape()));
  Parameter& w = parameters()[0];
  // dW += dyᵀ · x: (out, N) · (N, in).
  kernels::gemm(Trans::yes, Trans::no, m_local_out, m_local_in, n, 1.0F, dy.data(), m_local_out,
                x.data(), m_local_in, 1.0F, w.grad.data(), m_local_in);
  if (m_bias) {
    kernels::bias_grad(dy.reshaped({n, m_local_out}), parameters()[1].grad);  // db += Σ_rows dy
  }
  if (!needs_input_grad()) {
    return Tensor();  // a first layer on data: nobody needs dL/dx
  }
  // dx = dy · W: (N, out) · (out, in).
  const Tensor dx = m_input_grad.get(name() + ".input_grad", x.shape());  // beta = 0
  kernels::gemm(Trans::no, Trans::no, n, m_local_in, m_local_out, 1.0F, dy.data(), m_local_out,
                w.value.data(), m_local_in, 0.0F, dx.data(), m_local_in);
  if (m_split == LinearSplit::output) {
    return m_region.enter_backward(dx, m_sliced);  // each rank's part of dx → the sum (slice)
  }
  return dx;
}

}  // namespace tessera::nn
