// Conv2d and Conv3d: forward and backward against direct convolution loops written here (in
// double), small cases computed by hand, batches that span several im2col chunks, accumulation of
// the parameter gradients, finite-difference gradient checks of input, weight and bias (strides,
// padding, per-dimension options), and exact error messages for bad options and shapes. The
// comparisons with the direct loops and the gradient checks run with every host backend the build
// has (im2col; oneDNN when built with it); test_conv_dnnl.cpp compares the two backends.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/conv_dnnl.hpp"
#include "tessera/nn/conv.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace tessera;
using nn::Conv2d;
using nn::Conv3d;
using nn::ConvOptions;
namespace tt = tessera::testing;

namespace {

using A3 = std::array<Index, 3>;

/// The host backends of this build: im2col, and oneDNN when available.
std::vector<nn::ConvBackend> backends() {
  std::vector<nn::ConvBackend> b{nn::ConvBackend::im2col};
  if (kernels::dnnl_available()) {
    b.push_back(nn::ConvBackend::dnnl);
  }
  return b;
}

/// Options with the given backend.
ConvOptions with(ConvOptions o, nn::ConvBackend backend) {
  o.backend = backend;
  return o;
}

/// A direct 3-D convolution (2-D: depth 1) and its gradients, summing in double.
struct Direct {
  Index n, c, o;
  A3 in, k, s, p, out;

  Direct(Index n_, Index c_, Index o_, A3 in_, A3 k_, A3 s_, A3 p_)
      : n(n_), c(c_), o(o_), in(in_), k(k_), s(s_), p(p_) {
    for (size_t d = 0; d < 3; ++d) {
      out[d] = (in[d] + 2 * p[d] - k[d]) / s[d] + 1;
    }
  }
  Index xi(Index b, Index ch, Index z, Index y, Index v) const {
    return (((b * c + ch) * in[0] + z) * in[1] + y) * in[2] + v;
  }
  Index wi(Index oc, Index ch, Index i, Index j, Index l) const {
    return (((oc * c + ch) * k[0] + i) * k[1] + j) * k[2] + l;
  }
  Index yi(Index b, Index oc, Index od, Index oh, Index ow) const {
    return (((b * o + oc) * out[0] + od) * out[1] + oh) * out[2] + ow;
  }
  Index y_size() const { return n * o * out[0] * out[1] * out[2]; }

  /// Calls f(x index, w index, y index) for every product term of the convolution.
  void for_each_term(const std::function<void(Index, Index, Index)>& f) const {
    for (Index b = 0; b < n; ++b)
      for (Index oc = 0; oc < o; ++oc)
        for (Index od = 0; od < out[0]; ++od)
          for (Index oh = 0; oh < out[1]; ++oh)
            for (Index ow = 0; ow < out[2]; ++ow)
              for (Index ch = 0; ch < c; ++ch)
                for (Index i = 0; i < k[0]; ++i)
                  for (Index j = 0; j < k[1]; ++j)
                    for (Index l = 0; l < k[2]; ++l) {
                      const Index z = od * s[0] - p[0] + i;
                      const Index y = oh * s[1] - p[1] + j;
                      const Index v = ow * s[2] - p[2] + l;
                      if (z < 0 || z >= in[0] || y < 0 || y >= in[1] || v < 0 || v >= in[2]) {
                        continue;
                      }
                      f(xi(b, ch, z, y, v), wi(oc, ch, i, j, l), yi(b, oc, od, oh, ow));
                    }
  }

  std::vector<float> forward(const std::vector<float>& x, const std::vector<float>& w,
                             const std::vector<float>& bias) const {
    std::vector<double> y(static_cast<size_t>(y_size()), 0.0);
    for_each_term([&](Index a, Index b, Index q) {
      y[static_cast<size_t>(q)] += static_cast<double>(x[static_cast<size_t>(a)]) *
                                   static_cast<double>(w[static_cast<size_t>(b)]);
    });
    const Index plane = out[0] * out[1] * out[2];
    std::vector<float> r(y.size());
    for (size_t q = 0; q < y.size(); ++q) {
      const double bv = bias.empty()
                            ? 0.0
                            : static_cast<double>(
                                  bias[(q / static_cast<size_t>(plane)) % static_cast<size_t>(o)]);
      r[q] = static_cast<float>(y[q] + bv);
    }
    return r;
  }

