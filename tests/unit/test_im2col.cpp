// im2col / col2im and the bias kernels: against the definitions written as naive loops here, a
// small unfolding computed by hand, the adjoint identity <im2col(x), c> = <x, col2im(c)>, the
// accumulation of col2im and bias_grad, sample sub-ranges, and exact error messages.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/bias.hpp"
#include "tessera/kernels/im2col.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

using namespace tessera;
using kernels::ConvGeometry;
namespace tt = tessera::testing;

namespace {

using A3 = std::array<Index, 3>;

// col(r, b·R + (t - t0)·Wo + ow) by the definition, for samples [first, first + count) of x
// (N, C, D, H, W) and output rows t = od·Ho + oh in [t0, t1) (all rows when t1 < 0).
std::vector<float> naive_im2col(const std::vector<float>& x, const ConvGeometry& g, Index first,
                                Index count, Index t0 = 0, Index t1 = -1) {
  const Index kd = g.kernel[0], kh = g.kernel[1], kw = g.kernel[2];
  const Index dd = g.output[0], hh = g.output[1], ww = g.output[2];
  if (t1 < 0) {
    t1 = dd * hh;
  }
  const Index per_sample = (t1 - t0) * ww;
  const Index rows = g.channels * kd * kh * kw;
  std::vector<float> col(static_cast<size_t>(rows * count * per_sample), -99.0F);
  for (Index b = 0; b < count; ++b) {
    for (Index c = 0; c < g.channels; ++c) {
      for (Index i = 0; i < kd; ++i) {
        for (Index j = 0; j < kh; ++j) {
          for (Index l = 0; l < kw; ++l) {
            const Index r = ((c * kd + i) * kh + j) * kw + l;
            for (Index t = t0; t < t1; ++t) {
              const Index od = t / hh;
              const Index oh = t % hh;
              for (Index ow = 0; ow < ww; ++ow) {
                const Index z = od * g.stride[0] - g.pad[0] + i;
                const Index y = oh * g.stride[1] - g.pad[1] + j;
                const Index v = ow * g.stride[2] - g.pad[2] + l;
                float value = 0.0F;
                if (z >= 0 && z < g.input[0] && y >= 0 && y < g.input[1] && v >= 0 &&
                    v < g.input[2]) {
                  value = x[static_cast<size_t>(
                      ((((first + b) * g.channels + c) * g.input[0] + z) * g.input[1] + y) *
                          g.input[2] +
                      v)];
                }
                col[static_cast<size_t>(r * count * per_sample + b * per_sample + (t - t0) * ww +
                                        ow)] = value;
              }
            }
          }
        }
      }
    }
  }
  return col;
}

struct Case {
  Index c;
  A3 in, k, s, p;
};

const Case kCases[] = {
    {1, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}},  // 2-D, no padding
    {3, {1, 7, 6}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}},  // 2-D, same padding
    {2, {1, 9, 8}, {1, 3, 2}, {1, 2, 3}, {0, 1, 2}},  // 2-D, strides and pads per dim
    {2, {1, 5, 5}, {1, 1, 1}, {1, 2, 2}, {0, 0, 0}},  // 1x1 kernel, stride 2
    {2, {1, 4, 4}, {1, 5, 5}, {1, 1, 1}, {0, 2, 2}},  // kernel larger than the input
    {1, {1, 2, 3}, {1, 5, 5}, {1, 1, 1}, {0, 2, 2}},  // padding wider than the input
    {2, {1, 6, 6}, {1, 3, 3}, {1, 2, 1}, {0, 1, 1}},  // stride 2 in H only
    {2, {4, 5, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}},  // 3-D
    {3, {5, 6, 7}, {2, 3, 2}, {2, 1, 3}, {1, 0, 1}},  // 3-D, mixed
    {2, {5, 4, 4}, {3, 3, 3}, {2, 1, 1}, {1, 1, 1}},  // 3-D, stride 2 in depth only
};

}  // namespace

