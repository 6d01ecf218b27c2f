#include "tessera/nn/dropout.hpp"

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/kernels/elementwise.hpp"

#include <fmt/format.h>

#include <utility>

namespace tessera::nn {
namespace {
// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix.
constexpr std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

std::uint64_t dropout_stream(std::string_view name, std::uint64_t step) {
  return rng::hash_name(name) ^ splitmix64(step);
}

Dropout::Dropout(std::string name, const Shape& input, const DropoutOptions& options)
    : Layer(std::move(name)), m_input(input), m_options(options) {
  if (!(options.p >= 0.0F && options.p < 1.0F)) {
    throw Error(fmt::format("dropout '{}': p = {} must be in [0, 1)", this->name(), options.p));
  }
  for (Index d : input) {
    if (d < 1) {
      throw Error(fmt::format("dropout '{}': input sample shape {} has an extent < 1", this->name(),
                              to_string(input)));
    }
  }
}

Shape Dropout::output_shape(const Shape& input) const {
  return input;
}

ForwardResult Dropout::forward(const Tensor& x, const ForwardOptions& options) {
  check_batch(x, m_input, "input");
  if (options.sample_offset < 0) {
    throw Error(fmt::format("dropout '{}': sample_offset = {} must be >= 0", name(),
                            options.sample_offset));
  }
  Context ctx;
  ctx.input_shape = x.shape();
  if (!options.training || m_options.p == 0.0F) {
    return {x.clone(name() + ".output"), std::move(ctx)};
  }
  Tensor y(name() + ".output", x.shape());
  Tensor mask(name() + ".mask", x.shape());
  const Index sample_numel = numel(m_input);
  const auto first =
      static_cast<std::uint64_t>(options.sample_offset) * static_cast<std::uint64_t>(sample_numel);
  kernels::dropout_forward(x, y, mask, m_options.p, options.seed,
                           dropout_stream(name(), options.step), first);
  ctx.saved.push_back(std::move(mask));
  return {std::move(y), std::move(ctx)};
}

Tensor Dropout::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_input, "output grad");
  if (ctx.saved.size() > 1 || dy.shape() != ctx.input_shape) {
    throw Error(
        fmt::format("dropout '{}': output grad has shape {}, but the forward context is "
                    "for input {} ({} saved tensors, expected at most 1)",
                    name(), to_string(dy.shape()), to_string(ctx.input_shape), ctx.saved.size()));
  }
  if (ctx.saved.empty()) {
    return dy.clone(name() + ".input_grad");
  }
  Tensor dx(name() + ".input_grad", dy.shape());
  kernels::multiply(dy, ctx.saved[0], dx);
  return dx;
}

}  // namespace tessera::nn
