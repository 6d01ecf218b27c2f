// cuDNN convolutions (2-D and 3-D, stride and padding) against the definition, summed in double
// on the host: forward with bias, dx, dw and db, the last two accumulating. Skipped without a
// CUDA device.
#include "gpu_test.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/cuda/check.hpp"
#include "tessera/kernels/cuda/conv.hpp"
#include "tessera/kernels/cuda/device.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::kernels::cuda;
using tessera::testing::random_values;

namespace {

class CudaConv : public tessera::testing::GpuTest {};

using Extent = std::array<Index, 3>;  // (D, H, W); a 2-D case has D = 1

Extent as_3d(const std::vector<Index>& v, Index missing_depth) {
  return v.size() == 2 ? Extent{missing_depth, v[0], v[1]} : Extent{v[0], v[1], v[2]};
}

// The definition of the convolution: every tap (n, o, output position, c, kernel offset) whose
// input position lies inside the unpadded input, with the flat indices of x, w and y.
struct Reference {
  Index n_batch, c_in, c_out;
  Extent in, kernel, stride, padding, out;

  explicit Reference(const ConvGeometry& g)
      : n_batch(g.batch),
        c_in(g.in_channels),
        c_out(g.out_channels),
        in(as_3d(g.input, 1)),
        kernel(as_3d(g.kernel, 1)),
        stride(as_3d(g.stride, 1)),
        padding(as_3d(g.padding, 0)) {
    for (int d = 0; d < 3; ++d) {
      out[d] = (in[d] + 2 * padding[d] - kernel[d]) / stride[d] + 1;
    }
  }

  Index x_size() const { return n_batch * c_in * in[0] * in[1] * in[2]; }
  Index w_size() const { return c_out * c_in * kernel[0] * kernel[1] * kernel[2]; }
  Index y_size() const { return n_batch * c_out * out[0] * out[1] * out[2]; }
  Index y_spatial() const { return out[0] * out[1] * out[2]; }