  /// (dx, dw, db) for output gradient dy.
  std::array<std::vector<float>, 3> backward(const std::vector<float>& x,
                                             const std::vector<float>& w,
                                             const std::vector<float>& dy) const {
    std::vector<double> dx(x.size(), 0.0), dw(w.size(), 0.0), db(static_cast<size_t>(o), 0.0);
    for_each_term([&](Index a, Index b, Index q) {
      const auto g = static_cast<double>(dy[static_cast<size_t>(q)]);
      dx[static_cast<size_t>(a)] += g * static_cast<double>(w[static_cast<size_t>(b)]);
      dw[static_cast<size_t>(b)] += g * static_cast<double>(x[static_cast<size_t>(a)]);
    });
    const Index plane = out[0] * out[1] * out[2];
    for (size_t q = 0; q < dy.size(); ++q) {
      db[(q / static_cast<size_t>(plane)) % static_cast<size_t>(o)] += static_cast<double>(dy[q]);
    }
    auto to_float = [](const std::vector<double>& v) {
      return std::vector<float>(v.begin(), v.end());
    };
    return {to_float(dx), to_float(dw), to_float(db)};
  }
};

/// Builds the layer for `d` (2-D when d.in[0] == 1 and d.k[0] == 1 and `two_d`), runs forward and
/// backward on random data and compares with the direct loops, with each backend.
void expect_matches_direct(const Direct& d, bool two_d, bool bias, nn::ConvBackend backend);
void expect_matches_direct(const Direct& d, bool two_d, bool bias) {
  for (const nn::ConvBackend backend : backends()) {
    SCOPED_TRACE(std::string("backend ") + nn::backend_name(backend));
    expect_matches_direct(d, two_d, bias, backend);
  }
}

void expect_matches_direct(const Direct& d, bool two_d, bool bias, nn::ConvBackend backend) {
  ConvOptions opt;
  opt.out = d.o;
  opt.bias = bias;
  opt.backend = backend;
  std::unique_ptr<nn::ConvNd> layer;
  Shape sample;
  if (two_d) {
    opt.kernel = {d.k[1], d.k[2]};
    opt.stride = {d.s[1], d.s[2]};
    opt.pad = {d.p[1], d.p[2]};
    sample = {d.c, d.in[1], d.in[2]};
    layer = std::make_unique<Conv2d>("conv", sample, opt);
  } else {
    opt.kernel = {d.k[0], d.k[1], d.k[2]};
    opt.stride = {d.s[0], d.s[1], d.s[2]};
    opt.pad = {d.p[0], d.p[1], d.p[2]};
    sample = {d.c, d.in[0], d.in[1], d.in[2]};
    layer = std::make_unique<Conv3d>("conv", sample, opt);
  }
  ASSERT_EQ(layer->backend(), backend);
  layer->initialize(17);
  Shape xs = nn::batch_shape(d.n, sample);
  const Tensor x = tt::random_tensor("x", xs, 31);
  const std::vector<float> xv = x.to_host();
  const std::vector<float> wv = layer->weight().value.to_host();
  const std::vector<float> bv = bias ? layer->bias().value.to_host() : std::vector<float>{};

  nn::ForwardResult r = layer->forward(x, {});
  const Shape out_sample =
      two_d ? Shape{d.o, d.out[1], d.out[2]} : Shape{d.o, d.out[0], d.out[1], d.out[2]};
  ASSERT_EQ(r.output.shape(), nn::batch_shape(d.n, out_sample));
  ASSERT_EQ(layer->output_shape(sample), out_sample);
  tt::expect_near(r.output.to_host(), d.forward(xv, wv, bv), 1e-4, "y");

  const Tensor dy = tt::random_tensor("dy", r.output.shape(), 32);
  const auto expected = d.backward(xv, wv, dy.to_host());
  layer->zero_grad();
  const Tensor dx = layer->backward(dy, std::move(r.ctx));
  ASSERT_EQ(dx.shape(), x.shape());
  tt::expect_near(dx.to_host(), expected[0], 1e-4, "dx");
  tt::expect_near(layer->weight().grad.to_host(), expected[1], 1e-3, "dW");
  if (bias) {
    tt::expect_near(layer->bias().grad.to_host(), expected[2], 1e-3, "db");
  }
}

}  // namespace

