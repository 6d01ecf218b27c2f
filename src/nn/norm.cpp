#include "tessera/nn/norm.hpp"

#include "split_advice.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/math.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tessera::nn {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;
using DoubleView = Kokkos::View<double*, MemSpace>;

bool all_positive(const Shape& shape) {
  return std::all_of(shape.begin(), shape.end(), [](Index e) { return e >= 1; });
}

void check_eps(const Layer& layer, float eps) {
  if (!(eps > 0.0F)) {
    TESSERA_THROW("{} '{}': option eps = {} must be > 0", layer.kind(), layer.name(), eps);
  }
}

// --- batch normalisation kernels; x is viewed as (N, C, S), S the spatial volume ---------------

struct ChannelGeometry {
  Index n = 0;  // batch
  Index c = 0;  // channels
  Index s = 0;  // spatial volume
};

// Per channel, in double: Σ x when `mean` is null, else Σ (x - mean)². out has C + 1 entries; the
// last receives the number of values per channel (n · s), so that a reduction over ranks whose
// blocks differ in size sums the counts too.
void channel_sums(const FloatView& x, ChannelGeometry g, const DoubleView& mean, bool centred,
                  const DoubleView& out) {
  Kokkos::parallel_for(
      "BatchNorm::channel_sums", Policy(0, g.c + 1), KOKKOS_LAMBDA(const Index c) {
        if (c == g.c) {
          out(c) = static_cast<double>(g.n * g.s);
          return;
        }
        const double mu = centred ? mean(c) : 0.0;
        double sum = 0.0;
        for (Index n = 0; n < g.n; ++n) {
          for (Index s = 0; s < g.s; ++s) {
            const double d = static_cast<double>(x((n * g.c + c) * g.s + s)) - mu;
            sum += centred ? d * d : d;
          }
        }
        out(c) = sum;
      });
}

// Sums `values` over the ranks of `comm` (none: this rank alone), through host memory.
void sum_over(comm::Communicator* comm, const DoubleView& values) {
  if (comm == nullptr) {
    return;
  }
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), values);
  comm->allreduce(comm::Buffer(host.data(), static_cast<Index>(host.size())))->wait();
  Kokkos::deep_copy(values, host);
}

// The running estimates moved towards a batch's mean and unbiased variance: the one formula of
// forward() and commit_statistics().
KOKKOS_INLINE_FUNCTION float moved(float estimate, double momentum, double batch) {
  return static_cast<float>((1.0 - momentum) * static_cast<double>(estimate) + momentum * batch);
}

// Batch mean and 1 / sqrt(biased var + eps) per channel (two passes, in double, over the ranks of
// `comm` when the batch's values are spread over them), and the running estimates moved towards
// the batch with the unbiased variance — or, where `kept` is given (2 C + 1 values), the values
// per channel, the mean and the unbiased variance written there instead, for a later update.
void batch_statistics(const FloatView& x, ChannelGeometry g, float momentum, float eps,
                      comm::Communicator* comm, const FloatView& mean, const FloatView& inv_std,
                      const FloatView& run_mean, const FloatView& run_var,
                      const DoubleView& kept = {}) {
  const DoubleView sums("BatchNorm::sums", static_cast<size_t>(g.c + 1));
  const DoubleView mu("BatchNorm::mu", static_cast<size_t>(g.c));
  channel_sums(x, g, mu, false, sums);
  sum_over(comm, sums);
  // No values at all (a micro-batch empty on every rank it spans): nothing to estimate, the
  // running statistics stay.
  Kokkos::parallel_for(
      "BatchNorm::mean", Policy(0, g.c),
      KOKKOS_LAMBDA(const Index c) { mu(c) = sums(g.c) > 0.0 ? sums(c) / sums(g.c) : 0.0; });
  channel_sums(x, g, mu, true, sums);
  sum_over(comm, sums);
  const auto mom = static_cast<double>(momentum);
  const auto e = static_cast<double>(eps);
  const bool keep = kept.extent(0) > 0;
  Kokkos::parallel_for(
      "BatchNorm::batch_statistics", Policy(0, g.c), KOKKOS_LAMBDA(const Index c) {
        const double m = sums(g.c);
        if (keep && c == 0) {
          kept(0) = m;
        }
        if (!(m > 0.0)) {
          return;
        }
        const double var = sums(c) / m;
        mean(c) = static_cast<float>(mu(c));
        inv_std(c) = static_cast<float>(1.0 / math::sqrt(var + e));
        if (keep) {
          kept(1 + c) = mu(c);
          kept(1 + g.c + c) = var * m / (m - 1.0);
        } else {
          run_mean(c) = moved(run_mean(c), mom, mu(c));
          run_var(c) = moved(run_var(c), mom, var * m / (m - 1.0));
        }
      });
}

