// Spatial decomposition does not change the math (nn/spatial.hpp): on every split of the world's
// ranks over the spatial axes ([n, 1, 1], [1, n, 1], [1, 1, n] and, at 4 ranks, [2, 2, 1],
// [2, 1, 2], [1, 2, 2]; 2-D samples [n, 1], [1, n], [2, 2]), a Halo gathers exactly the global
// padded input under this rank's windows and scatters exactly its adjoint; convolutions, pooling,
// batch normalisation, global average pooling and dropout give this rank's block of the one-rank
// layer's output and input gradient, and parameter gradients whose sum over the ranks is the
// one-rank gradient (1e-5 relative). Extents are odd and split unevenly; a split that leaves a
// window reaching past a neighbour's block is refused, with the same message on every rank.
// Expectations come from the world size, so the suite passes at 1 to 4 ranks.
#include "support/gradcheck.hpp"
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/conv.hpp"
#include "tessera/nn/dropout.hpp"
#include "tessera/nn/norm.hpp"
#include "tessera/nn/pooling.hpp"
#include "tessera/nn/spatial.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::testing;

namespace {

constexpr Index kBatch = 2;

// Samples (C, spatial...): roomy ones that every window config fits at 4 ranks along any one
// dimension (11 = 3+3+3+2, 13 = 4+3+3+3, 17 = 5+4+4+4: uneven at 2, 3 and 4 ranks), and tight
// ones on which some configs legitimately refuse some splits (checked against refusal() below).
const Shape kRoomy3{2, 11, 13, 17};
const Shape kTight3{2, 7, 9, 6};
const Shape kRoomy2{2, 13, 11};
const Shape kTight2{2, 9, 7};
// Channels enough for oneDNN's blocked layouts, on which a convolution split along one dimension
// computes its interior while the halo travels (with 2 it keeps them plain, and does not).
const Shape kWide3{16, 11, 13, 17};

struct WindowConfig {
  Index kernel;
  Index stride;
  Index pad;
};
const std::vector<WindowConfig> kConfigs{{3, 1, 1}, {5, 1, 2}, {3, 2, 1},
                                         {3, 2, 0}, {2, 2, 0}, {5, 2, 0}};

std::string config_text(const WindowConfig& c) {
  return fmt::format("kernel {} stride {} pad {}", c.kernel, c.stride, c.pad);
}

Index window_out(Index in, const WindowConfig& c) {
  return (in + 2 * c.pad - c.kernel) / c.stride + 1;
}

// The splits of the world's ranks over `nd` spatial dimensions: all of them along each one, and at
// 4 ranks 2 × 2 over each pair. One rank: the trivial split, once.
std::vector<std::vector<int>> splits(size_t nd) {
  const int n = world_size();
  std::vector<std::vector<int>> out;
  for (size_t d = 0; d < nd; ++d) {
    std::vector<int> s(nd, 1);
    s[d] = n;
    out.push_back(s);
    if (n == 1) {
      break;
    }
  }
  if (n == 4) {
    for (size_t a = 0; a < nd; ++a) {
      for (size_t b = a + 1; b < nd; ++b) {
        std::vector<int> s(nd, 1);
        s[a] = 2;
        s[b] = 2;
        out.push_back(s);
      }
    }
  }
  return out;
}

std::string split_text(const std::vector<int>& split) {
  return fmt::format("split [{}]", fmt::join(split, ", "));
}

// A grid of the world's ranks with the samples split as `split` (data axis 1).
comm::GridSpec grid_spec(const std::vector<int>& split) {
  comm::GridSpec spec;
  spec.data = 1;
  spec.spatial = split;
  return spec;
}

// The grid of each split, built on first use (collectively: every rank asks for the same splits in
// the same order) and kept for the whole suite, since a grid's communicators are costly to make;
// SpatialTest frees them before MPI_Finalize.
std::map<std::vector<int>, std::unique_ptr<comm::ProcessGrid>>& grid_cache() {
  static std::map<std::vector<int>, std::unique_ptr<comm::ProcessGrid>> cache;
  return cache;
}

const comm::ProcessGrid& grid_of(const std::vector<int>& split) {
  std::unique_ptr<comm::ProcessGrid>& grid = grid_cache()[split];
  if (!grid) {
    grid = std::make_unique<comm::ProcessGrid>(MPI_COMM_WORLD, grid_spec(split));
  }
  return *grid;
}

class SpatialTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() { grid_cache().clear(); }
};