TEST(Conv2d, HandComputedTwoByTwoKernel) {
  for (const nn::ConvBackend backend : backends()) {
    SCOPED_TRACE(std::string("backend ") + nn::backend_name(backend));
    // x: 1×1×3×3 = [[1,2,3],[4,5,6],[7,8,9]], kernel [[1,2],[3,4]], bias 0.5.
    const Tensor x = Tensor::from_host("x", {1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    Conv2d conv("c", {1, 3, 3}, ConvOptions{1, {2}, {}, {}, true, backend});
    conv.weight().value.copy_from_host({1, 2, 3, 4});
    conv.bias().value.copy_from_host({0.5F});
    nn::ForwardResult r = conv.forward(x, {});
    ASSERT_EQ(r.output.shape(), (Shape{1, 1, 2, 2}));
    // 1+4+12+20, 2+6+15+24, 4+10+21+32, 5+12+24+36, each + 0.5.
    EXPECT_EQ(r.output.to_host(), (std::vector<float>{37.5F, 47.5F, 67.5F, 77.5F}));

    // Backward with dy = [[1, 0], [0, 1]]: dx is the kernel pasted at (0,0) and at (1,1);
    // dW(i, j) = x(i, j) + x(i+1, j+1); db = 2.
    const Tensor dy = Tensor::from_host("dy", {1, 1, 2, 2}, {1, 0, 0, 1});
    const Tensor dx = conv.backward(dy, std::move(r.ctx));
    EXPECT_EQ(dx.to_host(), (std::vector<float>{1, 2, 0, 3, 4 + 1, 2, 0, 3, 4}));
    EXPECT_EQ(conv.weight().grad.to_host(), (std::vector<float>{1 + 5, 2 + 6, 4 + 8, 5 + 9}));
    EXPECT_EQ(conv.bias().grad.to_host(), (std::vector<float>{2}));

    // Padding 1, stride 2: outputs at padded corners (0,0), (0,2), (2,0), (2,2):
    // 4·1; 3·2 + 4·3; 2·4 + 4·7; 1·5 + 2·6 + 3·8 + 4·9. No bias.
    Conv2d strided("s", {1, 3, 3}, ConvOptions{1, {2}, {2}, {1}, false, backend});
    strided.weight().value.copy_from_host({1, 2, 3, 4});
    EXPECT_EQ(strided.forward(x, {}).output.to_host(), (std::vector<float>{4, 18, 36, 77}));
  }
}

TEST(Conv3d, HandComputedDepthTwo) {
  for (const nn::ConvBackend backend : backends()) {
    SCOPED_TRACE(std::string("backend ") + nn::backend_name(backend));
    // x: 1×1×2×2×2 = 1..8, a 2×1×1 kernel [1, 10]: y(0, h, w) = x(0, h, w) + 10·x(1, h, w).
    const Tensor x = Tensor::from_host("x", {1, 1, 2, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
    Conv3d conv("c", {1, 2, 2, 2}, ConvOptions{1, {2, 1, 1}, {}, {}, false, backend});
    conv.weight().value.copy_from_host({1, 10});
    nn::ForwardResult r = conv.forward(x, {});
    ASSERT_EQ(r.output.shape(), (Shape{1, 1, 1, 2, 2}));
    EXPECT_EQ(r.output.to_host(), (std::vector<float>{51, 62, 73, 84}));
  }
}

TEST(Conv2d, MatchesDirectConvolution) {
  struct C2 {
    Index n, c, o;
    A3 in, k, s, p;
  };
  const C2 cases[] = {
      {2, 1, 4, {1, 6, 6}, {1, 3, 3}, {1, 1, 1}, {0, 0, 0}},
      {3, 3, 5, {1, 8, 7}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}},
      {2, 2, 3, {1, 9, 9}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}},
      {2, 2, 3, {1, 10, 7}, {1, 5, 2}, {1, 3, 2}, {0, 2, 0}},
      {2, 3, 2, {1, 5, 5}, {1, 1, 1}, {1, 2, 2}, {0, 0, 0}},
      // 8·9 rows × 256 columns per sample: several samples per chunk and a partial last chunk.
      {19, 8, 6, {1, 16, 16}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}},
  };
  for (const C2& cs : cases) {
    SCOPED_TRACE("C " + std::to_string(cs.c) + " -> " + std::to_string(cs.o) + ", " +
                 std::to_string(cs.in[1]) + "x" + std::to_string(cs.in[2]));
    expect_matches_direct(Direct(cs.n, cs.c, cs.o, cs.in, cs.k, cs.s, cs.p), true, true);
    expect_matches_direct(Direct(cs.n, cs.c, cs.o, cs.in, cs.k, cs.s, cs.p), true, false);
  }
}

TEST(Conv2d, BatchSpansSeveralChunks) {
  Conv2d conv("c", {8, 16, 16}, ConvOptions{6, {3}, {}, {1}, true, nn::ConvBackend::im2col});
  EXPECT_GT(conv.chunk(), 1);
  EXPECT_LT(conv.chunk(), 19);
  EXPECT_NE(19 % conv.chunk(), 0);
}

TEST(ConvNd, LargeSamplesAreTiledByOutputRows) {
  // One sample's columns exceed the cache budget: blocks become bands of output rows of one
  // sample, including a band that ends inside an output plane (3-D) and strided rows (non-flat).
  {
    Conv2d conv("big", {8, 48, 48}, ConvOptions{3, {3}, {1}, {1}, true, nn::ConvBackend::im2col});
    EXPECT_EQ(conv.chunk(), 1);
    EXPECT_LT(conv.tile_rows(), 48);
    EXPECT_NE(48 % conv.tile_rows(), 0);
  }
  {
    Conv3d conv("big3", {4, 12, 12, 12},
                ConvOptions{3, {3}, {1}, {1}, true, nn::ConvBackend::im2col});
    EXPECT_EQ(conv.chunk(), 1);
    EXPECT_LT(conv.tile_rows(), 144);
    EXPECT_NE(conv.tile_rows() % 12, 0);
  }
  expect_matches_direct(Direct(2, 8, 3, {1, 48, 48}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}), true, true);
  expect_matches_direct(Direct(2, 8, 3, {1, 97, 97}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}), true, true);
  expect_matches_direct(Direct(2, 4, 3, {12, 12, 12}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}), false,
                        true);
}