// Mean and 1 / sqrt(var + eps) per channel from the running estimates (eval mode).
void running_statistics(const FloatView& run_mean, const FloatView& run_var, Index channels,
                        float eps, const FloatView& mean, const FloatView& inv_std) {
  const auto e = static_cast<double>(eps);
  Kokkos::parallel_for(
      "BatchNorm::running_statistics", Policy(0, channels), KOKKOS_LAMBDA(const Index c) {
        mean(c) = run_mean(c);
        inv_std(c) = static_cast<float>(1.0 / math::sqrt(static_cast<double>(run_var(c)) + e));
      });
}

// x_hat = (x - mean) · inv_std, y = weight · x_hat + bias.
void batch_normalize(const FloatView& x, ChannelGeometry g, const FloatView& mean,
                     const FloatView& inv_std, const FloatView& weight, const FloatView& bias,
                     const FloatView& x_hat, const FloatView& y) {
  Kokkos::parallel_for(
      "BatchNorm::normalize", Policy(0, g.n * g.c * g.s), KOKKOS_LAMBDA(const Index i) {
        const Index c = (i / g.s) % g.c;
        const float xh = (x(i) - mean(c)) * inv_std(c);
        x_hat(i) = xh;
        y(i) = weight(c) * xh + bias(c);
      });
}

// dweight += Σ dy · x_hat, dbias += Σ dy per channel; then
// dx = weight · inv_std · (dy - f · mean(dy) - f · x_hat · mean(dy · x_hat)), f = 1 when the
// statistics came from the batch (their derivative enters), 0 in eval mode.
void batch_norm_backward(const FloatView& dy, const FloatView& x_hat, const FloatView& inv_std,
                         ChannelGeometry g, bool batch_stats, comm::Communicator* comm,
                         const FloatView& weight, const FloatView& dweight, const FloatView& dbias,
                         const FloatView& dx) {
  // sums = {Σ dy (C), Σ dy · x_hat (C), values per channel}: this rank's, then over `comm`.
  const DoubleView sums("BatchNorm::grad_sums", static_cast<size_t>(2 * g.c + 1));
  Kokkos::parallel_for(
      "BatchNorm::reduce_grads", Policy(0, g.c + 1), KOKKOS_LAMBDA(const Index c) {
        if (c == g.c) {
          sums(2 * g.c) = static_cast<double>(g.n * g.s);
          return;
        }
        double sum_dy = 0.0;
        double sum_dy_xhat = 0.0;
        for (Index n = 0; n < g.n; ++n) {
          for (Index s = 0; s < g.s; ++s) {
            const Index i = (n * g.c + c) * g.s + s;
            sum_dy += static_cast<double>(dy(i));
            sum_dy_xhat += static_cast<double>(dy(i)) * static_cast<double>(x_hat(i));
          }
        }
        // This rank's share: the reducer sums the parameter gradients over the ranks.
        dweight(c) += static_cast<float>(sum_dy_xhat);
        dbias(c) += static_cast<float>(sum_dy);
        sums(c) = sum_dy;
        sums(g.c + c) = sum_dy_xhat;
      });
  if (batch_stats) {
    sum_over(comm, sums);
  }
  Kokkos::parallel_for(
      "BatchNorm::input_grad", Policy(0, g.n * g.c * g.s), KOKKOS_LAMBDA(const Index i) {
        const Index c = (i / g.s) % g.c;
        const double f = batch_stats ? 1.0 / sums(2 * g.c) : 0.0;
        const double inner = static_cast<double>(dy(i)) - f * sums(c) -
                             static_cast<double>(x_hat(i)) * (f * sums(g.c + c));
        dx(i) = static_cast<float>(static_cast<double>(weight(c) * inv_std(c)) * inner);
      });
}