// Whether `ok` holds on every rank (so that every rank takes the same branch before collectives).
bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

// Why a split of `sample` must refuse a window layer `c`, read independently of nn::Halo: some
// part gets no input or no output, or a part's windows read rows beyond its two neighbours' blocks.
// Empty when it fits. The text is what the refusal's message contains.
std::string refusal(const Shape& sample, const WindowConfig& c, const std::vector<int>& split) {
  for (size_t d = 0; d < split.size(); ++d) {
    const Index in = sample[d + 1];
    const Index out = window_out(in, c);
    const int parts = split[d];
    for (int p = 0; p < parts; ++p) {
      const Range i = block_range(in, parts, p);
      const Range o = block_range(out, parts, p);
      if (i.count < 1 || o.count < 1) {
        return "which leaves some with no";
      }
      const Index lo = std::max<Index>(o.offset * c.stride - c.pad, 0);
      const Index hi = std::min((o.offset + o.count - 1) * c.stride - c.pad + c.kernel, in);
      const bool below = p > 0 && lo < block_range(in, parts, p - 1).offset;
      const Range next = block_range(in, parts, std::min(p + 1, parts - 1));
      const bool above = p < parts - 1 && hi > next.offset + next.count;
      if (below || above) {
        return "wider than a tile";
      }
    }
  }
  return {};
}

// This rank's block of a batch of kBatch samples `sample` split as `split`: core::block_range of
// every spatial extent at this rank's grid coordinates (worked out here, not read off the layer).
Box rank_block(const Shape& sample, const std::vector<int>& split, const GridPlace& place) {
  Box b{{0, 0}, {kBatch, sample[0]}};
  for (size_t d = 0; d < split.size(); ++d) {
    const Range r =
        block_range(sample[d + 1], split[d], place.coord_of(nn::spatial_axis(static_cast<int>(d))));
    b.offset.push_back(r.offset);
    b.count.push_back(r.count);
  }
  return b;
}

// Calls f(index) for every multi-index below `count`, in row-major order.
template <class F>
void for_each_index(const Shape& count, F&& f) {
  if (numel(count) == 0) {
    return;
  }
  Shape idx(count.size(), 0);
  for (;;) {
    f(idx);
    size_t d = count.size();
    for (;;) {
      if (d == 0) {
        return;
      }
      --d;
      if (++idx[d] < count[d]) {
        break;
      }
      idx[d] = 0;
    }
  }
}

Index flat(const Shape& shape, const Shape& idx) {
  Index f = 0;
  for (size_t d = 0; d < shape.size(); ++d) {
    f = f * shape[d] + idx[d];
  }
  return f;
}

// The box `b` of a row-major tensor of `shape`.
std::vector<float> box_of(const std::vector<float>& global, const Shape& shape, const Box& b) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(numel(b.count)));
  for_each_index(b.count, [&](const Shape& i) {
    Shape g = i;
    for (size_t d = 0; d < g.size(); ++d) {
      g[d] += b.offset[d];
    }
    out.push_back(global[static_cast<size_t>(flat(shape, g))]);
  });
  return out;
}

// The sum over the world's ranks, in double.
std::vector<float> summed(const std::vector<float>& v) {
  std::vector<double> d(v.begin(), v.end());
  MPI_Allreduce(MPI_IN_PLACE, d.data(), static_cast<int>(d.size()), MPI_DOUBLE, MPI_SUM,
                MPI_COMM_WORLD);
  return {d.begin(), d.end()};
}

// The axes a split layer's parameter gradients are partial over: data and the split spatial axes.
AxisSet partial_axes(const std::vector<int>& split) {
  AxisSet axes{GridAxis::data};
  for (size_t d = 0; d < split.size(); ++d) {
    if (split[d] > 1) {
      axes = axes | AxisSet{nn::spatial_axis(static_cast<int>(d))};
    }
  }
  return axes;
}

// Expects `got` equal to `want` element for element, reporting the first mismatches.
void expect_same(const std::vector<float>& got, const std::vector<float>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i]) && ++wrong <= 3) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i];
    }
  }
  EXPECT_EQ(wrong, 0) << what << ": elements that differ, of " << got.size();
}

