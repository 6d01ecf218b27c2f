#include "tessera/nn/pooling.hpp"

#include "tessera/core/check.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <limits>

namespace tessera::nn {
namespace {

// "[2, 2]": an option as the deck writes it.
std::string list_string(const std::vector<Index>& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

// The sample form a pooling layer of `spatial_dims` dimensions expects.
const char* sample_form(int spatial_dims) {
  return spatial_dims == 2 ? "(C, H, W)" : "(C, D, H, W)";
}

bool all_positive(const Shape& shape) {
  return std::all_of(shape.begin(), shape.end(), [](Index e) { return e >= 1; });
}

// Option `option` expanded to one value per spatial dimension; `fallback` when it is empty and a
// fallback is allowed (non-empty).
std::vector<Index> expand_option(const Layer& layer, const char* option,
                                 const std::vector<Index>& values, int spatial_dims,
                                 const std::vector<Index>& fallback) {
  if (values.empty() && !fallback.empty()) {
    return fallback;
  }
  const auto dims = static_cast<size_t>(spatial_dims);
  if (values.size() == 1) {
    return std::vector<Index>(dims, values[0]);
  }
  if (values.size() != dims) {
    TESSERA_THROW("{} '{}': option {} = {} must hold 1 or {} values (one per spatial dim)",
                  layer.kind(), layer.name(), option, list_string(values), spatial_dims);
  }
  return values;
}

// (d, h, w) from the last 2 or 3 values of `v`; a 2-D pooling gets `depth` in depth.
kernels::Dims3 to_dims(const std::vector<Index>& v, int spatial_dims, Index depth) {
  Index e[3] = {depth, depth, depth};
  for (int i = 0; i < spatial_dims; ++i) {
    e[3 - spatial_dims + i] = v[v.size() - static_cast<size_t>(spatial_dims - i)];
  }
  return {e[0], e[1], e[2]};
}

}  // namespace

// --- PoolNd ------------------------------------------------------------------------------------

PoolNd::PoolNd(std::string name, const Shape& input, const PoolOptions& options, const char* kind,
               int spatial_dims, Mode mode, BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_kind(kind),
      m_spatial_dims(spatial_dims),
      m_mode(mode),
      m_input(input) {
  m_kernel = expand_option(*this, "kernel", options.kernel, spatial_dims, {});
  m_stride = expand_option(*this, "stride", options.stride, spatial_dims, m_kernel);
  m_pad = expand_option(*this, "pad", options.pad, spatial_dims,
                        std::vector<Index>(static_cast<size_t>(spatial_dims), 0));
  // Messages quote the options as written.
  if (!all_positive(m_kernel)) {
    TESSERA_THROW("{} '{}': option kernel = {} must be >= 1 in every spatial dim", kind,
                  this->name(), list_string(options.kernel));
  }
  if (!all_positive(m_stride)) {
    TESSERA_THROW("{} '{}': option stride = {} must be >= 1 in every spatial dim", kind,
                  this->name(), list_string(options.stride));
  }
  for (size_t i = 0; i < m_pad.size(); ++i) {
    if (m_pad[i] < 0 || m_pad[i] >= m_kernel[i]) {
      TESSERA_THROW("{} '{}': option pad = {} must be >= 0 and < kernel = {} in every spatial dim",
                    kind, this->name(), list_string(options.pad), list_string(options.kernel));
    }
  }
  m_output = output_shape(input);
  m_local_input = m_input;
  m_local_output = m_output;
  m_placed = Layout::replicated(m_input);
  m_output_layout = Layout::replicated(m_output);
}

Layout PoolNd::place_input(const Layout& input) {
  (void)output_shape(input.global_shape());  // throws unless the sample form fits
  if (input.global_shape() != m_input) {
    TESSERA_THROW("{} '{}': input sample shape {} does not fit, expected {}", kind(), name(),
                  to_string(input.global_shape()), to_string(m_input));
  }
  if (input == m_placed) {
    return m_output_layout;
  }
  std::vector<WindowAxis> axes;
  for (size_t d = 0; d < m_kernel.size(); ++d) {
    axes.push_back({m_input[d + 1], m_output[d + 1], m_kernel[d], m_stride[d], m_pad[d], 1});
  }
  WindowPlacement placed =
      place_window(fmt::format("{} '{}'", kind(), name()), input, axes, m_output, context());
  m_halo = std::move(placed.halo);
  m_placed = input;
  m_output_layout = placed.output;
  m_local_input = m_halo ? m_halo->local_input() : m_input;
  m_local_output = m_halo ? batch_shape(m_input[0], m_halo->local_output()) : m_output;
  return m_output_layout;
}

Shape PoolNd::output_shape(const Shape& input) const {
  if (input.size() != static_cast<size_t>(m_spatial_dims) + 1 || !all_positive(input)) {
    TESSERA_THROW("{} '{}': input sample shape {} must be {} with every extent >= 1", kind(),
                  name(), to_string(input), sample_form(m_spatial_dims));
  }
  Shape out{input[0]};
  for (size_t i = 0; i < m_kernel.size(); ++i) {
    out.push_back(kernels::pool_output_extent(input[i + 1], m_kernel[i], m_stride[i], m_pad[i]));
  }
  if (!all_positive(out)) {
    TESSERA_THROW(
        "{} '{}': input sample shape {} with kernel = {}, stride = {}, pad = {} gives output {}; "
        "every output extent must be >= 1",
        kind(), name(), to_string(input), list_string(m_kernel), list_string(m_stride),
        list_string(m_pad), to_string(out));
  }
  return out;
}

kernels::PoolGeometry PoolNd::geometry(Index n) const {
  kernels::PoolGeometry g;
  g.planes = n * m_input[0];
  // On a spatial split the window holds the padding (as -inf or 0): pooled unpadded.
  g.in = to_dims(m_halo ? m_halo->window() : m_input, m_spatial_dims, 1);
  g.out = to_dims(m_local_output, m_spatial_dims, 1);
  g.kernel = to_dims(m_kernel, m_spatial_dims, 1);
  g.stride = to_dims(m_stride, m_spatial_dims, 1);
  g.pad = m_halo ? kernels::Dims3{0, 0, 0} : to_dims(m_pad, m_spatial_dims, 0);
  return g;
}

// Context: max pooling saves {argmax} (N, C, spatial_out...), the position of each window's
// maximum within the window (kernels::max_pool_forward); average pooling saves nothing.
ForwardResult PoolNd::forward(const Tensor& xl, const ForwardOptions& /*options*/) {
  check_batch(xl, m_local_input, "input");
  const Index n = xl.dim(0);
  // Max pooling ignores padded positions (-inf), average pooling counts them as zeros.
  const Tensor x =
      !m_halo ? xl
              : m_halo->gather(
                    xl, m_mode == Mode::max ? -std::numeric_limits<float>::infinity() : 0.0F);
  const kernels::PoolGeometry g = geometry(n);
  // The kernels write every element of y, argmax and dx: uninitialised storage.
  const Tensor y = Tensor::uninitialized(name() + ".output", batch_shape(n, m_local_output));
  Context ctx;
  ctx.input_shape = x.shape();  // the window on a spatial split
  if (m_mode == Mode::max) {
    const Tensor argmax = Tensor::uninitialized(name() + ".argmax", y.shape());
    kernels::max_pool_forward(x, y, argmax, g);
    ctx.saved.push_back(argmax);
  } else {
    kernels::avg_pool_forward(x, y, g);
  }
  return {y, std::move(ctx)};
}

Tensor PoolNd::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_output, "output grad");
  check_context(dy, ctx, m_halo ? m_halo->window() : m_local_input, m_mode == Mode::max ? 1 : 0);
  const kernels::PoolGeometry g = geometry(dy.dim(0));
  const Tensor dx = Tensor::uninitialized(name() + ".input_grad", ctx.input_shape);
  if (m_mode == Mode::max) {
    kernels::max_pool_backward(dy, ctx.saved[0], dx, g);
  } else {
    kernels::avg_pool_backward(dy, dx, g);
  }
  return m_halo ? m_halo->scatter(dx) : dx;
}

MaxPool2d::MaxPool2d(std::string name, const Shape& input, const PoolOptions& options,
                     BuildContext context)
    : PoolNd(std::move(name), input, options, "maxpool2d", 2, Mode::max, std::move(context)) {}
MaxPool3d::MaxPool3d(std::string name, const Shape& input, const PoolOptions& options,
                     BuildContext context)
    : PoolNd(std::move(name), input, options, "maxpool3d", 3, Mode::max, std::move(context)) {}
AvgPool2d::AvgPool2d(std::string name, const Shape& input, const PoolOptions& options,
                     BuildContext context)
    : PoolNd(std::move(name), input, options, "avgpool2d", 2, Mode::average, std::move(context)) {}
AvgPool3d::AvgPool3d(std::string name, const Shape& input, const PoolOptions& options,
                     BuildContext context)
    : PoolNd(std::move(name), input, options, "avgpool3d", 3, Mode::average, std::move(context)) {}

// --- GlobalAvgPool -----------------------------------------------------------------------------

GlobalAvgPool::GlobalAvgPool(std::string name, const Shape& input,
                             const GlobalAvgPoolOptions& /*options*/, BuildContext context)
    : Layer(std::move(name), std::move(context)), m_input(input), m_local_input(input) {
  (void)output_shape(input);
}

Layout GlobalAvgPool::place_input(const Layout& input) {
  const Shape out = output_shape(input.global_shape());
  require_not_partial(input);
  AxisSet split;
  for (int d = 0; d < input.rank(); ++d) {
    const std::optional<GridAxis> axis = input.axis_of(d);
    if (!axis) {
      continue;
    }
    if (d == 0 || input.placement(d).stride != 1 ||
        (*axis != GridAxis::spatial0 && *axis != GridAxis::spatial1 &&
         *axis != GridAxis::spatial2)) {
      throw Error(
          fmt::format("{} '{}' takes samples split over the spatial axes only, but its "
                      "input is {}",
                      kind(), name(), input.to_string()));
    }
    split = split | AxisSet{*axis};
  }
  m_local_input = input.local_shape(context().place());
  m_sum = split.empty() || !context().has_grid() ? nullptr : context().axes(split);
  return Layout::replicated(out);
}

Shape GlobalAvgPool::output_shape(const Shape& input) const {
  if ((input.size() != 3 && input.size() != 4) || !all_positive(input)) {
    TESSERA_THROW(
        "{} '{}': input sample shape {} must be (C, H, W) or (C, D, H, W) with every extent >= 1",
        kind(), name(), to_string(input));
  }
  return {input[0]};
}

// Context: saves nothing; the input shape is enough.
ForwardResult GlobalAvgPool::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, m_local_input, "input");
  const Index n = x.dim(0);
  const Index channels = m_input[0];
  Tensor y(name() + ".output", {n, channels});  // (N, C)
  if (m_sum == nullptr) {
    kernels::global_avg_pool_forward(x, y, n * channels, numel(m_input) / channels);
  } else {
    // The blocks' sums (in double) added over the spatial axes, divided by the whole plane.
    const Index block = numel(m_local_input) / channels;
    const std::vector<float> xs = x.to_host();
    std::vector<double> sums(static_cast<size_t>(n * channels), 0.0);
    for (size_t p = 0; p < sums.size(); ++p) {
      for (Index j = 0; j < block; ++j) {
        sums[p] += static_cast<double>(xs[p * static_cast<size_t>(block) + static_cast<size_t>(j)]);
      }
    }
    m_sum->allreduce(comm::Buffer(sums))->wait();
    const auto whole = static_cast<double>(numel(m_input) / channels);
    std::vector<float> means(sums.size());
    for (size_t p = 0; p < sums.size(); ++p) {
      means[p] = static_cast<float>(sums[p] / whole);
    }
    y = Tensor::from_host(name() + ".output", {n, channels}, means);
  }
  Context ctx;
  ctx.input_shape = x.shape();
  return {y, std::move(ctx)};
}

Tensor GlobalAvgPool::backward(const Tensor& dy, Context&& ctx) {
  const Index channels = m_input[0];
  check_batch(dy, {channels}, "output grad");
  check_context(dy, ctx, m_local_input, 0);
  const Tensor dx = Tensor::uninitialized(name() + ".input_grad", ctx.input_shape);
  kernels::global_avg_pool_backward(dy, dx, dy.dim(0) * channels, numel(m_local_input) / channels,
                                    numel(m_input) / channels);
  return dx;
}

}  // namespace tessera::nn