TEST(Conv3d, MatchesDirectConvolution) {
  expect_matches_direct(Direct(2, 2, 3, {4, 5, 6}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}), false, true);
  expect_matches_direct(Direct(3, 3, 2, {5, 6, 7}, {2, 3, 2}, {2, 1, 3}, {1, 0, 1}), false, true);
  expect_matches_direct(Direct(2, 1, 4, {7, 7, 7}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}), false, false);
}

TEST(Conv2d, ParametersAndInitialisation) {
  Conv2d conv("conv2", {32, 14, 14}, ConvOptions{64, {3}, {}, {1}});
  EXPECT_EQ(conv.kind(), std::string("conv2d"));
  ASSERT_EQ(conv.parameters().size(), 2u);
  EXPECT_EQ(conv.weight().name, "conv2.weight");
  EXPECT_EQ(conv.weight().value.shape(), (Shape{64, 32, 3, 3}));
  EXPECT_TRUE(conv.weight().decay);
  EXPECT_EQ(conv.bias().name, "conv2.bias");
  EXPECT_EQ(conv.bias().value.shape(), (Shape{64}));
  EXPECT_FALSE(conv.bias().decay);
  EXPECT_EQ(conv.output_shape({32, 14, 14}), (Shape{64, 14, 14}));
  conv.initialize(7);
  const float bound = 1.0F / std::sqrt(32.0F * 9.0F);
  for (const nn::Parameter& p : conv.parameters()) {
    for (float v : p.value.to_host()) {
      ASSERT_GE(v, -bound);
      ASSERT_LT(v, bound);
    }
  }
  Conv3d c3("c3", {2, 5, 6, 7}, ConvOptions{4, {3, 1, 2}, {1, 2, 1}, {1, 0, 0}, false});
  EXPECT_EQ(c3.kind(), std::string("conv3d"));
  ASSERT_EQ(c3.parameters().size(), 1u);
  EXPECT_EQ(c3.weight().value.shape(), (Shape{4, 2, 3, 1, 2}));
  EXPECT_EQ(c3.output_shape({2, 5, 6, 7}), (Shape{4, 5, 3, 6}));
}