// Expects the constructor (or placement) `f` to throw tessera::Error containing `fragment` on this
// rank, and the same message on every rank.
void expect_refused(const std::function<void()>& f, const std::string& fragment,
                    const std::string& what) {
  std::string message;
  try {
    f();
  } catch (const Error& e) {
    message = e.message();
  }
  EXPECT_NE(message.find(fragment), std::string::npos)
      << what << ": expected an error containing '" << fragment << "', got '" << message << "'";
  EXPECT_TRUE(all_ranks(!message.empty())) << what << ": not refused on every rank";
  const auto hash = static_cast<unsigned long long>(std::hash<std::string>{}(message));
  unsigned long long lo = 0;
  unsigned long long hi = 0;
  MPI_Allreduce(&hash, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&hash, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(lo, hi) << what << ": the ranks' messages differ; this rank's: " << message;
}

// One layer on split samples against the same layer on one rank.
struct LayerCase {
  std::string what;
  Shape sample;  // (C, spatial...)
  std::function<std::unique_ptr<nn::Layer>(nn::BuildContext)> make;
  nn::ForwardOptions options{};
  std::string refused;  // the refusal() the split must give, empty if it fits
  bool exact = false;   // outputs and input gradients bit for bit (dropout)
};

// Builds `c.make` on one rank and on `grid` (samples split as `split`), runs forward and backward
// with the same global x and dy, and compares this rank's blocks, the parameter gradients summed
// over the ranks and the buffers. Returns the split layer for further checks (null if refused).
std::unique_ptr<nn::Layer> expect_matches_one_rank(const LayerCase& c,
                                                   const std::vector<int>& split,
                                                   const comm::ProcessGrid& grid) {
  const std::string what = c.what + ", " + split_text(split);
  const GridPlace& place = grid.place();
  std::unique_ptr<nn::Layer> one = c.make(nn::BuildContext{});
  std::unique_ptr<nn::Layer> layer = c.make(nn::BuildContext(grid));
  if (!c.refused.empty()) {
    expect_refused([&] { layer->place_input(nn::spatial_input_layout(c.sample, place)); },
                   c.refused, what);
    return nullptr;
  }
  std::string error;
  try {
    layer->place_input(nn::spatial_input_layout(c.sample, place));
  } catch (const Error& e) {
    error = e.message();
  }
  if (!all_ranks(error.empty())) {
    ADD_FAILURE() << what << ": refused: " << error;
    return nullptr;
  }
  one->initialize(5);
  layer->initialize(5);
  for (size_t i = 0; i < layer->parameters().size(); ++i) {
    EXPECT_EQ(layer->parameters()[i].partial, partial_axes(split))
        << what << ": " << layer->parameters()[i].name << " partial over "
        << layer->parameters()[i].partial.to_string();
  }

  const Shape out_sample = one->output_shape(c.sample);
  const Shape in_shape = nn::batch_shape(kBatch, c.sample);
  const Shape out_shape = nn::batch_shape(kBatch, out_sample);
  const std::vector<float> x = random_values(numel(in_shape), 11);
  const std::vector<float> dy = random_values(numel(out_shape), 12);
  const Box in_block = rank_block(c.sample, split, place);
  const Box out_block = rank_block(out_sample, split, place);

  nn::ForwardResult r1 = one->forward(Tensor::from_host("x", in_shape, x), c.options);
  const std::vector<float> y1 = r1.output.to_host();
  const std::vector<float> dx1 =
      one->backward(Tensor::from_host("dy", out_shape, dy), std::move(r1.ctx)).to_host();

  nn::ForwardResult r = layer->forward(
      Tensor::from_host("x", in_block.count, box_of(x, in_shape, in_block)), c.options);
  if (!all_ranks(r.output.shape() == out_block.count)) {
    ADD_FAILURE() << what << ": output block " << to_string(r.output.shape()) << ", expected "
                  << to_string(out_block.count);
    return nullptr;
  }
  const std::vector<float> y_want = box_of(y1, out_shape, out_block);
  const std::vector<float> dx_want = box_of(dx1, in_shape, in_block);
  const std::vector<float> y = r.output.to_host();
  const std::vector<float> dx =
      layer
          ->backward(Tensor::from_host("dy", out_block.count, box_of(dy, out_shape, out_block)),
                     std::move(r.ctx))
          .to_host();
  if (c.exact) {
    expect_same(y, y_want, what + ": output");
    expect_same(dx, dx_want, what + ": input grad");
  } else {
    EXPECT_LE(relative_difference(y, y_want), 1e-5) << what << ": output";
    EXPECT_EQ(dx.size(), dx_want.size()) << what << ": input grad";
    EXPECT_LE(relative_difference(dx, dx_want), 1e-5) << what << ": input grad";
  }
  for (size_t i = 0; i < layer->parameters().size(); ++i) {
    const nn::Parameter& p = layer->parameters()[i];
    EXPECT_LE(relative_difference(summed(p.grad.to_host()), one->parameters()[i].grad.to_host()),
              1e-5)
        << what << ": " << p.name << " gradient summed over the ranks";
  }
  for (size_t i = 0; i < layer->buffers().size(); ++i) {
    const nn::Parameter& b = layer->buffers()[i];
    EXPECT_LE(relative_difference(b.value.to_host(), one->buffers()[i].value.to_host()), 1e-5)
        << what << ": buffer " << b.name;
  }
  return layer;
}

// Every case of `cases(sample, split)` on every split of the world's ranks, for each sample.
// `checked` sees each split layer that was compared.
void run_cases(
    const std::vector<Shape>& samples,
    const std::function<std::vector<LayerCase>(const Shape&, const std::vector<int>&)>& cases,
    const std::function<void(nn::Layer&)>& checked = {}) {
  for (const Shape& sample : samples) {
    for (const std::vector<int>& split : splits(sample.size() - 1)) {
      const comm::ProcessGrid& grid = grid_of(split);
      for (const LayerCase& c : cases(sample, split)) {
        std::unique_ptr<nn::Layer> layer = expect_matches_one_rank(c, split, grid);
        if (layer && checked) {
          checked(*layer);
        }
      }
    }
  }
}

}  // namespace

