#include "tessera/nn/conv.hpp"

#include "tessera/core/check.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/kernels/gemm.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <string>

namespace tessera::nn {
namespace {
using kernels::Trans;

/// Bytes of column matrix per block: about half the per-core L2 cache (1 MiB on the EPYC build
/// machines, 1–2 MiB on current server cores), leaving room for the GEMM's packed panels.
constexpr Index kColumnBytes = 512 * 1024;

/// The values of a per-dimension option for dimensions (D, H, W): 1 value for all or one per
/// spatial dimension; a 2-D layer's depth takes `depth_value`.
std::array<Index, 3> expand(const std::vector<Index>& v, int ndims, Index depth_value) {
  std::array<Index, 3> out{depth_value, v[0], v[0]};
  if (ndims == 3) {
    out[0] = v[0];
  }
  if (v.size() > 1) {
    for (int d = 0; d < ndims; ++d) {
      out[static_cast<size_t>(3 - ndims + d)] = v[static_cast<size_t>(d)];
    }
  }
  return out;
}

/// The spatial part (last ndims entries) of a 3-D array, as a shape.
Shape spatial(const std::array<Index, 3>& a, int ndims) {
  return Shape(a.begin() + (3 - ndims), a.end());
}
}  // namespace

ConvNd::ConvNd(std::string name, const Shape& input, const ConvOptions& options, int ndims,
               const char* kind, BuildContext context)
    : Layer(std::move(name), std::move(context)),
      m_kind(kind),
      m_ndims(ndims),
      m_bias(options.bias),
      m_out(options.out),
      m_input(input) {
  const std::string& me = this->name();
  const bool input_ok = static_cast<int>(input.size()) == ndims + 1 &&
                        std::all_of(input.begin(), input.end(), [](Index e) { return e >= 1; });
  if (!input_ok) {
    TESSERA_THROW("{} '{}': input shape {} must be ({}) with every extent >= 1", kind, me,
                  to_string(input), ndims == 2 ? "C, H, W" : "C, D, H, W");
  }
  if (options.out < 1) {
    TESSERA_THROW("{} '{}': option out = {} must be >= 1", kind, me, options.out);
  }
  struct Spec {
    const char* name;
    const std::vector<Index>& values;
    Index minimum;
    Index fallback;
  };
  const Spec specs[] = {{"kernel", options.kernel, 1, -1},
                        {"stride", options.stride, 1, 1},
                        {"pad", options.pad, 0, 0}};
  std::array<std::array<Index, 3>, 3> expanded{};
  for (size_t s = 0; s < 3; ++s) {
    const Spec& spec = specs[s];
    std::vector<Index> v = spec.values;
    if (v.empty() && spec.fallback >= 0) {
      v = {spec.fallback};
    }
    if (v.size() != 1 && v.size() != static_cast<size_t>(ndims)) {
      TESSERA_THROW("{} '{}': option {} has {} values [{}], expected 1 or {}", kind, me, spec.name,
                    v.size(), fmt::join(v, ", "), ndims);
    }
    if (std::any_of(v.begin(), v.end(), [&](Index e) { return e < spec.minimum; })) {
      TESSERA_THROW("{} '{}': option {} = [{}] must be >= {} in every dimension", kind, me,
                    spec.name, fmt::join(v, ", "), spec.minimum);
    }
    expanded[s] = expand(v, ndims, s == 2 ? 0 : 1);
  }
  const std::array<Index, 3>& kernel = expanded[0];
  const std::array<Index, 3>& stride = expanded[1];
  const std::array<Index, 3>& pad = expanded[2];
  std::array<Index, 3> extent{1, 1, 1};
  for (int d = 0; d < ndims; ++d) {
    extent[static_cast<size_t>(3 - ndims + d)] = input[static_cast<size_t>(1 + d)];
  }
  m_geom = kernels::ConvGeometry::make(input[0], extent, kernel, stride, pad);
  const Shape out_extent = spatial(m_geom.output, ndims);
  if (std::any_of(out_extent.begin(), out_extent.end(), [](Index e) { return e < 1; })) {
    TESSERA_THROW(
        "{} '{}': input {} with kernel [{}], stride [{}], pad [{}] gives output extents {}; every "
        "extent must be >= 1",
        kind, me, to_string(input), fmt::join(spatial(kernel, ndims), ", "),
        fmt::join(spatial(stride, ndims), ", "), fmt::join(spatial(pad, ndims), ", "),
        to_string(out_extent));
  }
  m_output = batch_shape(m_out, out_extent);

  Shape weight_shape = batch_shape(m_out, batch_shape(input[0], spatial(kernel, ndims)));
  const Index fan_in = m_geom.col_rows();
  const float bound = 1.0F / std::sqrt(static_cast<float>(fan_in));
  add_parameter("weight", weight_shape, InitSpec::uniform(-bound, bound));  // (out, C, k...)
  if (m_bias) {
    add_parameter("bias", {m_out}, InitSpec::uniform(-bound, bound), /*decay=*/false);  // (out,)
  }
  m_local_input = m_input;
  m_local_output = m_output;
  m_placed = Layout::replicated(m_input);
  m_output_layout = Layout::replicated(m_output);
  m_requested = options.backend;
  configure(m_geom);
}

void ConvNd::configure(const kernels::ConvGeometry& run) {
  m_run = run;
  m_pieces.clear();  // plan_pieces() cuts them again where they apply
  // Blocks of whole samples while one sample's columns fit the budget, else bands of output rows.
  const Index row_bytes = m_run.col_rows() * m_run.output[2] * Index{sizeof(float)};
  const Index sample_bytes = row_bytes * m_run.output_rows();
  if (sample_bytes <= kColumnBytes) {
    m_chunk = kColumnBytes / sample_bytes;
    m_tile_rows = m_run.output_rows();
  } else {
    m_chunk = 1;
    m_tile_rows = std::max<Index>(1, kColumnBytes / row_bytes);
  }
  ConvBackend backend = m_requested;
  if (backend == ConvBackend::automatic) {
    backend = kernels::dnnl_available() ? ConvBackend::dnnl : ConvBackend::im2col;
  }
  m_backend = backend;
  m_dnnl.reset();
  m_col = Tensor();
  m_output_pool.clear();
  m_input_grad_pool.clear();
  if (backend == ConvBackend::dnnl) {
    m_dnnl = std::make_unique<kernels::DnnlConv>(fmt::format("{} '{}'", m_kind, name()), m_run,
                                                 m_out, m_ndims, m_bias);
  } else {
    m_col =
        Tensor(name() + ".columns", {m_run.col_rows(), m_chunk * m_tile_rows * m_run.output[2]});
  }
}

Layout ConvNd::place_input(const Layout& input) {
  if (input.global_shape() != m_input) {
    (void)output_shape(input.global_shape());  // throws, naming both shapes
  }
  if (input == m_placed && !m_output_layout.global_shape().empty()) {
    return m_output_layout;
  }
  std::vector<WindowAxis> axes;
  for (int d = 0; d < m_ndims; ++d) {
    const auto g = static_cast<size_t>(3 - m_ndims + d);
    axes.push_back(
        {m_geom.input[g], m_geom.output[g], m_geom.kernel[g], m_geom.stride[g], m_geom.pad[g], 1});
  }
  WindowPlacement placed =
      place_window(fmt::format("{} '{}'", m_kind, name()), input, axes, m_output, context());
  m_halo = std::move(placed.halo);
  m_placed = input;
  m_output_layout = placed.output;
  for (Parameter& p : parameters()) {
    p.partial = AxisSet{GridAxis::data} | placed.split;
  }
  if (!m_halo) {
    m_local_input = m_input;
    m_local_output = m_output;
    configure(m_geom);
    return m_output_layout;
  }
  m_local_input = m_halo->local_input();
  m_local_output = batch_shape(m_out, m_halo->local_output());
  std::array<Index, 3> window{1, 1, 1};
  std::array<Index, 3> local_out{1, 1, 1};
  for (int d = 0; d < m_ndims; ++d) {
    const auto g = static_cast<size_t>(3 - m_ndims + d);
    window[g] = m_halo->window()[static_cast<size_t>(d) + 1];
    local_out[g] = m_halo->local_output()[static_cast<size_t>(d)];
  }
  // The window holds the padding: the kernels run it unpadded.
  const kernels::ConvGeometry run =
      kernels::ConvGeometry::make(m_geom.channels, window, m_geom.kernel, m_geom.stride, {0, 0, 0});
  TESSERA_CHECK(run.output == local_out, "{} '{}': window geometry does not give the local output",
                m_kind, name());
  configure(run);
  plan_pieces();
  return m_output_layout;
}

void ConvNd::plan_pieces() {
  m_pieces.clear();
  // TESSERA_HALO_OVERLAP=0 turns the overlap off, for measuring what it hides (bench/spatial.sh).
  static const bool enabled = [] {
    const char* v = std::getenv("TESSERA_HALO_OVERLAP");
    return v == nullptr || std::string(v) != "0";
  }();
  if (!enabled || m_backend != ConvBackend::dnnl || !m_halo || !m_halo->overlaps()) {
    return;
  }
  const auto g = static_cast<size_t>(3 - m_ndims + m_halo->overlap_dim());
  const Index s = m_run.stride[g];
  const Index k = m_run.kernel[g];
  const Index out = m_run.output[g];
  const Range low = m_halo->pending_low();
  const Range high = m_halo->pending_high();
  // Output row j reads window rows [j·s, j·s + k): the interior [j0, j1) reads none of them.
  const Index j0 = low.count > 0 ? (low.offset + low.count + s - 1) / s : 0;
  Index j1 = out;
  if (high.count > 0) {
    j1 = high.offset - k < 0 ? 0 : (high.offset - k) / s + 1;
  }
  j1 = std::min(j1, out);
  if (j1 <= j0) {
    return;  // every output reads a halo row: nothing to overlap
  }
  auto add = [&](Index begin, Index end) {
    if (end <= begin) {
      return;
    }
    std::array<Index, 3> input = m_run.input;
    input[g] = (end - 1) * s + k - begin * s;
    const kernels::ConvGeometry piece =
        kernels::ConvGeometry::make(m_run.channels, input, m_run.kernel, m_run.stride, {0, 0, 0});
    TESSERA_CHECK(piece.output[g] == end - begin, "{} '{}': piece [{}, {}) gives {} rows", m_kind,
                  name(), begin, end, piece.output[g]);
    kernels::DnnlOptions options;
    options.input_outer = m_run.input;
    options.output_outer = m_run.output;
    options.accumulate_input_grad = true;
    Piece p;
    p.out_begin = begin;
    p.conv = std::make_unique<kernels::DnnlConv>(
        fmt::format("{} '{}' (output rows [{}, {}))", m_kind, name(), begin, end), piece, m_out,
        m_ndims, m_bias, options);
    m_pieces.push_back(std::move(p));
  };
  add(j0, j1);  // the interior first
  add(0, j0);
  add(j1, out);
  m_piece_axis = g;
  if (m_pieces.size() == 1) {
    m_pieces.clear();  // nothing to receive (this rank only sends): gather() does that
  }
}

bool ConvNd::overlapped(Index n) const {
  // Not where oneDNN keeps the activations plain (a first layer's few channels): its plain kernels
  // take dense tensors only, and copying each piece's output out would cost more than the wait.
  return !m_pieces.empty() && !m_dnnl->plain_activations(n);
}

namespace {
// Elements between consecutive rows of dimension `g` of a (.., D, H, W) sample.
Index row_stride(const std::array<Index, 3>& extent, size_t g) {
  Index stride = 1;
  for (size_t d = g + 1; d < 3; ++d) {
    stride *= extent[d];
  }
  return stride;
}
}  // namespace

void ConvNd::piece_forward(const Piece& p, const Tensor& x, const Tensor& y) {
  const size_t g = m_piece_axis;
  const Index in_row = row_stride(m_run.input, g);
  const Index out_row = row_stride(m_run.output, g);
  p.conv->forward_view(x.dim(0), x.data() + p.out_begin * m_run.stride[g] * in_row, weight().value,
                       m_bias ? bias().value : Tensor(), y.data() + p.out_begin * out_row);
}

void ConvNd::piece_backward(const Piece& p, const Tensor& x, const Tensor& dy, const Tensor& dx) {
  const size_t g = m_piece_axis;
  const Index in_offset = p.out_begin * m_run.stride[g] * row_stride(m_run.input, g);
  const Index out_offset = p.out_begin * row_stride(m_run.output, g);
  p.conv->backward_view(x.dim(0), x.data() + in_offset, weight().value, dy.data() + out_offset,
                        dx.defined() ? dx.data() + in_offset : nullptr, weight().grad,
                        m_bias ? bias().grad : Tensor());
}

const char* backend_name(ConvBackend backend) {
  switch (backend) {
    case ConvBackend::automatic:
      return "automatic";
    case ConvBackend::im2col:
      return "im2col";
    case ConvBackend::dnnl:
      return "dnnl";
  }
  return "?";
}

template <class F>
void ConvNd::for_each_block(Index n, F&& f) const {
  const Index rows = m_run.output_rows();
  for (Index n0 = 0; n0 < n; n0 += m_chunk) {
    for (Index t0 = 0; t0 < rows; t0 += m_tile_rows) {
      f(n0, std::min(m_chunk, n - n0), kernels::OutputRows{t0, std::min(t0 + m_tile_rows, rows)});
    }
  }
}

Shape ConvNd::output_shape(const Shape& input) const {
  if (input != m_input) {
    TESSERA_THROW("{} '{}': input sample shape {} does not fit, expected {}", m_kind, name(),
                  to_string(input), to_string(m_input));
  }
  return m_output;
}

ForwardResult ConvNd::forward(const Tensor& xl, const ForwardOptions& /*options*/) {
  check_batch(xl, m_local_input, "input");
  if (overlapped(xl.dim(0))) {
    // The interior while the halo rows travel, then the boundary rows.
    Halo::InFlight flight = m_halo->begin_gather(xl, 0.0F);
    const Tensor y = m_output_pool.get(name() + ".output", batch_shape(xl.dim(0), m_local_output));
    piece_forward(m_pieces.front(), flight.buffer, y);
    const Tensor x = m_halo->finish_gather(std::move(flight));
    for (size_t i = 1; i < m_pieces.size(); ++i) {
      piece_forward(m_pieces[i], x, y);
    }
    Context ctx;
    ctx.saved = {x};
    ctx.input_shape = xl.shape();
    return {y, std::move(ctx)};
  }
  // On a spatial split: this rank's window, its block with the neighbours' halo and the padding.
  const Tensor x = m_halo ? m_halo->gather(xl, 0.0F) : xl;
  const Shape y_shape = batch_shape(x.dim(0), m_local_output);  // (N, out, [Do,] Ho, Wo)
  // oneDNN overwrites y: reused storage; im2col accumulates onto a zero y.
  const Tensor y =
      m_dnnl ? m_output_pool.get(name() + ".output", y_shape) : Tensor(name() + ".output", y_shape);
  if (m_dnnl) {
    m_dnnl->forward(x, weight().value, m_bias ? bias().value : Tensor(), y);
  } else {
    forward_im2col(x, y);
  }
  Context ctx;
  ctx.saved = {x};  // (N, C, [D,] H, W), the window on a spatial split
  ctx.input_shape = xl.shape();
  return {y, std::move(ctx)};
}

void ConvNd::forward_im2col(const Tensor& x, const Tensor& y) {
  const Index n = x.dim(0);
  const Index k = m_run.col_rows();       // K = C·k^d
  const Index p = m_run.output_volume();  // P = Do·Ho·Wo
  const Index wo = m_run.output[2];
  const float* w = parameters()[0].value.data();  // (out, K)
  for_each_block(n, [&](Index n0, Index count, kernels::OutputRows rows) {
    const Index r = rows.size() * wo;                   // columns per sample in this block
    kernels::im2col(x, m_run, n0, count, rows, m_col);  // (K, count·r)
    for (Index b = 0; b < count; ++b) {
      // y_n[:, t0·Wo : t1·Wo] (out, r; row stride P) = W (out, K) · col_b (K, r). y starts at
      // zero, so add_bias writes the bias and the GEMM accumulates onto it (beta = 1): the bias
      // costs what zeroing C would.
      if (m_bias && rows.begin == 0) {
        kernels::add_bias(y, parameters()[1].value, n0 + b, 1);
      }
      kernels::gemm(Trans::no, Trans::no, m_out, r, k, 1.0F, w, k, m_col.data() + b * r, count * r,
                    m_bias ? 1.0F : 0.0F, y.data() + (n0 + b) * m_out * p + rows.begin * wo, p);
    }
  });
}

Tensor ConvNd::backward(const Tensor& dy, Context&& ctx) {
  check_batch(dy, m_local_output, "output grad");
  const Index n = dy.dim(0);
  const Shape run_input = m_halo ? m_halo->window() : m_local_input;
  TESSERA_CHECK(ctx.saved.size() == 1 && ctx.saved[0].shape() == batch_shape(n, run_input),
                "{} '{}': backward context does not match output grad {} (call backward once "
                "with the context of the forward call that produced it)",
                m_kind, name(), to_string(dy.shape()));
  const Tensor& x = ctx.saved[0];  // (N, C, [D,] H, W)
  if (overlapped(n)) {
    // The boundary rows first, so that the halo's gradients travel while the interior runs. The
    // pieces' input gradients overlap: they accumulate onto a zero dx.
    const Tensor dx = needs_input_grad() ? Tensor(name() + ".input_grad", x.shape()) : Tensor();
    for (size_t i = 1; i < m_pieces.size(); ++i) {
      piece_backward(m_pieces[i], x, dy, dx);
    }
    if (!dx.defined()) {
      piece_backward(m_pieces.front(), x, dy, dx);
      return dx;
    }
    Halo::InFlight flight = m_halo->begin_scatter(dx);
    piece_backward(m_pieces.front(), x, dy, dx);
    return m_halo->finish_scatter(std::move(flight));
  }
  // No input gradient for a first layer on data: the backends skip that work.
  // oneDNN overwrites dx: reused storage; col2im accumulates onto a zero dx.
  Tensor dx;
  if (needs_input_grad()) {
    dx = m_dnnl ? m_input_grad_pool.get(name() + ".input_grad", x.shape())
                : Tensor(name() + ".input_grad", x.shape());
  }
  if (m_dnnl) {
    m_dnnl->backward(x, weight().value, dy, dx, weight().grad, m_bias ? bias().grad : Tensor());
  } else {
    backward_im2col(x, dy, dx);
  }
  // On a spatial split: the halo's gradient goes back to its owners.
  return m_halo && dx.defined() ? m_halo->scatter(dx) : dx;
}

void ConvNd::backward_im2col(const Tensor& x, const Tensor& dy, const Tensor& dx) {
  const Index n = dy.dim(0);
  const Index k = m_run.col_rows();
  const Index p = m_run.output_volume();
  const Index wo = m_run.output[2];
  Parameter& w = parameters()[0];  // (out, K)
  const bool input_grad = dx.defined();
  for_each_block(n, [&](Index n0, Index count, kernels::OutputRows rows) {
    const Index r = rows.size() * wo;
    const Index ld = count * r;
    kernels::im2col(x, m_run, n0, count, rows, m_col);  // (K, count·r)
    for (Index b = 0; b < count; ++b) {
      // Sample by sample, so dy_n and col_b are still in cache for the second GEMM.
      const float* dy_n = dy.data() + (n0 + b) * m_out * p + rows.begin * wo;  // (out, r), ld P
      float* col_b = m_col.data() + b * r;                                     // (K, r), ld ld
      // dW (out, K) += dy_n (out, r) · col_bᵀ (r, K)
      kernels::gemm(Trans::no, Trans::yes, m_out, k, r, 1.0F, dy_n, p, col_b, ld, 1.0F,
                    w.grad.data(), k);
      if (m_bias && rows.begin == 0) {
        kernels::bias_grad(dy, parameters()[1].grad, n0 + b, 1);  // db += Σ_P dy_n
      }
      if (input_grad) {
        // dcol_b (K, r) = Wᵀ (K, out) · dy_n (out, r), overwriting col_b, which is used up.
        kernels::gemm(Trans::yes, Trans::no, k, r, m_out, 1.0F, w.value.data(), k, dy_n, p, 0.0F,
                      col_b, ld);
      }
    }
    if (input_grad) {
      kernels::col2im(m_col, m_run, n0, count, rows, dx);  // dx += fold(dcol)
    }
  });
}

Conv2d::Conv2d(std::string name, const Shape& input, const ConvOptions& options,
               BuildContext context)
    : ConvNd(std::move(name), input, options, 2, "conv2d", std::move(context)) {}

Conv3d::Conv3d(std::string name, const Shape& input, const ConvOptions& options,
               BuildContext context)
    : ConvNd(std::move(name), input, options, 3, "conv3d", std::move(context)) {}

}  // namespace tessera::nn