// --- layer normalisation kernels; x is viewed as (R, C) rows -------------------------------------

void layer_normalize(const FloatView& x, Index rows, Index width, float eps,
                     const FloatView& weight, const FloatView& bias, const FloatView& x_hat,
                     const FloatView& inv_std, const FloatView& y) {
  const auto e = static_cast<double>(eps);
  const auto inv_width = 1.0 / static_cast<double>(width);
  Kokkos::parallel_for(
      "LayerNorm::normalize", Policy(0, rows), KOKKOS_LAMBDA(const Index r) {
        const Index base = r * width;
        double sum = 0.0;
        for (Index j = 0; j < width; ++j) {
          sum += static_cast<double>(x(base + j));
        }
        const double mu = sum * inv_width;
        double sq = 0.0;
        for (Index j = 0; j < width; ++j) {
          const double d = static_cast<double>(x(base + j)) - mu;
          sq += d * d;
        }
        const double inv = 1.0 / math::sqrt(sq * inv_width + e);
        inv_std(r) = static_cast<float>(inv);
        for (Index j = 0; j < width; ++j) {
          const auto xh = static_cast<float>((static_cast<double>(x(base + j)) - mu) * inv);
          x_hat(base + j) = xh;
          y(base + j) = weight(j) * xh + bias(j);
        }
      });
}

// dweight += Σ_rows dy · x_hat, dbias += Σ_rows dy; per row, with g = dy · weight,
// dx = inv_std · (g - mean(g) - x_hat · mean(g · x_hat)).
void layer_norm_backward(const FloatView& dy, const FloatView& x_hat, const FloatView& inv_std,
                         Index rows, Index width, const FloatView& weight, const FloatView& dweight,
                         const FloatView& dbias, const FloatView& dx) {
  const auto inv_width = 1.0 / static_cast<double>(width);
  Kokkos::parallel_for(
      "LayerNorm::input_grad", Policy(0, rows), KOKKOS_LAMBDA(const Index r) {
        const Index base = r * width;
        double sum_g = 0.0;
        double sum_g_xhat = 0.0;
        for (Index j = 0; j < width; ++j) {
          const double gj = static_cast<double>(dy(base + j)) * static_cast<double>(weight(j));
          sum_g += gj;
          sum_g_xhat += gj * static_cast<double>(x_hat(base + j));
        }
        const double mean_g = sum_g * inv_width;
        const double mean_g_xhat = sum_g_xhat * inv_width;
        const auto inv = static_cast<double>(inv_std(r));
        for (Index j = 0; j < width; ++j) {
          const double gj = static_cast<double>(dy(base + j)) * static_cast<double>(weight(j));
          dx(base + j) = static_cast<float>(
              inv * (gj - mean_g - static_cast<double>(x_hat(base + j)) * mean_g_xhat));
        }
      });
  // Each work item owns a block of columns and walks the rows in order: contiguous loads that
  // vectorise, and sums that do not depend on the threads.
  constexpr Index kBlock = 32;
  Kokkos::parallel_for(
      "LayerNorm::param_grads", Policy(0, (width + kBlock - 1) / kBlock),
      KOKKOS_LAMBDA(const Index blk) {
        const Index j0 = blk * kBlock;
        const Index len = width - j0 < kBlock ? width - j0 : kBlock;
        double sum_dy[kBlock] = {};
        double sum_dy_xhat[kBlock] = {};
        for (Index r = 0; r < rows; ++r) {
          const Index base = r * width + j0;
          for (Index j = 0; j < len; ++j) {
            const auto d = static_cast<double>(dy(base + j));
            sum_dy[j] += d;
            sum_dy_xhat[j] += d * static_cast<double>(x_hat(base + j));
          }
        }
        for (Index j = 0; j < len; ++j) {
          dweight(j0 + j) += static_cast<float>(sum_dy_xhat[j]);
          dbias(j0 + j) += static_cast<float>(sum_dy[j]);
        }
      });
}

}  // namespace

