// The max-pooling kernels' special paths against naive loops written here: the vectorised 2×2
// stride-2 forward, the interior/edge split of the general forward (with padding, overlapping
// windows and odd extents), the one-pass backward of non-overlapping windows (2-D and 3-D, with
// rows and columns that no window covers) and the scatter backward, on data with ties (the first
// maximum in row-major window order wins) and NaNs (a NaN wins, as in PyTorch).
#include "support/gradcheck.hpp"
#include "tessera/kernels/pooling.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace tessera;
using kernels::Dims3;
using kernels::PoolGeometry;
namespace tt = tessera::testing;

namespace {

PoolGeometry geometry(Index planes, Dims3 in, Dims3 kernel, Dims3 stride, Dims3 pad) {
  PoolGeometry g;
  g.planes = planes;
  g.in = in;
  g.kernel = kernel;
  g.stride = stride;
  g.pad = pad;
  g.out = {kernels::pool_output_extent(in.d, kernel.d, stride.d, pad.d),
           kernels::pool_output_extent(in.h, kernel.h, stride.h, pad.h),
           kernels::pool_output_extent(in.w, kernel.w, stride.w, pad.w)};
  return g;
}

/// Values in {0, 0.25, ..., 1.75} (many ties within a window), with `nans` NaNs spread over them.
std::vector<float> tied_values(Index n, std::uint64_t seed, Index nans) {
  std::vector<float> v = tt::random_values(n, seed, 0.0F, 2.0F);
  for (float& e : v) {
    e = std::floor(e * 4.0F) / 4.0F;
  }
  for (Index k = 0; k < nans; ++k) {
    v[static_cast<size_t>((k * 7919 + 13) % n)] = std::numeric_limits<float>::quiet_NaN();
  }
  return v;
}

/// Naive max pooling: y and the argmax position (in the input plane) per output, visiting each
/// window in row-major order, keeping the first maximum, a NaN winning over numbers.
struct NaiveMax {
  std::vector<float> y;
  std::vector<Index> arg;
};

NaiveMax naive_forward(const std::vector<float>& x, const PoolGeometry& g) {
  NaiveMax r;
  for (Index p = 0; p < g.planes; ++p)
    for (Index od = 0; od < g.out.d; ++od)
      for (Index oh = 0; oh < g.out.h; ++oh)
        for (Index ow = 0; ow < g.out.w; ++ow) {
          bool have = false;
          float best = 0.0F;
          Index at = -1;
          for (Index i = 0; i < g.kernel.d; ++i)
            for (Index j = 0; j < g.kernel.h; ++j)
              for (Index l = 0; l < g.kernel.w; ++l) {
                const Index d = od * g.stride.d - g.pad.d + i;
                const Index h = oh * g.stride.h - g.pad.h + j;
                const Index w = ow * g.stride.w - g.pad.w + l;
                if (d < 0 || d >= g.in.d || h < 0 || h >= g.in.h || w < 0 || w >= g.in.w) {
                  continue;
                }
                const Index pos = (d * g.in.h + h) * g.in.w + w;
                const float v = x[static_cast<size_t>(p * g.in.volume() + pos)];
                const bool take = !have || (!std::isnan(best) && (std::isnan(v) || v > best));
                if (take) {
                  best = v;
                  at = pos;
                  have = true;
                }
              }
          r.y.push_back(best);
          r.arg.push_back(at);
        }
  return r;
}

std::vector<float> naive_backward(const std::vector<float>& dy, const NaiveMax& m,
                                  const PoolGeometry& g) {
  std::vector<float> dx(static_cast<size_t>(g.planes * g.in.volume()), 0.0F);
  const Index per_plane = g.out.volume();
  for (size_t o = 0; o < dy.size(); ++o) {
    const Index plane = static_cast<Index>(o) / per_plane;
    dx[static_cast<size_t>(plane * g.in.volume() + m.arg[o])] += dy[o];
  }
  return dx;
}

/// Bitwise equality, so that NaN == NaN.
void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b,
                      const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int shown = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && shown++ < 10) {
      ADD_FAILURE() << what << "[" << i << "]: " << a[i] << " vs expected " << b[i];
    }
  }
}