TEST_F(SpatialTest, HaloGatherMatchesGlobalPaddedWindow) {
  constexpr float kFill = -2.5F;  // outside [-1, 1), the inputs' range
  int compared = 0;
  int exchanged = 0;   // cases where this rank received rows from a neighbour
  int overlapped = 0;  // cases where this rank's halo comes in two halves (Halo::overlaps)
  for (const Shape& sample : {kRoomy3, kTight3, kRoomy2, kTight2}) {
    const size_t nd = sample.size() - 1;
    const Shape shape = nn::batch_shape(kBatch, sample);
    const std::vector<float> x = random_values(numel(shape), 11);
    for (const std::vector<int>& split : splits(nd)) {
      const comm::ProcessGrid& grid = grid_of(split);
      const nn::BuildContext context(grid);
      const GridPlace& place = grid.place();
      const Layout input = nn::spatial_input_layout(sample, place);
      const Box own = rank_block(sample, split, place);
      if (!all_ranks(nn::batch_shape(kBatch, input.local_shape(place)) == own.count)) {
        ADD_FAILURE() << to_string(sample) << ", " << split_text(split) << ": local input "
                      << to_string(input.local_shape(place));
        continue;
      }
      const Tensor x_local = Tensor::from_host("x", own.count, box_of(x, shape, own));
      for (const WindowConfig& c : kConfigs) {
        const std::string what =
            fmt::format("{} {}, {}", to_string(sample), config_text(c), split_text(split));
        std::vector<nn::WindowAxis> axes;
        Box window{{0, 0}, {kBatch, sample[0]}};  // global rows, padding included
        for (size_t d = 0; d < nd; ++d) {
          nn::WindowAxis a;
          a.in = sample[d + 1];
          a.out = window_out(a.in, c);
          a.kernel = c.kernel;
          a.stride = c.stride;
          a.pad = c.pad;
          a.parts = split[d];
          axes.push_back(a);
          const Range o =
              block_range(a.out, a.parts, place.coord_of(nn::spatial_axis(static_cast<int>(d))));
          const Index begin = o.offset * c.stride - c.pad;
          window.offset.push_back(begin);
          window.count.push_back((o.offset + o.count - 1) * c.stride - c.pad + c.kernel - begin);
        }
        const std::string why = refusal(sample, c, split);
        if (!why.empty()) {
          expect_refused([&] { nn::Halo("halo", input, axes, context); }, why, what);
          continue;
        }
        std::unique_ptr<nn::Halo> halo;
        std::string error;
        try {
          halo = std::make_unique<nn::Halo>("halo", input, axes, context);
        } catch (const Error& e) {
          error = e.message();
        }
        if (!all_ranks(halo != nullptr)) {
          ADD_FAILURE() << what << ": refused: " << error;
          continue;
        }
        const Shape window_sample(window.count.begin() + 1, window.count.end());
        if (!all_ranks(halo->window() == window_sample)) {
          ADD_FAILURE() << what << ": window " << to_string(halo->window()) << ", expected "
                        << to_string(window_sample);
          continue;
        }
        ++compared;
        exchanged += halo->exchanges() ? 1 : 0;
        // The global index of window element i, or -1 in the padding.
        auto global_of = [&](const Shape& i) {
          Shape g = i;
          for (size_t d = 2; d < g.size(); ++d) {
            g[d] += window.offset[d];
            if (g[d] < 0 || g[d] >= shape[d]) {
              return Index{-1};
            }
          }
          return flat(shape, g);
        };

        std::vector<float> gathered_want;
        for_each_index(window.count, [&](const Shape& i) {
          const Index g = global_of(i);
          gathered_want.push_back(g < 0 ? kFill : x[static_cast<size_t>(g)]);
        });
        expect_same(halo->gather(x_local, kFill).to_host(), gathered_want, what + ": gather");

        // Scatter, the adjoint: every rank's w added at its window's global rows, then this
        // rank's block of the sum.
        const std::vector<float> w =
            random_values(numel(window.count), 100 + static_cast<std::uint64_t>(world_rank()));
        const std::vector<float> dx =
            halo->scatter(Tensor::from_host("w", window.count, w)).to_host();
        std::vector<float> added(static_cast<size_t>(numel(shape)), 0.0F);
        size_t k = 0;
        for_each_index(window.count, [&](const Shape& i) {
          const Index g = global_of(i);
          if (g >= 0) {
            added[static_cast<size_t>(g)] += w[k];
          }
          ++k;
        });
        const std::vector<float> scattered_want = box_of(summed(added), shape, own);
        EXPECT_EQ(dx.size(), scattered_want.size()) << what;
        int wrong = 0;
        for (size_t j = 0; j < std::min(dx.size(), scattered_want.size()); ++j) {
          const double tol = 1e-6 * std::max(1.0, std::fabs(double{scattered_want[j]}));
          if (!(std::fabs(double{dx[j]} - double{scattered_want[j]}) <= tol) && ++wrong <= 3) {
            ADD_FAILURE() << what << ": scatter element " << j << " is " << dx[j] << ", expected "
                          << scattered_want[j];
          }
        }
        EXPECT_EQ(wrong, 0) << what << ": scatter elements that differ, of " << dx.size();

        // The same in two halves (begin_*, finish_*), where this rank's halo allows it: the same
        // messages as gather and scatter, so a rank that cannot (its window is not its block plus
        // halo rows) answers with those.
        const bool halves = halo->overlaps();
        overlapped += halves ? 1 : 0;
        const Tensor w_tensor = Tensor::from_host("w", window.count, w);
        const Tensor gathered = halves ? halo->finish_gather(halo->begin_gather(x_local, kFill))
                                       : halo->gather(x_local, kFill);
        const Tensor scattered =
            halves ? halo->finish_scatter(halo->begin_scatter(w_tensor)) : halo->scatter(w_tensor);
        if (halves) {
          expect_same(gathered.to_host(), gathered_want, what + ": begin/finish_gather");
          expect_same(scattered.to_host(), dx, what + ": begin/finish_scatter");
        }
      }
    }
  }
  // Not vacuous: most cases fit, and with more than one rank their halos move rows.
  EXPECT_GT(compared, 0);
  if (world_size() > 1) {
    EXPECT_GT(exchanged, 0);
    EXPECT_GT(overlapped, 0);
  }
}