// --- BatchNormNd -------------------------------------------------------------------------------

BatchNormNd::BatchNormNd(std::string name, const Shape& input, const BatchNormOptions& options,
                         const char* kind, int spatial_dims, BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_kind(kind),
      m_spatial_dims(spatial_dims),
      m_options(options),
      m_input(input) {
  if (!(options.momentum >= 0.0F && options.momentum <= 1.0F)) {
    TESSERA_THROW("{} '{}': option momentum = {} must be in [0, 1]", kind, this->name(),
                  options.momentum);
  }
  check_eps(*this, options.eps);
  (void)output_shape(input);
  const Shape channels{input[0]};
  add_parameter("weight", channels, InitSpec::constant(1.0F), /*decay=*/false).value.fill(1.0F);
  add_parameter("bias", channels, InitSpec::constant(0.0F), /*decay=*/false);
  add_buffer("running_mean", channels, InitSpec::constant(0.0F));
  add_buffer("running_var", channels, InitSpec::constant(1.0F)).value.fill(1.0F);
  m_local_input = m_input;
  place_statistics(AxisSet{});
}

void BatchNormNd::place_statistics(AxisSet split) {
  // The statistics span the spatial axes the samples are split over, and the data axis with sync.
  const AxisSet over = split | (m_options.sync ? AxisSet{GridAxis::data} : AxisSet{});
  m_stats = context().has_grid() ? context().axes(over) : nullptr;
  for (Parameter& p : parameters()) {
    p.partial = AxisSet{GridAxis::data} | split;
  }
}

Layout BatchNormNd::place_input(const Layout& input) {
  (void)output_shape(input.global_shape());
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
  place_statistics(split);
  return input;
}
Shape BatchNormNd::output_shape(const Shape& input) const {
  if (input.size() != static_cast<size_t>(m_spatial_dims) + 1 || !all_positive(input)) {
    TESSERA_THROW("{} '{}': input sample shape {} must be {} with every extent >= 1", kind(),
                  name(), to_string(input), m_spatial_dims == 2 ? "(C, H, W)" : "(C, D, H, W)");
  }
  return input;
}

// Context: saved = {x_hat (N, C, spatial...), inv_std (C,), batch_stats (1,)}: the normalised
// input, 1 / sqrt(var + eps) of the statistics used, and 1 when those were the batch's (training)
// or 0 when they were the running estimates (eval).
ForwardResult BatchNormNd::forward(const Tensor& x, const ForwardOptions& options) {
  check_batch(x, m_local_input, "input");
  const Index channels = m_input[0];
  const ChannelGeometry g{x.dim(0), channels, numel(m_local_input) / channels};
  if (options.training && m_stats == nullptr && g.n * g.s < 2) {
    TESSERA_THROW(
        "{} '{}': training needs more than one value per channel to take batch statistics, got "
        "input of shape {}",
        kind(), name(), to_string(x.shape()));
  }
  Tensor y(name() + ".output", x.shape());     // (N, C, spatial...)
  Tensor x_hat(name() + ".x_hat", x.shape());  // (N, C, spatial...)
  Tensor inv_std(name() + ".inv_std", {channels});
  const FloatView mean("BatchNorm::mean", static_cast<size_t>(channels));
  if (options.training) {
    const float momentum =
        options.stats_momentum >= 0.0F ? options.stats_momentum : m_options.momentum;
    const DoubleView kept =
        options.defer_stats ? DoubleView("BatchNorm::kept", static_cast<size_t>(2 * channels + 1))
                            : DoubleView();
    batch_statistics(x.view(), g, momentum, m_options.eps, m_stats, mean, inv_std.view(),
                     running_mean().value.view(), running_var().value.view(), kept);
    if (options.defer_stats) {
      const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), kept);
      m_kept.push_back(static_cast<double>(momentum));
      m_kept.insert(m_kept.end(), host.data(), host.data() + host.size());
    }
  } else {
    running_statistics(running_mean().value.view(), running_var().value.view(), channels,
                       m_options.eps, mean, inv_std.view());
  }
  batch_normalize(x.view(), g, mean, inv_std.view(), weight().value.view(), bias().value.view(),
                  x_hat.view(), y.view());
  Context ctx;
  ctx.input_shape = x.shape();
  ctx.saved = {x_hat, inv_std,
               Tensor::from_host(name() + ".batch_stats", {1}, {options.training ? 1.0F : 0.0F})};
  return {y, std::move(ctx)};
}