TEST(Conv2d, GradCheck) {
  for (const nn::ConvBackend b : backends()) {
    SCOPED_TRACE(std::string("backend ") + nn::backend_name(b));
    {
      Conv2d conv("plain", {2, 5, 5}, with(ConvOptions{3, {3}}, b));
      conv.initialize(1);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 2, 5, 5}, 1)), 0);
    }
    {
      Conv2d conv("stride2", {2, 7, 7}, with(ConvOptions{3, {3}, {2}}, b));
      conv.initialize(2);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 2, 7, 7}, 2)), 0);
    }
    {
      Conv2d conv("pad1", {2, 5, 5}, with(ConvOptions{3, {3}, {1}, {1}}, b));
      conv.initialize(3);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 2, 5, 5}, 3)), 0);
    }
    {
      Conv2d conv("stride2pad1", {3, 8, 6}, with(ConvOptions{2, {3, 2}, {2, 1}, {1, 0}}, b));
      conv.initialize(4);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 3, 8, 6}, 4)), 0);
    }
  }
}

TEST(Conv3d, GradCheck) {
  for (const nn::ConvBackend b : backends()) {
    SCOPED_TRACE(std::string("backend ") + nn::backend_name(b));
    {
      Conv3d conv("c3", {2, 4, 4, 4}, with(ConvOptions{2, {3}, {1}, {1}}, b));
      conv.initialize(5);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 2, 4, 4, 4}, 5)), 0);
    }
    {
      Conv3d conv("c3s", {2, 5, 5, 4}, with(ConvOptions{2, {3, 3, 2}, {2}, {1, 1, 0}}, b));
      conv.initialize(6);
      EXPECT_EQ(tt::gradcheck(conv, tt::random_tensor("x", {2, 2, 5, 5, 4}, 6)), 0);
    }
  }
}

