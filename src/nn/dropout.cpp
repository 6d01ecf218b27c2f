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

Dropout::Dropout(std::string name, const Shape& input, const DropoutOptions& options,
                 BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_input(input),
      m_local_input(input),
      m_options(options) {
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

Layout Dropout::place_input(const Layout& input) {
  require_not_partial(input);  // a mask of a sum is not the sum of masks
  const GridPlace& place = context().place();
  m_offsets = IndexView();
  bool spatial = false;
  for (int d = 1; d < input.rank(); ++d) {
    const std::optional<GridAxis> axis = input.axis_of(d);
    if (!axis) {
      continue;
    }
    if (*axis != GridAxis::spatial0 && *axis != GridAxis::spatial1 && *axis != GridAxis::spatial2) {
      throw Error(
          fmt::format("{} '{}' takes samples split on their first dimension or over the spatial "
                      "axes only, but its input is {}",
                      kind(), name(), input.to_string()));
    }
    spatial = true;
  }
  if (spatial) {
    // A spatial tile: each element draws the counter of its place in the whole sample.
    if (input.axis_of(0).has_value()) {
      throw Error(
          fmt::format("{} '{}' cannot take a sample split both on its first dimension and "
                      "spatially: {}",
                      kind(), name(), input.to_string()));
    }
    const std::vector<Index> offsets = input.global_indices(place);
    m_offsets = IndexView("dropout.offsets", offsets.size());
    auto host = Kokkos::create_mirror_view(m_offsets);
    for (size_t i = 0; i < offsets.size(); ++i) {
      host(i) = offsets[i];
    }
    Kokkos::deep_copy(m_offsets, host);
    m_local_input = input.local_shape(place);
    m_local_offset = 0;
    return input;
  }
  if (input.rank() >= 1 && input.placement(0).stride != 1) {
    throw Error(fmt::format("{} '{}' cannot take the strided split of its input {}", kind(), name(),
                            input.to_string()));
  }
  m_local_input = input.local_shape(place);
  m_local_offset =
      input.rank() >= 1 ? input.local_offset(place)[0] * (numel(m_input) / m_input[0]) : 0;
  return input;
}

ForwardResult Dropout::forward(const Tensor& x, const ForwardOptions& options) {
  check_batch(x, m_local_input, "input");
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
  // Each element draws the counter of its place in the whole batch: this rank's part of each
  // sample is a block of the sample's counters.
  const auto sample_numel = static_cast<std::uint64_t>(numel(m_input));
  const auto first = static_cast<std::uint64_t>(options.sample_offset) * sample_numel +
                     static_cast<std::uint64_t>(m_local_offset);
  if (m_offsets.extent(0) == 0) {
    kernels::dropout_forward(x, y, mask, m_options.p, options.seed,
                             dropout_stream(name(), options.step), first, numel(m_local_input),
                             sample_numel);
  } else {
    kernels::dropout_forward_indexed(x, y, mask, m_options.p, options.seed,
                                     dropout_stream(name(), options.step), first, m_offsets,
                                     sample_numel);
  }
  ctx.saved.push_back(std::move(mask));
  return {std::move(y), std::move(ctx)};
}

Tensor Dropout::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_input, "output grad");
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