Tensor BatchNormNd::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_input, "output grad");
  check_context(dy, ctx, m_local_input, 3);
  const Index channels = m_input[0];
  const ChannelGeometry g{dy.dim(0), channels, numel(m_local_input) / channels};
  const bool batch_stats = ctx.saved[2].to_host()[0] != 0.0F;
  Tensor dx(name() + ".input_grad", ctx.input_shape);  // (N, C, spatial...)
  batch_norm_backward(dy.view(), ctx.saved[0].view(), ctx.saved[1].view(), g, batch_stats, m_stats,
                      weight().value.view(), parameters()[0].grad.view(),
                      parameters()[1].grad.view(), dx.view());
  return dx;
}

void BatchNormNd::forward_empty(const ForwardOptions& options) {
  // Only the data axis (sync) holds ranks with other samples; a spatial split's tiles are empty
  // together and skip the layer together.
  if (!options.training || !m_options.sync || m_stats == nullptr) {
    return;
  }
  const Index channels = m_input[0];
  const ChannelGeometry g{0, channels, numel(m_local_input) / channels};
  const float momentum =
      options.stats_momentum >= 0.0F ? options.stats_momentum : m_options.momentum;
  const FloatView mean("BatchNorm::mean", static_cast<size_t>(channels));
  const FloatView inv_std("BatchNorm::inv_std", static_cast<size_t>(channels));
  // The same two reductions as forward(), this rank's sums zero; the running estimates move
  // with the other ranks' statistics, as every rank's do under SyncBatchNorm.
  batch_statistics(FloatView(), g, momentum, m_options.eps, m_stats, mean, inv_std,
                   running_mean().value.view(), running_var().value.view());
}

void BatchNormNd::commit_statistics(comm::Communicator& across) {
  // Every rank's kept batches in rank order (in deterministic mode: the global order of the sample
  // groups), applied in turn as forward() would have, on every rank alike.
  const std::vector<std::vector<double>> all = comm::allgather_varying(across, m_kept);
  m_kept.clear();
  const auto c = static_cast<size_t>(m_input[0]);
  auto run_mean =
      Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), running_mean().value.view());
  auto run_var =
      Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), running_var().value.view());
  bool moved_any = false;
  for (const std::vector<double>& rank : all) {
    TESSERA_CHECK(rank.size() % (2 * c + 2) == 0, "{} '{}': kept statistics of {} values", kind(),
                  name(), rank.size());
    for (size_t at = 0; at < rank.size(); at += 2 * c + 2) {
      const double momentum = rank[at];
      if (!(rank[at + 1] > 0.0)) {
        continue;  // an empty batch: nothing to estimate
      }
      for (size_t k = 0; k < c; ++k) {
        run_mean(k) = moved(run_mean(k), momentum, rank[at + 2 + k]);
        run_var(k) = moved(run_var(k), momentum, rank[at + 2 + c + k]);
      }
      moved_any = true;
    }
  }
  if (moved_any) {
    Kokkos::deep_copy(running_mean().value.view(), run_mean);
    Kokkos::deep_copy(running_var().value.view(), run_var);
  }
}

void BatchNormNd::backward_empty() {
  if (!m_options.sync || m_stats == nullptr) {
    return;
  }
  const Index channels = m_input[0];
  const ChannelGeometry g{0, channels, numel(m_local_input) / channels};
  // The reduction of backward(), this rank adding nothing to the sums or to the gradients.
  batch_norm_backward(FloatView(), FloatView(), FloatView(), g, true, m_stats,
                      weight().value.view(), parameters()[0].grad.view(),
                      parameters()[1].grad.view(), FloatView());
}