TEST_F(SpatialTest, ConvMatchesOneRank) {
  // Layers that computed their interior while the halo travelled (oneDNN: ConvNd's pieces).
  int overlapped = 0;
  auto count_overlapped = [&](nn::Layer& layer) {
    overlapped += dynamic_cast<nn::ConvNd&>(layer).overlaps_halo(kBatch) ? 1 : 0;
  };
  for (const nn::ConvBackend backend : {nn::ConvBackend::automatic, nn::ConvBackend::im2col}) {
    run_cases(
        {kRoomy3, kTight3, kRoomy2, kTight2, kWide3},
        [&](const Shape& sample, const std::vector<int>& split) {
          std::vector<LayerCase> cases;
          for (const WindowConfig& w : kConfigs) {
            const Index out = sample[0] > 8 ? 16 : 3;
            const nn::ConvOptions o{out, {w.kernel}, {w.stride}, {w.pad}, true, backend};
            LayerCase c;
            c.what = fmt::format("conv {} ({}) on {}", config_text(w), nn::backend_name(backend),
                                 to_string(sample));
            c.sample = sample;
            c.make = [sample, o](nn::BuildContext context) -> std::unique_ptr<nn::Layer> {
              if (sample.size() == 4) {
                return std::make_unique<nn::Conv3d>("conv", sample, o, std::move(context));
              }
              return std::make_unique<nn::Conv2d>("conv", sample, o, std::move(context));
            };
            c.refused = refusal(sample, w, split);
            cases.push_back(std::move(c));
          }
          return cases;
        },
        count_overlapped);
  }
  if (world_size() > 1 && kernels::dnnl_available()) {
    EXPECT_GT(overlapped, 0) << "no split layer overlapped its halo exchange";
  }
}

