// The host-only parts of the CUDA backend, which run with or without a device: the check macros
// (calls that fail the same way everywhere), device_count() and the convolution geometry checks.
#include "gpu_test.hpp"
#include "tessera/core/error.hpp"
#include "tessera/kernels/cuda/check.hpp"
#include "tessera/kernels/cuda/conv.hpp"
#include "tessera/kernels/cuda/device.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::kernels::cuda;
using tessera::testing::error_message;

TEST(CudaCheck, FailingRuntimeCallThrowsWithCallStatusAndLine) {
  // An invalid ordinal fails with or without a device (the status differs: no driver here).
  const cudaError_t status = cudaSetDevice(-1);
  ASSERT_NE(status, cudaSuccess);
  static_cast<void>(cudaGetLastError());
  int line = 0;
  const std::string message = error_message([&] {
    line = __LINE__ + 1;
    TESSERA_CUDA_CHECK(cudaSetDevice(-1));
  });
  EXPECT_EQ(message, std::string("CUDA call 'cudaSetDevice(-1)' failed: ") +
                         cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                         ") [test_gpu_check.cpp:" + std::to_string(line) + "]");
  if (device_count() > 0) {
    // The check cleared the runtime's error (without a driver, every call reports it again).
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  }
}

TEST(CudaCheck, FailingCublasCallThrowsWithCallAndStatus) {
  // A null handle is refused before any device work.
  const float one = 1.0F;
  int line = 0;
  const std::string message = error_message([&] {
    line = __LINE__ + 1;
    TESSERA_CUBLAS_CHECK(cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, nullptr, 1,
                                     nullptr, 1, &one, nullptr, 1));
  });
  EXPECT_EQ(message,
            std::string("cuBLAS call 'cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, "
                        "&one, nullptr, 1, nullptr, 1, &one, nullptr, 1)' failed: ") +
                cublasGetStatusName(CUBLAS_STATUS_NOT_INITIALIZED) + " (" +
                cublasGetStatusString(CUBLAS_STATUS_NOT_INITIALIZED) +
                ") [test_gpu_check.cpp:" + std::to_string(line) + "]");
}

TEST(CudaCheck, FailingCudnnCallThrowsWithCallAndStatus) {
  // cudnnCreate with nowhere to put the handle: a bad parameter with or without a device.
  int line = 0;
  const std::string message = error_message([&] {
    line = __LINE__ + 1;
    TESSERA_CUDNN_CHECK(cudnnCreate(nullptr));
  });
  // Then cuDNN's own detail, which varies between versions: "(handle == __null)" in 9.19.
  const std::string prefix = "cuDNN call 'cudnnCreate(nullptr)' failed: CUDNN_STATUS_BAD_PARAM";
  EXPECT_EQ(message.substr(0, prefix.size()), prefix) << message;
  const std::string suffix = "[test_gpu_check.cpp:" + std::to_string(line) + "]";
  ASSERT_GE(message.size(), suffix.size());
  EXPECT_EQ(message.substr(message.size() - suffix.size()), suffix) << message;
}

TEST(CudaDevice, DeviceCountNeverThrowsAndAgreesWithTheReason) {
  int count = -1;
  EXPECT_NO_THROW(count = device_count());
  EXPECT_GE(count, 0);
  EXPECT_EQ(no_device_reason().empty(), count > 0) << no_device_reason();
  if (count > 0) {
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // no error left behind by the query
  }
}

TEST(ConvGeometry, OutputShapes) {
  ConvGeometry g2{2, 3, 4, {7, 6}, {3, 2}, {2, 1}, {1, 0}};
  EXPECT_EQ(conv_output_shape("conv2d", "c", 2, g2), (std::vector<Index>{2, 4, 4, 5}));
  ConvGeometry same{1, 1, 8, {5, 5}, {3, 3}, {}, {1, 1}};
  EXPECT_EQ(conv_output_shape("conv2d", "c", 2, same), (std::vector<Index>{1, 8, 5, 5}));
  ConvGeometry g3{2, 2, 3, {5, 6, 4}, {3, 3, 2}, {2, 1, 2}, {1, 1, 0}};
  EXPECT_EQ(conv_output_shape("conv3d", "c", 3, g3), (std::vector<Index>{2, 3, 3, 6, 2}));
}

TEST(ConvGeometry, BadGeometryThrowsWithKindNameAndShapes) {
  ConvGeometry wrong_rank{8, 3, 16, {28, 28, 28}, {3, 3}, {}, {}};
  EXPECT_EQ(error_message([&] { conv_output_shape("conv2d", "conv1", 2, wrong_rank); }),
            "conv2d 'conv1': input (28, 28, 28) has 3 extents, expected 2 (H, W)");
  ConvGeometry too_big{8, 3, 16, {4, 4}, {7, 7}, {}, {1, 1}};
  EXPECT_EQ(error_message([&] { conv_output_shape("conv2d", "conv1", 2, too_big); }),
            "conv2d 'conv1': kernel (7, 7) is larger than the input (4, 4) with padding (1, 1)");
  ConvGeometry zero_stride{8, 3, 16, {4, 4, 4}, {3, 3, 3}, {1, 0, 1}, {}};
  EXPECT_EQ(error_message([&] { conv_output_shape("conv3d", "c3", 3, zero_stride); }),
            "conv3d 'c3': input (4, 4, 4) and kernel (3, 3, 3) need extents >= 1, stride (1, 0, 1) "
            ">= 1, padding (0, 0, 0) >= 0");
  ConvGeometry huge{2, 1000, 16, {100000, 100000}, {3, 3}, {}, {1, 1}};
  EXPECT_EQ(error_message([&] { conv_output_shape("conv2d", "conv1", 2, huge); }),
            "conv2d 'conv1': input (2, 1000, 100000, 100000), output (2, 16, 100000, 100000) or "
            "weight (16, 1000, 3, 3) exceeds cuDNN's int extents");
  ConvGeometry no_channels{8, 0, 16, {4, 4}, {3, 3}, {}, {}};
  EXPECT_EQ(error_message([&] { conv_output_shape("conv2d", "conv1", 2, no_channels); }),
            "conv2d 'conv1': batch 8, in_channels 0 and out_channels 16 must all be >= 1");
  EXPECT_EQ(error_message([&] { conv_output_shape("conv1d", "c", 1, no_channels); }),
            "conv1d 'c': 1 spatial dimensions; cuDNN convolutions here take 2 (H, W) or 3 (D, H, "
            "W)");
}