  template <class F>
  void for_each_tap(F&& f) const {
    for (Index n = 0; n < n_batch; ++n) {
      for (Index o = 0; o < c_out; ++o) {
        for (Index oz = 0; oz < out[0]; ++oz) {
          for (Index oy = 0; oy < out[1]; ++oy) {
            for (Index ox = 0; ox < out[2]; ++ox) {
              const Index yi = (((n * c_out + o) * out[0] + oz) * out[1] + oy) * out[2] + ox;
              for (Index c = 0; c < c_in; ++c) {
                for (Index kz = 0; kz < kernel[0]; ++kz) {
                  for (Index ky = 0; ky < kernel[1]; ++ky) {
                    for (Index kx = 0; kx < kernel[2]; ++kx) {
                      const Index iz = oz * stride[0] - padding[0] + kz;
                      const Index iy = oy * stride[1] - padding[1] + ky;
                      const Index ix = ox * stride[2] - padding[2] + kx;
                      if (iz < 0 || iz >= in[0] || iy < 0 || iy >= in[1] || ix < 0 || ix >= in[2]) {
                        continue;
                      }
                      const Index xi = (((n * c_in + c) * in[0] + iz) * in[1] + iy) * in[2] + ix;
                      const Index wi =
                          (((o * c_in + c) * kernel[0] + kz) * kernel[1] + ky) * kernel[2] + kx;
                      f(static_cast<std::size_t>(xi), static_cast<std::size_t>(wi),
                        static_cast<std::size_t>(yi));
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
  }
};

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

void expect_close(const std::vector<float>& got, const std::vector<float>& expected,
                  const std::string& what) {
  ASSERT_EQ(got.size(), expected.size()) << what;
  int mismatches = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const float tolerance = 1e-4F * (1.0F + std::fabs(expected[i]));
    if (!(std::fabs(got[i] - expected[i]) <= tolerance) && ++mismatches <= 5) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", expected " << expected[i];
    }
  }
  EXPECT_EQ(mismatches, 0) << what;
}

// Forward (with bias), dx, dw and db of `conv` against the reference, with dw and db starting
// from non-zero values to check that they accumulate.
void check_all_passes(Convolution& conv, const ConvGeometry& g, const std::string& label) {
  const Reference ref(g);
  const auto size = [](Index n) { return static_cast<std::size_t>(n); };
  const auto x = random_values(size(ref.x_size()), 11);
  const auto w = random_values(size(ref.w_size()), 12);
  const auto bias = random_values(size(g.out_channels), 13);
  const auto dy = random_values(size(ref.y_size()), 14);
  const float dw0 = 0.25F;
  const float db0 = -0.5F;

  std::vector<double> y(size(ref.y_size()));
  std::vector<double> dx(size(ref.x_size()));
  std::vector<double> dw(size(ref.w_size()), dw0);
  std::vector<double> db(size(g.out_channels), db0);
  for (std::size_t yi = 0; yi < y.size(); ++yi) {
    const std::size_t o = (yi / size(ref.y_spatial())) % size(g.out_channels);
    y[yi] = static_cast<double>(bias[o]);
    db[o] += static_cast<double>(dy[yi]);
  }
  ref.for_each_tap([&](std::size_t xi, std::size_t wi, std::size_t yi) {
    const auto xv = static_cast<double>(x[xi]);
    const auto wv = static_cast<double>(w[wi]);
    const auto dyv = static_cast<double>(dy[yi]);
    y[yi] += xv * wv;
    dx[xi] += dyv * wv;
    dw[wi] += xv * dyv;
  });

  std::vector<Index> y_shape{g.batch, g.out_channels};
  for (int d = 3 - static_cast<int>(g.input.size()); d < 3; ++d) {
    y_shape.push_back(ref.out[static_cast<std::size_t>(d)]);
  }
  ASSERT_EQ(conv.output_shape(), y_shape) << label;

  DeviceBuffer<float> d_x(x);
  DeviceBuffer<float> d_w(w);
  DeviceBuffer<float> d_bias(bias);
  DeviceBuffer<float> d_dy(dy);
  DeviceBuffer<float> d_y(y.size());
  DeviceBuffer<float> d_dx(dx.size());
  DeviceBuffer<float> d_dw(std::vector<float>(dw.size(), dw0));
  DeviceBuffer<float> d_db(std::vector<float>(db.size(), db0));
  conv.forward(d_x.data(), d_w.data(), d_bias.data(), d_y.data());
  conv.backward_data(d_w.data(), d_dy.data(), d_dx.data());
  conv.backward_filter(d_x.data(), d_dy.data(), d_dw.data());
  conv.backward_bias(d_dy.data(), d_db.data());
  TESSERA_CUDA_CHECK(cudaDeviceSynchronize());

  expect_close(d_y.to_host(), to_float(y), label + " y");
  expect_close(d_dx.to_host(), to_float(dx), label + " dx");
  expect_close(d_dw.to_host(), to_float(dw), label + " dw (accumulated)");
  expect_close(d_db.to_host(), to_float(db), label + " db (accumulated)");
}

// (N, C_in, H, W) = (2, 3, 7, 6), 4 filters 3x2, stride (2, 1), padding (1, 0) -> (2, 4, 4, 5).
ConvGeometry geometry_2d() {
  return {2, 3, 4, {7, 6}, {3, 2}, {2, 1}, {1, 0}};
}
// (N, C_in, D, H, W) = (2, 2, 5, 6, 4), 3 filters 3x3x2, stride (2, 1, 2), padding (1, 1, 0)
// -> (2, 3, 3, 6, 2).
ConvGeometry geometry_3d() {
  return {2, 2, 3, {5, 6, 4}, {3, 3, 2}, {2, 1, 2}, {1, 1, 0}};
}

}  // namespace

TEST_F(CudaConv, Conv2dMatchesTheDefinition) {
  CudnnHandle handle;
  Conv2d conv(handle, "conv1", geometry_2d());
  EXPECT_EQ(conv.kind(), "conv2d");
  EXPECT_EQ(conv.input_shape(), (std::vector<Index>{2, 3, 7, 6}));
  EXPECT_EQ(conv.weight_shape(), (std::vector<Index>{4, 3, 3, 2}));
  EXPECT_EQ(conv.bias_shape(), (std::vector<Index>{4}));
  check_all_passes(conv, geometry_2d(), "conv2d");
}

TEST_F(CudaConv, Conv3dMatchesTheDefinition) {
  CudnnHandle handle;
  Conv3d conv(handle, "conv3", geometry_3d());
  EXPECT_EQ(conv.kind(), "conv3d");
  EXPECT_EQ(conv.weight_shape(), (std::vector<Index>{3, 2, 3, 3, 2}));
  check_all_passes(conv, geometry_3d(), "conv3d");
}

TEST_F(CudaConv, TimedDeterministicAlgorithmsOnAStream) {
  Stream stream;
  CudnnHandle handle(stream.get());
  ConvOptions options;
  options.benchmark = true;
  options.deterministic = true;
  Conv2d conv2(handle, "timed2", geometry_2d(), options);
  check_all_passes(conv2, geometry_2d(), "conv2d benchmark+deterministic");
  Conv3d conv3(handle, "timed3", geometry_3d(), options);
  check_all_passes(conv3, geometry_3d(), "conv3d benchmark+deterministic");
}

TEST_F(CudaConv, SetBatchReplansForASmallerBatch) {
  CudnnHandle handle;
  Conv2d conv(handle, "conv1", geometry_2d());
  ConvGeometry last = geometry_2d();
  last.batch = 1;
  conv.set_batch(1);
  EXPECT_EQ(conv.output_shape(), (std::vector<Index>{1, 4, 4, 5}));
  check_all_passes(conv, last, "conv2d batch 1");
  ConvGeometry bigger = geometry_2d();
  bigger.batch = 5;
  conv.set_batch(5);
  check_all_passes(conv, bigger, "conv2d batch 5");
}

TEST_F(CudaConv, ForwardWithoutBias) {
  CudnnHandle handle;
  // One 2x2 filter of ones over a 3x3 input 1..9, no padding: the sums of each 2x2 window.
  Conv2d conv(handle, "ones", {1, 1, 1, {3, 3}, {2, 2}, {}, {}});
  DeviceBuffer<float> x(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9});
  DeviceBuffer<float> w(std::vector<float>{1, 1, 1, 1});
  DeviceBuffer<float> y(4);
  conv.forward(x.data(), w.data(), nullptr, y.data());
  EXPECT_EQ(y.to_host(), (std::vector<float>{12, 16, 24, 28}));
}

TEST_F(CudaConv, BadGeometryAndNullPointersThrowWithTheLayer) {
  CudnnHandle handle;
  try {
    Conv2d conv(handle, "conv1", geometry_3d());
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "conv2d 'conv1': input (5, 6, 4) has 3 extents, expected 2 (H, W)");
  }
  Conv2d conv(handle, "conv1", geometry_2d());
  try {
    conv.forward(nullptr, nullptr, nullptr, nullptr);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "conv2d 'conv1': forward got a null device pointer");
  }
}

TEST_F(CudaConv, MismatchedDescriptorsThrowWithTheCall) {
  CudnnHandle handle;
  cudnnTensorDescriptor_t x_desc = nullptr;
  cudnnTensorDescriptor_t y_desc = nullptr;
  cudnnFilterDescriptor_t w_desc = nullptr;
  cudnnConvolutionDescriptor_t conv_desc = nullptr;
  TESSERA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_desc));
  TESSERA_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_desc));
  TESSERA_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_desc));
  TESSERA_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_desc));
  // x (2, 3, 8, 8) but a filter (4, 5, 3, 3) for 5 input channels; padding 1, stride 1.
  TESSERA_CUDNN_CHECK(
      cudnnSetTensor4dDescriptor(x_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 2, 3, 8, 8));
  TESSERA_CUDNN_CHECK(
      cudnnSetFilter4dDescriptor(w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 4, 5, 3, 3));
  TESSERA_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_desc, 1, 1, 1, 1, 1, 1,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  int n = 0;
  int c = 0;
  int h = 0;
  int w = 0;
  try {
    TESSERA_CUDNN_CHECK(
        cudnnGetConvolution2dForwardOutputDim(conv_desc, x_desc, w_desc, &n, &c, &h, &w));
    ADD_FAILURE() << "no exception for mismatched channels";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("cuDNN call 'cudnnGetConvolution2dForwardOutputDim(conv_desc, x_desc, "
                            "w_desc, &n, &c, &h, &w)' failed: CUDNN_STATUS_BAD_PARAM",
                            0),
              0U)
        << message;
    EXPECT_NE(message.find("[test_gpu_conv.cpp:"), std::string::npos) << message;
  }

  // Matching channels but an output descriptor of the wrong size, (2, 4, 7, 7) for (2, 4, 8, 8).
  TESSERA_CUDNN_CHECK(
      cudnnSetFilter4dDescriptor(w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, 4, 3, 3, 3));
  TESSERA_CUDNN_CHECK(
      cudnnSetTensor4dDescriptor(y_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 2, 4, 7, 7));
  DeviceBuffer<float> x(2 * 3 * 8 * 8);
  DeviceBuffer<float> filter(4 * 3 * 3 * 3);
  DeviceBuffer<float> y(2 * 4 * 7 * 7);
  const float one = 1.0F;
  const float zero = 0.0F;
  try {
    TESSERA_CUDNN_CHECK(cudnnConvolutionForward(
        handle.get(), &one, x_desc, x.data(), w_desc, filter.data(), conv_desc,
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, nullptr, 0, &zero, y_desc, y.data()));
    ADD_FAILURE() << "no exception for a mismatched output descriptor";
  } catch (const Error& e) {
    const std::string message = e.what();
    // The call as the preprocessor spelled it (its spacing follows the source's line breaks).
    EXPECT_EQ(message.rfind("cuDNN call 'cudnnConvolutionForward(", 0), 0U) << message;
    EXPECT_NE(message.find("handle.get(), &one, x_desc, x.data()"), std::string::npos) << message;
    EXPECT_NE(message.find("failed: CUDNN_STATUS_BAD_PARAM"), std::string::npos) << message;
  }
  static_cast<void>(cudnnDestroyConvolutionDescriptor(conv_desc));
  static_cast<void>(cudnnDestroyFilterDescriptor(w_desc));
  static_cast<void>(cudnnDestroyTensorDescriptor(y_desc));
  static_cast<void>(cudnnDestroyTensorDescriptor(x_desc));
}