TEST_F(SpatialTest, PoolingMatchesOneRank) {
  run_cases({kRoomy3, kTight3}, [](const Shape& sample, const std::vector<int>& split) {
    std::vector<LayerCase> cases;
    for (const WindowConfig& w :
         {WindowConfig{2, 2, 0}, WindowConfig{3, 2, 1}, WindowConfig{3, 1, 1}}) {
      const bool average = w.stride == 1;  // max k2 s2, max k3 s2 p1, average k3 s1 p1
      const nn::PoolOptions o{{w.kernel}, {w.stride}, {w.pad}};
      LayerCase c;
      c.what = fmt::format("{} {} on {}", average ? "avgpool3d" : "maxpool3d", config_text(w),
                           to_string(sample));
      c.sample = sample;
      c.make = [sample, o, average](nn::BuildContext context) -> std::unique_ptr<nn::Layer> {
        if (average) {
          return std::make_unique<nn::AvgPool3d>("pool", sample, o, std::move(context));
        }
        return std::make_unique<nn::MaxPool3d>("pool", sample, o, std::move(context));
      };
      c.refused = refusal(sample, w, split);
      cases.push_back(std::move(c));
    }
    return cases;
  });
}

TEST_F(SpatialTest, BatchNormMatchesOneRank) {
  run_cases({kRoomy3, kTight3}, [](const Shape& sample, const std::vector<int>& /*split*/) {
    LayerCase c;
    c.what = "batchnorm3d (training) on " + to_string(sample);
    c.sample = sample;
    c.make = [sample](nn::BuildContext context) -> std::unique_ptr<nn::Layer> {
      return std::make_unique<nn::BatchNorm3d>("bn", sample, nn::BatchNormOptions{},
                                               std::move(context));
    };
    c.options = nn::ForwardOptions{true, 0, 0, 0};
    return std::vector<LayerCase>{c};
  });
}

TEST_F(SpatialTest, DropoutMaskIsTheWholeSamplesBlock) {
  for (const Shape& sample : {kRoomy3, kRoomy2}) {
    // The one-rank layer drops about p of the elements: the comparison below is not vacuous.
    nn::Dropout one("drop", sample, nn::DropoutOptions{0.3F});
    const Shape shape = nn::batch_shape(kBatch, sample);
    const std::vector<float> y =
        one.forward(Tensor::from_host("x", shape, random_values(numel(shape), 11)),
                    nn::ForwardOptions{true, 7, 3, 0})
            .output.to_host();
    const auto dropped = static_cast<double>(std::count(y.begin(), y.end(), 0.0F));
    EXPECT_NEAR(dropped / static_cast<double>(y.size()), 0.3, 0.05) << to_string(sample);
  }
  run_cases({kRoomy3, kTight3, kRoomy2, kTight2},
            [](const Shape& sample, const std::vector<int>& /*split*/) {
              LayerCase c;
              c.what = "dropout p 0.3 (seed 7, step 3) on " + to_string(sample);
              c.sample = sample;
              c.make = [sample](nn::BuildContext context) -> std::unique_ptr<nn::Layer> {
                return std::make_unique<nn::Dropout>("drop", sample, nn::DropoutOptions{0.3F},
                                                     std::move(context));
              };
              c.options = nn::ForwardOptions{true, 7, 3, 0};
              c.exact = true;
              return std::vector<LayerCase>{c};
            });
}