TEST(ConvGeometry, OutputExtents) {
  const ConvGeometry g = ConvGeometry::make(3, {1, 28, 28}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1});
  EXPECT_EQ(g.output, (A3{1, 28, 28}));
  EXPECT_EQ(g.col_rows(), 27);
  EXPECT_EQ(g.output_volume(), 784);
  EXPECT_EQ(g.sample_size(), 3 * 784);
  EXPECT_EQ(ConvGeometry::make(1, {1, 7, 8}, {1, 3, 3}, {1, 2, 2}, {0, 1, 0}).output,
            (A3{1, 4, 3}));  // (7+2-3)/2+1 = 4, (8-3)/2+1 = 3
  EXPECT_EQ(ConvGeometry::make(1, {5, 2, 2}, {2, 3, 3}, {1, 1, 1}, {0, 0, 0}).output,
            (A3{4, 0, 0}));  // kernel larger than the input: extent 0
  EXPECT_EQ(ConvGeometry::make(1, {1, 2, 2}, {1, 5, 5}, {1, 2, 2}, {0, 0, 0}).output,
            (A3{1, -1, -1}));  // floor((2 - 5) / 2) + 1
}

TEST(Im2col, HandComputedTwoByTwoKernel) {
  // x: 1×1×3×3 = [[1,2,3],[4,5,6],[7,8,9]], 2×2 kernel, stride 1, no padding: 4 rows (kernel
  // offsets (0,0), (0,1), (1,0), (1,1)) by 4 output positions.
  const Tensor x = Tensor::from_host("x", {1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  const ConvGeometry g = ConvGeometry::make(1, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0});
  const Tensor col("col", {4, 4});
  kernels::im2col(x, g, 0, 1, col);
  EXPECT_EQ(col.to_host(), (std::vector<float>{1, 2, 4, 5,  //
                                               2, 3, 5, 6,  //
                                               4, 5, 7, 8,  //
                                               5, 6, 8, 9}));
  // Padding 1, stride 2: 2×2 outputs at padded corners (0,0), (0,2), (2,0), (2,2).
  const ConvGeometry gp = ConvGeometry::make(1, {1, 3, 3}, {1, 2, 2}, {1, 2, 2}, {0, 1, 1});
  ASSERT_EQ(gp.output, (A3{1, 2, 2}));
  kernels::im2col(x, gp, 0, 1, col);
  EXPECT_EQ(col.to_host(), (std::vector<float>{0, 0, 0, 5,  //
                                               0, 0, 4, 6,  //
                                               0, 2, 0, 8,  //
                                               1, 3, 7, 9}));
}

TEST(Im2col, MatchesDefinitionIn2dAnd3d) {
  for (const Case& cs : kCases) {
    const ConvGeometry g = ConvGeometry::make(cs.c, cs.in, cs.k, cs.s, cs.p);
    ASSERT_GE(g.output_volume(), 1);
    const Index n = 5;
    const Tensor x = tt::random_tensor("x", {n, g.sample_size()}, 11);
    const std::vector<float> xv = x.to_host();
    for (const auto& [first, count] : {std::pair<Index, Index>{0, n}, {2, 3}, {4, 1}}) {
      // A scratch buffer larger than needed, as the layers keep one: the tail is not touched.
      const Index used = g.col_rows() * count * g.output_volume();
      const Tensor col("col", {used + 7});
      col.fill(-5.0F);
      kernels::im2col(x, g, first, count, col);
      std::vector<float> got = col.to_host();
      for (Index i = used; i < used + 7; ++i) {
        EXPECT_EQ(got[static_cast<size_t>(i)], -5.0F);
      }
      got.resize(static_cast<size_t>(used));
      EXPECT_EQ(got, naive_im2col(xv, g, first, count))
          << "C " << cs.c << " in " << cs.in[0] << "x" << cs.in[1] << "x" << cs.in[2]
          << " samples [" << first << ", " << first + count << ")";
    }
  }
}

TEST(Im2col, OutputRowRangesMatchDefinition) {
  for (const Case& cs : kCases) {
    const ConvGeometry g = ConvGeometry::make(cs.c, cs.in, cs.k, cs.s, cs.p);
    const Index n = 3;
    const Index total = g.output_rows();
    const Tensor x = tt::random_tensor("x", {n, g.sample_size()}, 12);
    const std::vector<float> xv = x.to_host();
    // First row only, a middle block crossing output planes (3-D), the last row, everything.
    const Index mid = std::max<Index>(total / 3 + 1, total - total / 4);
    const kernels::OutputRows ranges[] = {{0, 1}, {total / 3, mid}, {total - 1, total}, {0, total}};
    for (const kernels::OutputRows& rows : ranges) {
      const Index used = g.col_rows() * 2 * rows.size() * g.output[2];
      const Tensor col("col", {used});
      kernels::im2col(x, g, 1, 2, rows, col);
      EXPECT_EQ(col.to_host(), naive_im2col(xv, g, 1, 2, rows.begin, rows.end))
          << "C " << cs.c << " in " << cs.in[0] << "x" << cs.in[1] << "x" << cs.in[2] << " rows ["
          << rows.begin << ", " << rows.end << ")";
    }
  }
}

TEST(Col2im, IsTheAdjointAndAccumulates) {
  for (const Case& cs : kCases) {
    const ConvGeometry g = ConvGeometry::make(cs.c, cs.in, cs.k, cs.s, cs.p);
    const Index total = g.output_rows();
    for (const kernels::OutputRows rows :
         {kernels::OutputRows{0, total}, kernels::OutputRows{total / 2, total}}) {
      const Index n = 4, first = 1, count = 2;
      const Index used = g.col_rows() * count * rows.size() * g.output[2];
      const Tensor c = tt::random_tensor("c", {used}, 21);
      const std::vector<float> cv = c.to_host();

      // Expected: the start value plus, for every column entry, its value added onto the input
      // element it was gathered from — found by unfolding the one-hot basis of x.
      const Tensor dx = tt::random_tensor("dx", {n, g.sample_size()}, 22);
      std::vector<double> expected(static_cast<size_t>(dx.numel()));
      const std::vector<float> start = dx.to_host();
      for (size_t i = 0; i < expected.size(); ++i) {
        expected[i] = static_cast<double>(start[i]);
      }
      std::vector<float> basis(static_cast<size_t>(dx.numel()), 0.0F);
      for (size_t e = 0; e < basis.size(); ++e) {
        basis[e] = 1.0F;
        const std::vector<float> col_e = naive_im2col(basis, g, first, count, rows.begin, rows.end);
        for (size_t q = 0; q < col_e.size(); ++q) {
          expected[e] += static_cast<double>(col_e[q]) * static_cast<double>(cv[q]);
        }
        basis[e] = 0.0F;
      }
      kernels::col2im(c, g, first, count, rows, dx);
      const std::vector<float> got = dx.to_host();
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(static_cast<double>(got[i]), expected[i], 1e-5)
            << "element " << i << ", rows [" << rows.begin << ", " << rows.end << ")";
      }
    }
  }
}