void expect_matches_naive(const PoolGeometry& g, Index nans, const std::string& what) {
  SCOPED_TRACE(what);
  const Index in_size = g.planes * g.in.volume();
  const Index out_size = g.planes * g.out.volume();
  const std::vector<float> xv = tied_values(in_size, 3, nans);
  const Tensor x = Tensor::from_host("x", {in_size}, xv);
  const Tensor y("y", {out_size});
  const Tensor argmax("argmax", {out_size});
  kernels::max_pool_forward(x, y, argmax, g);
  const NaiveMax m = naive_forward(xv, g);
  expect_same_bits(y.to_host(), m.y, "y");
  std::vector<float> arg(m.arg.begin(), m.arg.end());
  EXPECT_EQ(argmax.to_host(), arg);

  const std::vector<float> dyv = tt::random_values(out_size, 4);
  const Tensor dy = Tensor::from_host("dy", {out_size}, dyv);
  const Tensor dx("dx", {in_size});
  dx.fill(5.0F);  // overwritten
  kernels::max_pool_backward(dy, argmax, dx, g);
  EXPECT_EQ(dx.to_host(), naive_backward(dyv, m, g));
}

}  // namespace

TEST(MaxPoolKernels, TwoByTwoStrideTwo) {
  // Even and odd extents (an odd row or column is in no window), widths below and above a vector.
  for (const Dims3 in :
       {Dims3{1, 28, 28}, Dims3{1, 7, 9}, Dims3{1, 14, 14}, Dims3{1, 3, 2}, Dims3{1, 5, 31}}) {
    const PoolGeometry g = geometry(6, in, {1, 2, 2}, {1, 2, 2}, {0, 0, 0});
    expect_matches_naive(g, 0, "2x2 " + std::to_string(in.h) + "x" + std::to_string(in.w));
    expect_matches_naive(g, 5,
                         "2x2 with NaNs " + std::to_string(in.h) + "x" + std::to_string(in.w));
  }
}

TEST(MaxPoolKernels, GeneralWindowsInteriorAndEdges) {
  struct Case {
    Dims3 in, kernel, stride, pad;
  };
  const Case cases[] = {
      {{1, 9, 11}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}},  // padded: edge windows on both sides
      {{1, 8, 10}, {1, 3, 3}, {1, 1, 1}, {0, 0, 0}},  // overlapping, no edges
      {{1, 7, 12}, {1, 2, 3}, {1, 1, 3}, {0, 1, 1}},  // per-dimension
      {{1, 6, 9}, {1, 3, 3}, {1, 3, 3}, {0, 0, 0}},   // non-overlapping 3x3
      {{1, 5, 4}, {1, 5, 4}, {1, 1, 1}, {0, 0, 0}},   // one window covers the plane
      {{1, 4, 3}, {1, 3, 3}, {1, 1, 2}, {0, 1, 2}},   // padding wider than the interior
      {{4, 5, 6}, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}},   // 3-D non-overlapping, odd extents
      {{5, 5, 7}, {3, 2, 3}, {2, 1, 2}, {1, 0, 1}},   // 3-D padded, overlapping
      {{3, 4, 4}, {1, 2, 2}, {1, 2, 2}, {0, 0, 0}},   // 3-D with a 2-D window
  };
  for (const Case& c : cases) {
    const PoolGeometry g = geometry(3, c.in, c.kernel, c.stride, c.pad);
    const std::string what = "in " + std::to_string(c.in.d) + "x" + std::to_string(c.in.h) + "x" +
                             std::to_string(c.in.w) + " kernel " + std::to_string(c.kernel.d) +
                             "x" + std::to_string(c.kernel.h) + "x" + std::to_string(c.kernel.w);
    expect_matches_naive(g, 0, what);
    expect_matches_naive(g, 4, what + " with NaNs");
  }
}