TEST_F(SpatialTest, GlobalAvgPoolIsWholeOnEveryRank) {
  for (const Shape& sample : {kRoomy3, kTight3, kRoomy2, kTight2}) {
    const Shape shape = nn::batch_shape(kBatch, sample);
    const Shape out_shape{kBatch, sample[0]};
    const std::vector<float> x = random_values(numel(shape), 11);
    const std::vector<float> dy = random_values(numel(out_shape), 12);
    nn::GlobalAvgPool one("gap", sample);
    nn::ForwardResult r1 = one.forward(Tensor::from_host("x", shape, x), {});
    const std::vector<float> y1 = r1.output.to_host();
    const std::vector<float> dx1 =
        one.backward(Tensor::from_host("dy", out_shape, dy), std::move(r1.ctx)).to_host();
    for (const std::vector<int>& split : splits(sample.size() - 1)) {
      const std::string what = "global_avgpool on " + to_string(sample) + ", " + split_text(split);
      const comm::ProcessGrid& grid = grid_of(split);
      nn::GlobalAvgPool layer("gap", sample, {}, nn::BuildContext(grid));
      const Layout out = layer.place_input(nn::spatial_input_layout(sample, grid.place()));
      EXPECT_TRUE(out.is_replicated()) << what << ": output " << out.to_string();
      const Box own = rank_block(sample, split, grid.place());
      nn::ForwardResult r =
          layer.forward(Tensor::from_host("x", own.count, box_of(x, shape, own)), {});
      if (!all_ranks(r.output.shape() == out_shape)) {
        ADD_FAILURE() << what << ": output " << to_string(r.output.shape());
        continue;
      }
      EXPECT_LE(relative_difference(r.output.to_host(), y1), 1e-5) << what << ": output";
      const std::vector<float> dx =
          layer.backward(Tensor::from_host("dy", out_shape, dy), std::move(r.ctx)).to_host();
      EXPECT_LE(relative_difference(dx, box_of(dx1, shape, own)), 1e-5) << what << ": input grad";
    }
  }
}

TEST_F(SpatialTest, KernelWiderThanATileIsRefused) {
  const int n = world_size();
  if (n < 3) {
    GTEST_SKIP() << "a window reaches past a neighbour's block only with 3 ranks or more along a "
                    "dimension (this suite runs at 3 and 4 too)";
  }
  // D = n + 1 over n ranks: blocks 2, 1, ..., 1. Kernel 5 pad 2: the first rank's outputs [0, 2)
  // read planes [0, 4), past its neighbour's block [2, 3).
  const Shape sample{2, n + 1, 6, 7};
  const std::vector<int> split{n, 1, 1};
  const comm::ProcessGrid& grid = grid_of(split);
  const Layout input = nn::spatial_input_layout(sample, grid.place());
  const WindowConfig wide{5, 1, 2};
  ASSERT_EQ(refusal(sample, wide, split), "wider than a tile");
  nn::Conv3d conv("conv", sample, nn::ConvOptions{2, {5}, {1}, {2}}, nn::BuildContext(grid));
  expect_refused([&] { conv.place_input(input); }, "wider than a tile", "conv3d kernel 5 pad 2");
  nn::MaxPool3d pool("pool", sample, nn::PoolOptions{{5}, {1}, {2}}, nn::BuildContext(grid));
  expect_refused([&] { pool.place_input(input); }, "wider than a tile", "maxpool3d kernel 5 pad 2");
  // The same split takes a kernel of 3, whose windows reach one plane into each neighbour.
  nn::Conv3d narrow("narrow", sample, nn::ConvOptions{2, {3}, {1}, {1}}, nn::BuildContext(grid));
  EXPECT_NO_THROW(narrow.place_input(input));
}