TEST(Im2col, BadArgumentsThrow) {
  const ConvGeometry g = ConvGeometry::make(2, {1, 4, 4}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1});
  const Tensor x("x", {2, 2, 4, 4});
  const Tensor small("cols", {18, 15});
  try {
    kernels::im2col(x, g, 0, 1, small);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(
                  "im2col: column buffer 'cols' of shape (18, 15) is smaller than (18, 16)", 0),
              0u)
        << e.what();
  }
  const Tensor col("col", {18, 48});
  try {
    kernels::im2col(x, g, 1, 2, col);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("im2col: input 'x' of shape (2, 2, 4, 4) has fewer than "
                                          "3 samples of 32 elements (C = 2, D·H·W = 16)",
                                          0),
              0u)
        << e.what();
  }
}

TEST(Im2col, BadRowRangeThrows) {
  const ConvGeometry g = ConvGeometry::make(2, {1, 4, 4}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1});
  const Tensor x("x", {2, 2, 4, 4});
  const Tensor col("col", {18, 64});
  try {
    kernels::im2col(x, g, 0, 1, kernels::OutputRows{2, 5}, col);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(
                  "im2col: output rows [2, 5) are not a non-empty part of the 4 = 1·4 rows", 0),
              0u)
        << e.what();
  }
  EXPECT_THROW(kernels::col2im(col, g, 0, 1, kernels::OutputRows{3, 3}, x), Error);
}

