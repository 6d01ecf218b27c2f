#include "tessera/nn/spatial.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/nn/layer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>

namespace tessera::nn {
namespace {

constexpr const char* kDimNames2[] = {"H", "W"};
constexpr const char* kDimNames3[] = {"D", "H", "W"};

// The name of spatial dimension i of a sample with `nd` spatial dimensions.
const char* dim_name(size_t i, size_t nd) {
  return nd == 3 ? kDimNames3[i] : kDimNames2[i];
}

// A box of a (planes, e0, e1, e2) tensor's spatial extents.
using Extent3 = std::array<Index, 3>;

// The last 3 entries of a spatial shape (leading 1s for 2-D).
Extent3 extent3(const Shape& spatial) {
  Extent3 e{1, 1, 1};
  const size_t nd = spatial.size();
  for (size_t i = 0; i < nd; ++i) {
    e[3 - nd + i] = spatial[i];
  }
  return e;
}

}  // namespace

namespace detail {
// Kokkos kernels over a box of a (planes, e0, e1, e2) tensor: one index per row along the last
// dimension, a loop along it — wherever the tensors live, and on the host as fast as the row
// copies they replace (the inner loops vectorize). Outside the anonymous namespace, their
// geometry captured as a plain struct: nvcc's rules for extended lambdas.

// The rows of the box [off, off + count) of a (planes × ext) tensor: row r (plane p, rows i, j of
// the box's first two dimensions) starts at start(r) and runs count[2] elements.
struct BoxRows {
  Index c0, c1, plane, e1, e2, o0, o1, o2;
  KOKKOS_INLINE_FUNCTION Index start(Index row) const {
    const Index j = row % c1;
    const Index i = (row / c1) % c0;
    const Index p = row / (c1 * c0);
    return p * plane + ((o0 + i) * e1 + o1 + j) * e2 + o2;
  }
};
BoxRows box_rows(const Extent3& ext, const Extent3& off, const Extent3& count) {
  return {count[0], count[1], ext[0] * ext[1] * ext[2], ext[1], ext[2], off[0], off[1], off[2]};
}
bool empty_box(const Extent3& count, Index planes) {
  return count[0] <= 0 || count[1] <= 0 || count[2] <= 0 || planes <= 0;
}

// Copies (or adds) the box [src_off, src_off + count) of src (planes × src_ext) onto the box at
// dst_off of dst (planes × dst_ext).
void copy_box(const FloatView& src, const Extent3& src_ext, const Extent3& src_off,
              const FloatView& dst, const Extent3& dst_ext, const Extent3& dst_off,
              const Extent3& count, Index planes, bool add) {
  if (empty_box(count, planes)) {
    return;
  }
  const BoxRows from = box_rows(src_ext, src_off, count);
  const BoxRows to = box_rows(dst_ext, dst_off, count);
  const Index n = count[2];
  const float* const s0 = src.data();
  float* const d0 = dst.data();
  Kokkos::parallel_for(
      "nn::halo_copy_box", Kokkos::RangePolicy<ExecSpace>(0, planes * count[0] * count[1]),
      KOKKOS_LAMBDA(const Index row) {
        const float* s = s0 + from.start(row);
        float* d = d0 + to.start(row);
        if (add) {
          for (Index k = 0; k < n; ++k) {
            d[k] += s[k];
          }
        } else {
          for (Index k = 0; k < n; ++k) {
            d[k] = s[k];
          }
        }
      });
}

// Sets the box [off, off + count) of dst (planes × ext) to `value`.
void fill_box(const FloatView& dst, const Extent3& ext, const Extent3& off, const Extent3& count,
              Index planes, float value) {
  if (empty_box(count, planes)) {
    return;
  }
  const BoxRows to = box_rows(ext, off, count);
  const Index n = count[2];
  float* const d0 = dst.data();
  Kokkos::parallel_for(
      "nn::halo_fill_box", Kokkos::RangePolicy<ExecSpace>(0, planes * count[0] * count[1]),
      KOKKOS_LAMBDA(const Index row) {
        float* d = d0 + to.start(row);
        for (Index k = 0; k < n; ++k) {
          d[k] = value;
        }
      });
}
}  // namespace detail

GridAxis spatial_axis(int i) {
  TESSERA_CHECK(i >= 0 && i < 3, "spatial axis {} of 3", i);
  return static_cast<GridAxis>(static_cast<int>(GridAxis::spatial0) + i);
}

Layout spatial_input_layout(const Shape& sample, const GridPlace& place) {
  Layout layout = Layout::replicated(sample);
  const size_t nd = sample.empty() ? 0 : sample.size() - 1;
  for (int i = 0; i < 3; ++i) {
    const int parts = place.size_of(spatial_axis(i));
    if (parts == 1) {
      continue;
    }
    if (static_cast<size_t>(i) >= nd || nd < 2 || nd > 3) {
      throw Error(fmt::format(
          "the grid splits spatial dimension {} over {} ranks, but the model's input samples {} "
          "have {} spatial dimensions{}",
          i, parts, to_string(sample), nd,
          nd == 2 || nd == 3 ? "" : " (spatial decomposition needs (C, H, W) or (C, D, H, W))"));
    }
    const Index extent = sample[static_cast<size_t>(i) + 1];
    if (extent < parts) {
      throw Error(
          fmt::format("the grid splits the input's {} extent {} over {} ranks: more ranks "
                      "than planes (samples {})",
                      dim_name(static_cast<size_t>(i), nd), extent, parts, to_string(sample)));
    }
    layout.and_split(i + 1, spatial_axis(i));
  }
  return layout;
}

WindowPlacement place_window(const std::string& layer, const Layout& input,
                             std::vector<WindowAxis> axes, const Shape& output,
                             const BuildContext& context) {
  WindowPlacement placed;
  placed.output = Layout::replicated(output);
  if (!input.partial_axes().empty()) {
    throw Error(fmt::format("{}: its input {} is partial; sum it first", layer, input.to_string()));
  }
  if (input.is_replicated()) {
    return placed;
  }
  if (input.axis_of(0).has_value()) {
    throw Error(
        fmt::format("{} cannot take its input's channels split: {}", layer, input.to_string()));
  }
  for (size_t d = 0; d < axes.size(); ++d) {
    const int dim = static_cast<int>(d) + 1;
    const std::optional<GridAxis> axis = input.axis_of(dim);
    if (!axis) {
      continue;
    }
    if (input.placement(dim).stride != 1 ||
        (*axis != GridAxis::spatial0 && *axis != GridAxis::spatial1 &&
         *axis != GridAxis::spatial2)) {
      throw Error(
          fmt::format("{} takes samples split over the spatial axes only, but its input "
                      "is {}",
                      layer, input.to_string()));
    }
    axes[d].parts = context.size(*axis);
    placed.output.and_split(dim, *axis);
    placed.split = placed.split | AxisSet{*axis};
  }
  placed.halo = std::make_unique<Halo>(layer, input, std::move(axes), context);
  return placed;
}

Index WindowAxis::need_begin(int part) const {
  return output(part).offset * stride - pad;
}

Index WindowAxis::need_end(int part) const {
  const Range o = output(part);
  return (o.offset + o.count - 1) * stride - pad + kernel;
}

Halo::Halo(std::string layer, const Layout& input, std::vector<WindowAxis> axes,
           const BuildContext& context)
    : m_layer(std::move(layer)), m_context(&context) {
  const Shape& global = input.global_shape();
  const size_t nd = axes.size();
  TESSERA_CHECK(global.size() == nd + 1 && (nd == 2 || nd == 3),
                "{}: halo over {} axes for input {}", m_layer, nd, to_string(global));
  m_channels = global[0];
  const GridPlace& place = context.place();
  m_local = input.local_shape(place);
  m_window = {m_channels};
  m_local_out.clear();
  m_buffer = {m_channels};
  for (size_t i = 0; i < nd; ++i) {
    const WindowAxis& a = axes[i];
    const int dim = static_cast<int>(i) + 1;
    const std::optional<GridAxis> axis = input.axis_of(dim);
    Dim d;
    d.axis = axis.value_or(spatial_axis(static_cast<int>(i)));
    d.parts = axis ? place.size_of(*axis) : 1;
    d.coord = axis ? place.coord_of(*axis) : 0;
    TESSERA_CHECK(a.parts == d.parts && a.in == global[i + 1],
                  "{}: window axis {} of {} parts over extent {}, input {}", m_layer, i, a.parts,
                  a.in, input.to_string());
    const char* name = dim_name(i, nd);
    // Every part's windows checked, so that every rank throws the same error.
    for (int c = 0; c < d.parts; ++c) {
      if (a.input(c).count < 1 || a.output(c).count < 1) {
        throw Error(fmt::format(
            "{}: its {} extent (input {}, output {}) is split over {} ranks, which leaves some "
            "with no {}; use fewer ranks along {}",
            m_layer, name, a.in, a.out, d.parts, a.input(c).count < 1 ? "input" : "output", name));
      }
      const Index lo = std::max<Index>(a.need_begin(c), 0);
      const Index hi = std::min(a.need_end(c), a.in);
      const bool low_ok = c == 0 || lo >= a.input(c - 1).offset;
      const bool high_ok = c == d.parts - 1 || hi <= a.input(c + 1).offset + a.input(c + 1).count;
      if (!low_ok || !high_ok) {
        throw Error(fmt::format(
            "{}: kernel {} with stride {} and pad {} is wider than a tile: the outputs of rank {} "
            "along {} read input planes [{}, {}), past its neighbours' blocks (extent {} over {} "
            "ranks); use fewer ranks along {} or a larger input",
            m_layer, a.kernel, a.stride, a.pad, c, name, lo, hi, a.in, d.parts, name));
      }
    }
    const int c = d.coord;
    d.own = a.input(c);
    d.need_begin = a.need_begin(c);
    d.need_end = a.need_end(c);
    d.begin = std::min(d.own.offset, d.need_begin);
    d.end = std::max(d.own.offset + d.own.count, d.need_end);
    auto range = [](Index b, Index e) { return Range{b, std::max<Index>(e - b, 0)}; };
    const Index own_end = d.own.offset + d.own.count;
    d.from_low = range(std::max<Index>(d.need_begin, 0), d.own.offset);
    d.from_high = range(own_end, std::min(d.need_end, a.in));
    if (c > 0) {
      d.to_low = range(d.own.offset, std::min(a.need_end(c - 1), a.in));
    }
    if (c < d.parts - 1) {
      d.to_high = range(std::max<Index>(a.need_begin(c + 1), 0), own_end);
    }
    m_exchanges = m_exchanges || d.from_low.count > 0 || d.from_high.count > 0 ||
                  d.to_low.count > 0 || d.to_high.count > 0;
    m_window_is_buffer = m_window_is_buffer && d.begin == d.need_begin && d.end == d.need_end;
    // (and no neighbour reads from this rank: otherwise it must still send)
    m_window_is_own = m_window_is_own && d.need_begin == d.own.offset && d.need_end == own_end &&
                      d.to_low.count == 0 && d.to_high.count == 0;
    m_window.push_back(d.need_end - d.need_begin);
    m_buffer.push_back(d.end - d.begin);
    m_local_out.push_back(a.output(c).count);
    m_extent.push_back(a.in);
    m_dims.push_back(d);
  }
  int split = -1;
  int splits = 0;
  for (size_t i = 0; i < nd; ++i) {
    if (m_dims[i].parts > 1) {
      ++splits;
      split = static_cast<int>(i);
    }
  }
  if (splits == 1 && m_exchanges && m_window_is_buffer && !m_window_is_own) {
    const Dim& d = m_dims[static_cast<size_t>(split)];
    m_overlap_dim = split;
    m_pending_low = {d.from_low.offset - d.begin, d.from_low.count};
    m_pending_high = {d.from_high.offset - d.begin, d.from_high.count};
  }
}

void Halo::exchange(const Tensor& buffer, size_t d, bool backward) const {
  if (m_dims[d].parts == 1) {
    return;
  }
  Transfer t = start_exchange(buffer, d, backward);
  finish_exchange(buffer, t);
}

namespace {
// The box of rows `r` of dimension e (of the three of Extent3) of a buffer of extents `ext` whose
// dimension e starts at global row `begin`, whole along the others.
void row_box(const Extent3& ext, size_t e, Index begin, const Range& r, Extent3& off,
             Extent3& count) {
  off = {0, 0, 0};
  count = ext;
  off[e] = r.offset - begin;
  count[e] = r.count;
}
}  // namespace

Halo::Transfer Halo::start_exchange(const Tensor& buffer, size_t d, bool backward) const {
  const Dim& dim = m_dims[d];
  const size_t nd = m_dims.size();
  const size_t e = 3 - nd + d;  // this dimension among the three of Extent3
  const Extent3 ext = extent3(Shape(m_buffer.begin() + 1, m_buffer.end()));
  const Index planes = buffer.dim(0) * m_channels;
  auto size_of = [&](const Range& r) {
    Extent3 off{};
    Extent3 count{};
    row_box(ext, e, dim.begin, r, off, count);
    return planes * count[0] * count[1] * count[2];
  };
  // Packs rows r of the buffer (and zeroes them there: backward, their gradient now travels).
  auto pack = [&](const Range& r, Tensor& out) {
    Extent3 off{};
    Extent3 count{};
    row_box(ext, e, dim.begin, r, off, count);
    out = Tensor::uninitialized(m_layer + ".halo_send", {size_of(r)});
    detail::copy_box(buffer.view(), ext, off, out.view(), count, {0, 0, 0}, count, planes, false);
    if (backward) {
      detail::fill_box(buffer.view(), ext, off, count, planes, 0.0F);
    }
  };
  comm::Communicator& comm = m_context->axis(dim.axis);
  const int low = dim.coord - 1;
  const int high = dim.coord + 1;
  constexpr int kDown = 0;  // a message to the lower neighbour
  constexpr int kUp = 1;
  // Forward: receive from_low/from_high, send to_low/to_high. Backward, the adjoint: send the
  // gradients of from_low/from_high back, add what comes back onto to_low/to_high.
  Transfer t;
  t.dim = d;
  t.backward = backward;
  t.recv_low = backward ? dim.to_low : dim.from_low;
  t.recv_high = backward ? dim.to_high : dim.from_high;
  const Range send_low = backward ? dim.from_low : dim.to_low;
  const Range send_high = backward ? dim.from_high : dim.to_high;
  if (t.recv_low.count > 0) {
    t.in_low = Tensor::uninitialized(m_layer + ".halo_recv", {size_of(t.recv_low)});
    t.work.push_back(comm.recv(t.in_low, {low, kUp}));
  }
  if (t.recv_high.count > 0) {
    t.in_high = Tensor::uninitialized(m_layer + ".halo_recv", {size_of(t.recv_high)});
    t.work.push_back(comm.recv(t.in_high, {high, kDown}));
  }
  if (send_low.count > 0) {
    pack(send_low, t.out_low);
    t.work.push_back(comm.send(t.out_low, {low, kDown}));
  }
  if (send_high.count > 0) {
    pack(send_high, t.out_high);
    t.work.push_back(comm.send(t.out_high, {high, kUp}));
  }
  return t;
}

void Halo::finish_exchange(const Tensor& buffer, Transfer& t) const {
  const Dim& dim = m_dims[t.dim];
  const size_t e = 3 - m_dims.size() + t.dim;
  const Extent3 ext = extent3(Shape(m_buffer.begin() + 1, m_buffer.end()));
  const Index planes = buffer.dim(0) * m_channels;
  if (t.progress) {
    t.progress->stop();
  }
  for (auto& w : t.work) {
    w->wait();
  }
  // Received rows overwrite (forward) or are added (backward: gradients from the neighbours).
  auto unpack = [&](const Tensor& in, const Range& r) {
    Extent3 off{};
    Extent3 count{};
    row_box(ext, e, dim.begin, r, off, count);
    detail::copy_box(in.view(), count, {0, 0, 0}, buffer.view(), ext, off, count, planes,
                     t.backward);
  };
  if (t.in_low.numel() > 0) {
    unpack(t.in_low, t.recv_low);
  }
  if (t.in_high.numel() > 0) {
    unpack(t.in_high, t.recv_high);
  }
}

void Halo::count(double seconds) const {
  m_context->halo_clock().seconds += seconds;
  m_context->halo_clock().calls += 1;
}

Tensor Halo::fill_buffer(const Tensor& x, float fill) const {
  const Index n = x.dim(0);
  TESSERA_CHECK(x.shape() == batch_shape(n, m_local), "{}: halo gather of {}, local input {}",
                m_layer, to_string(x.shape()), to_string(m_local));
  const Shape spatial_local(m_local.begin() + 1, m_local.end());
  const Shape spatial_buffer(m_buffer.begin() + 1, m_buffer.end());
  const Extent3 own = extent3(spatial_local);
  const Extent3 ext = extent3(spatial_buffer);
  Tensor buffer = Tensor::uninitialized(m_layer + ".halo", batch_shape(n, m_buffer));
  // Only the padding needs `fill`: every other element of the buffer is this rank's own or comes
  // from a neighbour (edges and corners through two or three hops). The padding is the slabs of
  // rows outside [0, extent) along each dimension, whole along the others.
  const Index planes = n * m_channels;
  const size_t nd = m_dims.size();
  for (size_t d = 0; d < nd; ++d) {
    const Dim& dim = m_dims[d];
    const Index extent = m_extent[d];
    for (const Range r : {Range{dim.begin, std::max<Index>(0, -dim.begin)},
                          Range{extent, std::max<Index>(0, dim.end - extent)}}) {
      if (r.count <= 0) {
        continue;
      }
      Extent3 off{0, 0, 0};
      Extent3 count = ext;
      off[3 - nd + d] = r.offset - dim.begin;
      count[3 - nd + d] = r.count;
      detail::fill_box(buffer.view(), ext, off, count, planes, fill);
    }
  }
  Extent3 at{0, 0, 0};
  for (size_t d = 0; d < nd; ++d) {
    at[3 - nd + d] = m_dims[d].own.offset - m_dims[d].begin;
  }
  detail::copy_box(x.view(), own, {0, 0, 0}, buffer.view(), ext, at, own, planes, false);
  return buffer;
}

Tensor Halo::own_block(const Tensor& buffer) const {
  const Index n = buffer.dim(0);
  const Extent3 ext = extent3(Shape(m_buffer.begin() + 1, m_buffer.end()));
  const Extent3 own = extent3(Shape(m_local.begin() + 1, m_local.end()));
  Extent3 from{0, 0, 0};
  for (size_t d = 0; d < m_dims.size(); ++d) {
    from[3 - m_dims.size() + d] = m_dims[d].own.offset - m_dims[d].begin;
  }
  Tensor dx = Tensor::uninitialized(m_layer + ".input_grad", batch_shape(n, m_local));
  detail::copy_box(buffer.view(), ext, from, dx.view(), own, {0, 0, 0}, own, n * m_channels, false);
  return dx;
}

Tensor Halo::gather(const Tensor& x, float fill) const {
  if (m_window_is_own) {
    TESSERA_CHECK(x.shape() == batch_shape(x.dim(0), m_local),
                  "{}: halo gather of {}, local input {}", m_layer, to_string(x.shape()),
                  to_string(m_local));
    return x;  // the windows read exactly this rank's block: nothing to copy or exchange
  }
  const Stopwatch clock;
  const Index n = x.dim(0);
  Tensor buffer = fill_buffer(x, fill);
  for (size_t d = 0; d < m_dims.size(); ++d) {
    exchange(buffer, d, false);
  }
  Tensor out = buffer;
  if (!m_window_is_buffer) {
    const Extent3 ext = extent3(Shape(m_buffer.begin() + 1, m_buffer.end()));
    const Extent3 win = extent3(Shape(m_window.begin() + 1, m_window.end()));
    Extent3 from{0, 0, 0};
    for (size_t d = 0; d < m_dims.size(); ++d) {
      from[3 - m_dims.size() + d] = m_dims[d].need_begin - m_dims[d].begin;
    }
    out = Tensor::uninitialized(m_layer + ".window", batch_shape(n, m_window));
    detail::copy_box(buffer.view(), ext, from, out.view(), win, {0, 0, 0}, win, n * m_channels,
                     false);
  }
  count(clock.seconds());
  return out;
}

Tensor Halo::scatter(const Tensor& dwindow) const {
  const Index n = dwindow.dim(0);
  TESSERA_CHECK(dwindow.shape() == batch_shape(n, m_window), "{}: halo scatter of {}, window {}",
                m_layer, to_string(dwindow.shape()), to_string(m_window));
  if (m_window_is_own) {
    return dwindow;
  }
  const Stopwatch clock;
  Tensor buffer = dwindow;
  if (!m_window_is_buffer) {
    const Extent3 ext = extent3(Shape(m_buffer.begin() + 1, m_buffer.end()));
    const Extent3 win = extent3(Shape(m_window.begin() + 1, m_window.end()));
    Extent3 at{0, 0, 0};
    for (size_t d = 0; d < m_dims.size(); ++d) {
      at[3 - m_dims.size() + d] = m_dims[d].need_begin - m_dims[d].begin;
    }
    buffer = Tensor(m_layer + ".halo_grad", batch_shape(n, m_buffer));  // zeros
    detail::copy_box(dwindow.view(), win, {0, 0, 0}, buffer.view(), ext, at, win, n * m_channels,
                     false);
  }
  for (size_t d = m_dims.size(); d-- > 0;) {
    exchange(buffer, d, true);
  }
  Tensor dx = own_block(buffer);
  count(clock.seconds());
  return dx;
}

Halo::InFlight Halo::start_overlapped(Tensor buffer, bool backward) const {
  InFlight f;
  f.buffer = std::move(buffer);
  f.transfer = start_exchange(f.buffer, static_cast<size_t>(m_overlap_dim), backward);
  std::vector<comm::Work*> work;
  for (auto& w : f.transfer.work) {
    work.push_back(w.get());
  }
  f.transfer.progress = std::make_unique<comm::BackgroundProgress>(std::move(work));
  return f;
}

Halo::InFlight Halo::begin_gather(const Tensor& x, float fill) const {
  TESSERA_CHECK(overlaps(), "{}: begin_gather without an overlappable split", m_layer);
  const Stopwatch clock;
  InFlight f = start_overlapped(fill_buffer(x, fill), false);  // the window (m_window_is_buffer)
  count(clock.seconds());
  return f;
}

Tensor Halo::finish_gather(InFlight&& f) const {
  const Stopwatch clock;
  finish_exchange(f.buffer, f.transfer);
  m_context->halo_clock().seconds += clock.seconds();  // one call, counted by begin_gather
  return std::move(f.buffer);
}

Halo::InFlight Halo::begin_scatter(const Tensor& dwindow) const {
  TESSERA_CHECK(overlaps(), "{}: begin_scatter without an overlappable split", m_layer);
  const Index n = dwindow.dim(0);
  TESSERA_CHECK(dwindow.shape() == batch_shape(n, m_window), "{}: halo scatter of {}, window {}",
                m_layer, to_string(dwindow.shape()), to_string(m_window));
  const Stopwatch clock;
  InFlight f = start_overlapped(dwindow, true);
  count(clock.seconds());
  return f;
}

Tensor Halo::finish_scatter(InFlight&& f) const {
  const Stopwatch clock;
  finish_exchange(f.buffer, f.transfer);
  Tensor dx = own_block(f.buffer);
  m_context->halo_clock().seconds += clock.seconds();
  return dx;
}

}  // namespace tessera::nn
