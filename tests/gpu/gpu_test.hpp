#pragma once
// Shared by the gpu tests: the fixture that skips where no CUDA device exists, random data, and the
// message of an expected error.
#include "tessera/core/error.hpp"
#include "tessera/kernels/cuda/device.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <random>
#include <string>
#include <vector>

namespace tessera::testing {

/// Skips every test of the fixture, with the runtime's reason, when cudaGetDeviceCount fails or
/// finds no device.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda::device_count() == 0) {
      GTEST_SKIP() << "no CUDA device: " << kernels::cuda::no_device_reason();
    }
  }
};

/// `count` values uniform in [-1, 1), reproducible from `seed`.
inline std::vector<float> random_values(std::size_t count, unsigned int seed) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> uniform(-1.0F, 1.0F);
  std::vector<float> values(count);
  for (float& v : values) {
    v = uniform(engine);
  }
  return values;
}

/// The what() of the tessera::Error that `f` throws ("" when it throws none).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace tessera::testing