TEST(Bias, AddMatchesLoopsForImagesAndRows) {
  // (N, C, H, W)
  const Index n = 3, c = 5, s = 37;
  const Tensor y = tt::random_tensor("y", {n, c, s, 1}, 1);
  const Tensor b = tt::random_tensor("b", {c}, 2);
  const std::vector<float> y0 = y.to_host();
  const std::vector<float> bv = b.to_host();
  kernels::add_bias(y, b);
  std::vector<float> expected = y0;
  for (Index i = 0; i < n * c * s; ++i) {
    expected[static_cast<size_t>(i)] += bv[static_cast<size_t>((i / s) % c)];
  }
  tt::expect_near(y.to_host(), expected, 0.0, "add_bias NCHW");

  // Only samples [1, 2).
  y.copy_from_host(y0);
  kernels::add_bias(y, b, 1, 1);
  expected = y0;
  for (Index i = c * s; i < 2 * c * s; ++i) {
    expected[static_cast<size_t>(i)] += bv[static_cast<size_t>((i / s) % c)];
  }
  tt::expect_near(y.to_host(), expected, 0.0, "add_bias samples [1, 2)");

  // (N, F)
  const Tensor z = tt::random_tensor("z", {4, 70}, 3);
  const Tensor bf = tt::random_tensor("bf", {70}, 4);
  const std::vector<float> z0 = z.to_host();
  const std::vector<float> bfv = bf.to_host();
  kernels::add_bias(z, bf);
  std::vector<float> ez = z0;
  for (size_t i = 0; i < ez.size(); ++i) {
    ez[i] += bfv[i % 70];
  }
  tt::expect_near(z.to_host(), ez, 0.0, "add_bias (N, F)");
}

TEST(Bias, GradSumsOverBatchAndSpaceAndAccumulates) {
  for (const Shape& shape : {Shape{3, 5, 7, 11}, Shape{130, 70}, Shape{2, 4, 3, 3, 3}}) {
    const Tensor dy = tt::random_tensor("dy", shape, 5);
    const Index c = shape[1];
    const Tensor db = tt::random_tensor("db", {c}, 6);
    const std::vector<float> db0 = db.to_host();
    const std::vector<float> g = dy.to_host();
    const Index s = dy.numel() / (shape[0] * c);
    kernels::bias_grad(dy, db);
    std::vector<double> expected(db0.begin(), db0.end());
    for (Index i = 0; i < dy.numel(); ++i) {
      expected[static_cast<size_t>((i / s) % c)] += static_cast<double>(g[static_cast<size_t>(i)]);
    }
    const std::vector<float> got = db.to_host();
    for (Index k = 0; k < c; ++k) {
      EXPECT_NEAR(static_cast<double>(got[static_cast<size_t>(k)]),
                  expected[static_cast<size_t>(k)], 1e-4)
          << to_string(shape) << " channel " << k;
    }
  }
  // Samples [1, 3) of (4, 2, 2): db += Σ of those two samples only.
  const Tensor dy =
      Tensor::from_host("dy", {4, 2, 2}, {1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9});
  const Tensor db = Tensor::from_host("db", {2}, {10, 20});
  kernels::bias_grad(dy, db, 1, 2);
  EXPECT_EQ(db.to_host(), (std::vector<float>{10 + 3 + 11, 20 + 7 + 15}));
}

TEST(Bias, BadShapesThrow) {
  const Tensor y("y", {2, 3, 4});
  const Tensor b("b", {4});
  try {
    kernels::add_bias(y, b);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(
        std::string(e.what()).rfind(
            "add_bias: bias 'b' has shape (4,), expected (3,) for output of shape (2, 3, 4)", 0),
        0u)
        << e.what();
  }
  EXPECT_THROW(kernels::bias_grad(y, Tensor("db", {3}), 1, 2), Error);
  EXPECT_THROW(kernels::add_bias(Tensor("v", {3}), Tensor("b3", {3})), Error);
}
