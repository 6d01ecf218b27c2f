// The oneDNN host convolution (kernels::DnnlConv, the Conv2d/Conv3d layers' default backend in a
// build with oneDNN) against the im2col + GEMM backend: output, input gradient, weight and bias
// gradients on strided, padded, one-channel, odd-sized, per-dimension 2-D and 3-D shapes; the
// accumulation of the parameter gradients; the skipped input gradient of a first layer; batch
// sizes that change between calls; both memory-format strategies of the kernel; exact errors.
// (test_conv.cpp checks both backends against direct loops and by finite differences.) In a build
// without oneDNN the comparisons skip, and the layer's refusal of the dnnl backend is checked.
#include "support/gradcheck.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/conv_dnnl.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/nn/conv.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using namespace tessera;
using nn::ConvBackend;
using nn::ConvOptions;
namespace tt = tessera::testing;

namespace {

/// The message of a TESSERA_CHECK failure without the location it appends: " [check ...".
std::string check_message(const std::function<void()>& f) {
  const std::string m = tt::error_of(f);
  return m.substr(0, m.find(" [check "));
}

#define SKIP_WITHOUT_DNNL()                                                                      \
  if (!kernels::dnnl_available()) {                                                              \
    GTEST_SKIP() << "built without oneDNN (libdnnl-dev; TESSERA_WITH_DNNL): nothing to compare"; \
  }

/// |a - b| <= tol · (1 + max |b|) element by element: the two backends sum in different orders.
void expect_close(const Tensor& a, const Tensor& b, const std::string& what, double tol = 2e-5) {
  ASSERT_TRUE(a.defined()) << what;
  ASSERT_TRUE(b.defined()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const std::vector<float> av = a.to_host();
  const std::vector<float> bv = b.to_host();
  double scale = 0.0;
  for (float v : bv) {
    scale = std::max(scale, std::fabs(static_cast<double>(v)));
  }
  tt::expect_near(av, bv, tol * (1.0 + scale), what);
}

/// One layer shape: 2-D when `sample` has 3 extents (C, H, W), 3-D with 4.
struct Case {
  std::string name;
  Index n;
  Shape sample;
  ConvOptions options;
};

std::unique_ptr<nn::ConvNd> make(const Case& c, ConvBackend backend) {
  ConvOptions o = c.options;
  o.backend = backend;
  if (c.sample.size() == 3) {
    return std::make_unique<nn::Conv2d>(c.name, c.sample, o);
  }
  return std::make_unique<nn::Conv3d>(c.name, c.sample, o);
}

/// Runs forward and backward with both backends on the same parameters and data — the parameter
/// gradients starting from the same non-zero values, so that accumulation is compared too — and
/// compares y, dx, dW and db. `first_layer` turns the input gradient off.
void expect_backends_agree(const Case& c, bool first_layer = false) {
  SCOPED_TRACE(c.name);
  std::unique_ptr<nn::ConvNd> ref = make(c, ConvBackend::im2col);
  std::unique_ptr<nn::ConvNd> dnnl = make(c, ConvBackend::dnnl);
  ASSERT_EQ(ref->backend(), ConvBackend::im2col);
  ASSERT_EQ(dnnl->backend(), ConvBackend::dnnl);
  ref->initialize(11);
  dnnl->initialize(11);
  ref->set_needs_input_grad(!first_layer);
  dnnl->set_needs_input_grad(!first_layer);
  for (size_t i = 0; i < ref->parameters().size(); ++i) {
    const Tensor g0 = tt::random_tensor("g0", ref->parameters()[i].grad.shape(), 40 + i);
    ref->parameters()[i].grad.copy_from(g0);
    dnnl->parameters()[i].grad.copy_from(g0);
  }
  const Tensor x = tt::random_tensor("x", nn::batch_shape(c.n, c.sample), 12);
  nn::ForwardResult a = ref->forward(x, {});
  nn::ForwardResult b = dnnl->forward(x, {});
  expect_close(b.output, a.output, "y");
  const Tensor dy = tt::random_tensor("dy", a.output.shape(), 13);
  const Tensor dx_ref = ref->backward(dy, std::move(a.ctx));
  const Tensor dx = dnnl->backward(dy, std::move(b.ctx));
  if (first_layer) {
    EXPECT_FALSE(dx.defined());
    EXPECT_FALSE(dx_ref.defined());
  } else {
    expect_close(dx, dx_ref, "dx");
  }
  expect_close(dnnl->weight().grad, ref->weight().grad, "dW", 1e-4);
  if (ref->has_bias()) {
    expect_close(dnnl->bias().grad, ref->bias().grad, "db", 1e-4);
  }
}

ConvOptions opts(Index out, std::vector<Index> kernel, std::vector<Index> stride = {},
                 std::vector<Index> pad = {}, bool bias = true) {
  return ConvOptions{out, std::move(kernel), std::move(stride), std::move(pad), bias};
}

}  // namespace

TEST(ConvDnnl, DefaultBackendFollowsTheBuild) {
  nn::Conv2d conv("conv1", {1, 28, 28}, opts(32, {3}, {}, {1}));
  EXPECT_EQ(conv.backend(), kernels::dnnl_available() ? ConvBackend::dnnl : ConvBackend::im2col);
  EXPECT_EQ(std::string(nn::backend_name(ConvBackend::dnnl)), "dnnl");
  EXPECT_EQ(std::string(nn::backend_name(ConvBackend::im2col)), "im2col");
  if (!kernels::dnnl_available()) {
    ConvOptions o = opts(32, {3});
    o.backend = ConvBackend::dnnl;
    EXPECT_EQ(tt::error_of([&] {
                nn::Conv2d("conv1", {1, 28, 28}, o);
              }),
              "conv2d 'conv1': the oneDNN convolution backend is not in this build (install "
              "Debian's libdnnl-dev and reconfigure with TESSERA_WITH_DNNL=AUTO or ON)");
  }
}

TEST(ConvDnnl, Conv2dMatchesIm2col) {
  SKIP_WITHOUT_DNNL();
  const Case cases[] = {
      {"fashion_conv1", 4, {1, 28, 28}, opts(32, {3}, {1}, {1})},
      {"fashion_conv2", 3, {32, 14, 14}, opts(64, {3}, {1}, {1})},
      {"stride2_pad1", 3, {3, 9, 9}, opts(5, {3}, {2}, {1})},
      {"stride2_no_pad_odd", 2, {4, 11, 7}, opts(6, {3}, {2}, {0})},
      {"one_channel_odd", 3, {1, 13, 9}, opts(3, {5, 3}, {1, 2}, {2, 1})},
      {"per_dim_no_bias", 2, {3, 10, 7}, opts(4, {5, 2}, {3, 2}, {2, 0}, false)},
      {"pointwise_stride2", 2, {8, 6, 6}, opts(16, {1}, {2})},
      {"kernel_covers_input", 2, {2, 4, 5}, opts(3, {4, 5})},
      {"wide_channels", 2, {17, 8, 8}, opts(33, {3}, {1}, {1})},
      // 3×3, stride 1, batch 16, 16 channels: where oneDNN may choose Winograd (auto_algorithm).
      {"winograd_shape", 16, {16, 8, 8}, opts(16, {3}, {1}, {1})},
  };
  for (const Case& c : cases) {
    expect_backends_agree(c);
  }
}

TEST(ConvDnnl, Conv3dMatchesIm2col) {
  SKIP_WITHOUT_DNNL();
  const Case cases[] = {
      {"c3_pad1", 2, {2, 4, 5, 6}, opts(3, {3}, {1}, {1})},
      {"c3_stride2_odd", 2, {3, 7, 7, 5}, opts(4, {3}, {2}, {1})},
      {"c3_per_dim", 3, {3, 5, 6, 7}, opts(2, {2, 3, 2}, {2, 1, 3}, {1, 0, 1}, false)},
      {"c3_one_channel", 2, {1, 6, 6, 6}, opts(16, {3}, {1}, {1})},
      {"c3_wide", 2, {16, 4, 4, 4}, opts(32, {3}, {1}, {1})},
  };
  for (const Case& c : cases) {
    expect_backends_agree(c);
  }
}

TEST(ConvDnnl, FirstLayerSkipsTheInputGradient) {
  SKIP_WITHOUT_DNNL();
  expect_backends_agree({"first2d", 3, {1, 28, 28}, opts(32, {3}, {1}, {1})}, true);
  expect_backends_agree({"first3d", 2, {1, 5, 6, 7}, opts(4, {3}, {2}, {1})}, true);
}

TEST(ConvDnnl, BatchSizeMayChangeBetweenCalls) {
  SKIP_WITHOUT_DNNL();
  // One plan per batch size: a short last batch, then full ones again, each agreeing.
  const Case c{"conv", 0, {3, 9, 8}, opts(8, {3}, {2}, {1})};
  std::unique_ptr<nn::ConvNd> ref = make(c, ConvBackend::im2col);
  std::unique_ptr<nn::ConvNd> dnnl = make(c, ConvBackend::dnnl);
  ref->initialize(3);
  dnnl->initialize(3);
  for (const Index n : {5, 2, 5, 1}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    ref->zero_grad();
    dnnl->zero_grad();
    const Tensor x = tt::random_tensor("x", nn::batch_shape(n, c.sample), 20 + n);
    nn::ForwardResult a = ref->forward(x, {});
    nn::ForwardResult b = dnnl->forward(x, {});
    expect_close(b.output, a.output, "y");
    const Tensor dy = tt::random_tensor("dy", a.output.shape(), 30 + n);
    expect_close(dnnl->backward(dy, std::move(b.ctx)), ref->backward(dy, std::move(a.ctx)), "dx");
    expect_close(dnnl->weight().grad, ref->weight().grad, "dW", 1e-4);
    expect_close(dnnl->bias().grad, ref->bias().grad, "db", 1e-4);
  }
}

TEST(ConvDnnl, TwoForwardPassesBeforeTheirBackwardPasses) {
  SKIP_WITHOUT_DNNL();
  // Micro-batches: forward A, forward B, backward B, backward A. Outputs and input gradients of
  // one call must not share storage with another's (the layer reuses storage only when free), and
  // the cached primitives' buffers must not carry state from one call to the next.
  const Case c{"conv", 0, {4, 8, 8}, opts(16, {3}, {1}, {1})};
  std::unique_ptr<nn::ConvNd> ref = make(c, ConvBackend::im2col);
  std::unique_ptr<nn::ConvNd> dnnl = make(c, ConvBackend::dnnl);
  ref->initialize(8);
  dnnl->initialize(8);
  const Tensor xa = tt::random_tensor("xa", {3, 4, 8, 8}, 50);
  const Tensor xb = tt::random_tensor("xb", {3, 4, 8, 8}, 51);
  nn::ForwardResult ra = ref->forward(xa, {});
  nn::ForwardResult da = dnnl->forward(xa, {});
  nn::ForwardResult rb = ref->forward(xb, {});
  nn::ForwardResult db = dnnl->forward(xb, {});
  EXPECT_NE(da.output.data(), db.output.data());
  expect_close(da.output, ra.output, "y(A) after forward(B)");
  expect_close(db.output, rb.output, "y(B)");
  const Tensor dya = tt::random_tensor("dya", ra.output.shape(), 52);
  const Tensor dyb = tt::random_tensor("dyb", rb.output.shape(), 53);
  const Tensor dx_rb = ref->backward(dyb, std::move(rb.ctx));
  const Tensor dx_db = dnnl->backward(dyb, std::move(db.ctx));
  const Tensor dx_ra = ref->backward(dya, std::move(ra.ctx));
  const Tensor dx_da = dnnl->backward(dya, std::move(da.ctx));
  EXPECT_NE(dx_da.data(), dx_db.data());
  expect_close(dx_db, dx_rb, "dx(B) after backward(A)");
  expect_close(dx_da, dx_ra, "dx(A)");
  expect_close(dnnl->weight().grad, ref->weight().grad, "dW(A) + dW(B)", 1e-4);
  expect_close(dnnl->bias().grad, ref->bias().grad, "db(A) + db(B)", 1e-4);
}

TEST(ConvDnnl, BothFormatStrategiesAgreeOnAHandExample) {
  SKIP_WITHOUT_DNNL();
  // x: 1×1×3×3 = 1..9, kernel [[1,2],[3,4]], bias 0.5, pad 0 (as in test_conv.cpp): y = 37.5,
  // 47.5, 67.5, 77.5. dy = [[1, 0], [0, 1]]: dx pastes the kernel at (0,0) and (1,1); dW(i, j) =
  // x(i, j) + x(i+1, j+1); db = 2. The gradients accumulate onto dW = 1, db = 10.
  const auto g = kernels::ConvGeometry::make(1, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0});
  using kernels::DnnlFormat;
  for (const DnnlFormat format : {DnnlFormat::automatic, DnnlFormat::any, DnnlFormat::plain}) {
    SCOPED_TRACE(static_cast<int>(format));
    kernels::DnnlConv conv("conv2d 'c'", g, 1, 2, true, {format});
    const Tensor x = Tensor::from_host("x", {1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    const Tensor w = Tensor::from_host("w", {1, 1, 2, 2}, {1, 2, 3, 4});
    const Tensor b = Tensor::from_host("b", {1}, {0.5F});
    const Tensor y("y", {1, 1, 2, 2});
    conv.forward(x, w, b, y);
    EXPECT_EQ(y.to_host(), (std::vector<float>{37.5F, 47.5F, 67.5F, 77.5F}));
    const Tensor dy = Tensor::from_host("dy", {1, 1, 2, 2}, {1, 0, 0, 1});
    const Tensor dx("dx", x.shape());
    dx.fill(-7.0F);  // overwritten, not accumulated
    const Tensor dw = Tensor::from_host("dw", {1, 1, 2, 2}, {1, 1, 1, 1});
    const Tensor db = Tensor::from_host("db", {1}, {10.0F});
    conv.backward(x, w, dy, dx, dw, db);
    EXPECT_EQ(dx.to_host(), (std::vector<float>{1, 2, 0, 3, 4 + 1, 2, 0, 3, 4}));
    EXPECT_EQ(dw.to_host(), (std::vector<float>{1 + 1 + 5, 1 + 2 + 6, 1 + 4 + 8, 1 + 5 + 9}));
    EXPECT_EQ(db.to_host(), (std::vector<float>{12}));
    const std::string text = conv.describe(1);
    EXPECT_NE(text.find("forward: "), std::string::npos) << text;
    EXPECT_NE(text.find("backward_data: "), std::string::npos) << text;
    EXPECT_NE(text.find("backward_weights: "), std::string::npos) << text;
  }
}

namespace {
/// DnnlConv with `format` against the im2col layer on a strided, padded 2-D shape.
void expect_kernel_matches_im2col(Index channels, kernels::DnnlFormat format, bool auto_algorithm) {
  nn::Conv2d ref("c", {channels, 9, 8}, ConvOptions{16, {3}, {2}, {1}, true, ConvBackend::im2col});
  ref.initialize(5);
  kernels::DnnlConv conv("conv2d 'c'", ref.geometry(), 16, 2, true, {format, auto_algorithm});
  const Tensor x = tt::random_tensor("x", {2, channels, 9, 8}, 6);
  nn::ForwardResult r = ref.forward(x, {});
  const Tensor y("y", r.output.shape());
  conv.forward(x, ref.weight().value, ref.bias().value, y);
  expect_close(y, r.output, "y");
  const Tensor dy = tt::random_tensor("dy", y.shape(), 7);
  const Tensor dx("dx", x.shape());
  const Tensor dw("dw", ref.weight().value.shape());
  const Tensor db("db", {16});
  conv.backward(x, ref.weight().value, dy, dx, dw, db);
  ref.zero_grad();
  expect_close(dx, ref.backward(dy, std::move(r.ctx)), "dx");
  expect_close(dw, ref.weight().grad, "dW", 1e-4);
  expect_close(db, ref.bias().grad, "db", 1e-4);
}
}  // namespace

TEST(ConvDnnl, EveryFormatStrategyMatchesIm2col) {
  SKIP_WITHOUT_DNNL();
  // The kernel with each DnnlFormat on strided, padded shapes with one and with many input
  // channels (oneDNN keeps a one-channel input plain) against the layer's im2col backend.
  using kernels::DnnlFormat;
  for (const Index channels : {1, 16}) {
    for (const DnnlFormat format : {DnnlFormat::automatic, DnnlFormat::any, DnnlFormat::plain}) {
      SCOPED_TRACE("C = " + std::to_string(channels) + ", format " +
                   std::to_string(static_cast<int>(format)));
      expect_kernel_matches_im2col(channels, format, true);
      expect_kernel_matches_im2col(channels, format, false);
    }
  }
}

TEST(ConvDnnl, BadArgumentsThrowExactMessages) {
  SKIP_WITHOUT_DNNL();
  const auto g = kernels::ConvGeometry::make(2, {1, 5, 5}, {1, 3, 3}, {1, 1, 1}, {0, 1, 1});
  kernels::DnnlConv conv("conv2d 'c'", g, 4, 2, true);
  const Tensor x("x", {2, 2, 5, 5});
  const Tensor w("w", {4, 2, 3, 3});
  const Tensor b("b", {4});
  EXPECT_EQ(check_message([&] {
              conv.forward(x, Tensor("w", {4, 2, 2, 2}), b, Tensor("y", {2, 4, 5, 5}));
            }),
            "conv2d 'c': oneDNN convolution: weight has shape (4, 2, 2, 2), expected (4, 2, 3, 3)");
  EXPECT_EQ(check_message([&] {
              conv.forward(x, w, b, Tensor("y", {2, 4, 3, 3}));
            }),
            "conv2d 'c': oneDNN convolution: output has shape (2, 4, 3, 3), expected (2, 4, 5, 5)");
  EXPECT_EQ(check_message([&] {
              conv.forward(x, w, Tensor(), Tensor("y", {2, 4, 5, 5}));
            }),
            "conv2d 'c': oneDNN convolution: bias has shape (), expected (4,)");
  const Tensor dy("dy", {2, 4, 5, 5});
  EXPECT_EQ(check_message([&] {
              conv.backward(x, w, dy, Tensor(), Tensor("dw", {4, 2, 3, 3}), Tensor());
            }),
            "conv2d 'c': oneDNN convolution: bias grad is missing but the convolution has a bias");
  EXPECT_EQ(check_message([] {
              kernels::DnnlConv(
                  "conv2d 'd'",
                  kernels::ConvGeometry::make(2, {3, 5, 5}, {3, 3, 3}, {1, 1, 1}, {0, 1, 1}), 4, 2,
                  true);
            }),
            "conv2d 'd': a 2-D convolution's geometry must have depth 1 (input, kernel, stride 1, "
            "pad 0)");
}

TEST(ConvDnnl, LargeBatchFirstLayerMatchesIm2col) {
  SKIP_WITHOUT_DNNL();
  // The Fashion-MNIST CNN's layers at the deck's batch (blocked formats, large reorders).
  kernels::set_blas_threads(1);
  expect_backends_agree({"conv1_b128", 128, {1, 28, 28}, opts(32, {3}, {1}, {1})}, true);
  expect_backends_agree({"conv2_b128", 128, {32, 14, 14}, opts(64, {3}, {1}, {1})});
}