BatchNorm2d::BatchNorm2d(std::string name, const Shape& input, const BatchNormOptions& options,
                         BuildContext context)
    : BatchNormNd(std::move(name), input, options, "batchnorm2d", 2, std::move(context)) {}
BatchNorm3d::BatchNorm3d(std::string name, const Shape& input, const BatchNormOptions& options,
                         BuildContext context)
    : BatchNormNd(std::move(name), input, options, "batchnorm3d", 3, std::move(context)) {}

// --- LayerNorm ---------------------------------------------------------------------------------

LayerNorm::LayerNorm(std::string name, const Shape& input, const LayerNormOptions& options,
                     BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_options(options),
      m_input(input),
      m_local_input(input) {
  check_eps(*this, options.eps);
  (void)output_shape(input);
  const Shape width{input.back()};
  add_parameter("weight", width, InitSpec::constant(1.0F), /*decay=*/false).value.fill(1.0F);
  add_parameter("bias", width, InitSpec::constant(0.0F), /*decay=*/false);
}

Shape LayerNorm::output_shape(const Shape& input) const {
  if (input.empty() || !all_positive(input)) {
    TESSERA_THROW("{} '{}': input sample shape {} must be (..., C) with every extent >= 1", kind(),
                  name(), to_string(input));
  }
  return input;
}

Layout LayerNorm::place_input(const Layout& input) {
  (void)output_shape(input.global_shape());
  const int features = input.rank() - 1;
  if (!input.partial_axes().empty() || input.axis_of(features).has_value()) {
    const AxisSet spatial{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
    const std::optional<GridAxis> axis = input.axis_of(features);
    throw Error(fmt::format(
        "{} '{}' normalises rows of {} whole features, but its input is {}; {}", kind(), name(),
        m_input.back(), input.to_string(),
        axis && spatial.contains(*axis)
            ? "split the samples along another dimension (parallel.spatial), or end the tiles "
              "before it (a global_avgpool joins them)"
            : "end the split before it (" + detail::join_advice(input) + ")"));
  }
  for (Parameter& p : parameters()) {  // each rank saw its rows only: summed over their axes too
    p.partial = AxisSet{GridAxis::data} | input.split_axes();
  }
  m_local_input = input.local_shape(context().place());
  return input;
}

// Context: saved = {x_hat (N, ..., C), inv_std (rows,)}: the normalised input and
// 1 / sqrt(var + eps) of every row, rows = N · (sample numel / C).
ForwardResult LayerNorm::forward(const Tensor& x, const ForwardOptions& /*options*/) {
  check_batch(x, m_local_input, "input");
  const Index width = m_input.back();
  const Index rows = x.numel() / width;
  // Every element of the three is written by layer_normalize.
  const Tensor y = m_output.get(name() + ".output", x.shape());    // (N, ..., C)
  const Tensor x_hat = m_x_hat.get(name() + ".x_hat", x.shape());  // (N, ..., C)
  const Tensor inv_std = m_inv_std.get(name() + ".inv_std", {rows});
  layer_normalize(x.view(), rows, width, m_options.eps, weight().value.view(), bias().value.view(),
                  x_hat.view(), inv_std.view(), y.view());
  Context ctx;
  ctx.input_shape = x.shape();
  ctx.saved = {x_hat, inv_std};
  return {y, std::move(ctx)};
}

Tensor LayerNorm::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_input, "output grad");
  check_context(dy, ctx, m_local_input, 2);
  const Index width = m_input.back();
  const Index rows = dy.numel() / width;
  const Tensor dx = m_input_grad.get(name() + ".input_grad", ctx.input_shape);  // all written
  layer_norm_backward(dy.view(), ctx.saved[0].view(), ctx.saved[1].view(), rows, width,
                      weight().value.view(), parameters()[0].grad.view(),
                      parameters()[1].grad.view(), dx.view());
  return dx;
}

}  // namespace tessera::nn