TEST(Conv2d, BadOptionsThrowExactMessages) {
  auto make2 = [](Shape in, ConvOptions o) {
    return tt::error_of([&] { Conv2d("conv1", in, o); });
  };
  EXPECT_EQ(make2({28, 28}, {32, {3}}),
            "conv2d 'conv1': input shape (28, 28) must be (C, H, W) with every extent >= 1");
  EXPECT_EQ(make2({1, 0, 28}, {32, {3}}),
            "conv2d 'conv1': input shape (1, 0, 28) must be (C, H, W) with every extent >= 1");
  EXPECT_EQ(make2({1, 28, 28}, {0, {3}}), "conv2d 'conv1': option out = 0 must be >= 1");
  EXPECT_EQ(make2({1, 28, 28}, {32, {}}),
            "conv2d 'conv1': option kernel has 0 values [], expected 1 or 2");
  EXPECT_EQ(make2({1, 28, 28}, {32, {3, 3, 3}}),
            "conv2d 'conv1': option kernel has 3 values [3, 3, 3], expected 1 or 2");
  EXPECT_EQ(make2({1, 28, 28}, {32, {3, 0}}),
            "conv2d 'conv1': option kernel = [3, 0] must be >= 1 in every dimension");
  EXPECT_EQ(make2({1, 28, 28}, {32, {3}, {0}}),
            "conv2d 'conv1': option stride = [0] must be >= 1 in every dimension");
  EXPECT_EQ(make2({1, 28, 28}, {32, {3}, {1, 2, 2}}),
            "conv2d 'conv1': option stride has 3 values [1, 2, 2], expected 1 or 2");
  EXPECT_EQ(make2({1, 28, 28}, {32, {3}, {1}, {-1}}),
            "conv2d 'conv1': option pad = [-1] must be >= 0 in every dimension");
  EXPECT_EQ(make2({1, 2, 28}, {32, {3}}),
            "conv2d 'conv1': input (1, 2, 28) with kernel [3, 3], stride [1, 1], pad [0, 0] gives "
            "output extents (0, 26); every extent must be >= 1");
  EXPECT_EQ(tt::error_of([] {
              Conv3d("c3", {1, 28, 28}, ConvOptions{8, {3}});
            }),
            "conv3d 'c3': input shape (1, 28, 28) must be (C, D, H, W) with every extent >= 1");
  EXPECT_EQ(tt::error_of([] {
              Conv3d("c3", {1, 4, 8, 8}, ConvOptions{8, {3, 3}});
            }),
            "conv3d 'c3': option kernel has 2 values [3, 3], expected 1 or 3");
  EXPECT_EQ(tt::error_of([] {
              Conv3d("c3", {1, 2, 8, 8}, ConvOptions{8, {3}, {1}, {0, 1, 1}});
            }),
            "conv3d 'c3': input (1, 2, 8, 8) with kernel [3, 3, 3], stride [1, 1, 1], pad [0, 1, "
            "1] gives output extents (0, 8, 8); every extent must be >= 1");
}

TEST(Conv2d, BadShapesThrowExactMessages) {
  Conv2d conv("conv1", {1, 28, 28}, ConvOptions{32, {3}, {}, {1}});
  EXPECT_EQ(tt::error_of([&] {
              (void)conv.forward(Tensor("x", {8, 3, 28, 28}), {});
            }),
            "conv2d 'conv1': input has shape (8, 3, 28, 28), expected (N, 1, 28, 28) with N >= 1");
  EXPECT_EQ(tt::error_of([&] {
              (void)conv.forward(Tensor("x", {1, 28, 28}), {});
            }),
            "conv2d 'conv1': input has shape (1, 28, 28), expected (N, 1, 28, 28) with N >= 1");
  EXPECT_EQ(tt::error_of([&] {
              (void)conv.output_shape({3, 28, 28});
            }),
            "conv2d 'conv1': input sample shape (3, 28, 28) does not fit, expected (1, 28, 28)");
  nn::ForwardResult r = conv.forward(Tensor("x", {2, 1, 28, 28}), {});
  EXPECT_EQ(
      tt::error_of([&] {
        (void)conv.backward(Tensor("dy", {2, 32, 27, 28}), nn::Context(r.ctx));
      }),
      "conv2d 'conv1': output grad has shape (2, 32, 27, 28), expected (N, 32, 28, 28) with N >= "
      "1");
  EXPECT_NE(tt::error_of([&] {
              (void)conv.backward(Tensor("dy", {3, 32, 28, 28}), nn::Context(r.ctx));
            }).find("conv2d 'conv1': backward context does not match output grad (3, 32, 28, 28)"),
            std::string::npos);
}
