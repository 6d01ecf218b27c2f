#pragma once
// What the MPI backend's communicator test (tests/mpi/test_communicator.cpp) and the NCCL
// backend's (tests/gpu/test_gpu_nccl.cpp) share: the values they give each rank and what the
// collectives must return, computed from the communicator size alone (small integers, exact in
// float, compared with EXPECT_EQ), and the message of an expected error. Kokkos-free: the GPU-only
// build includes it too.
#include "tessera/core/error.hpp"

#include <string>

namespace tessera::testing::collectives {

/// The message (without its location) of the tessera::Error that `f` throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// allreduce: rank r's element i for each reduction.
inline float sum_term(int rank, int i) {
  return static_cast<float>(10 * rank + i);
}
inline float product_term(int rank, int i) {
  return static_cast<float>(rank + 1 + i);
}
inline float min_max_term(int rank, int i) {
  return static_cast<float>(i - rank);
}

// ... and element i of the result over `size` ranks.
inline float allreduce_sum(int size, int i) {
  return static_cast<float>(10 * size * (size - 1) / 2 + size * i);
}
inline float allreduce_product(int size, int i) {
  long long p = 1;
  for (int r = 0; r < size; ++r) {
    p *= r + 1 + i;
  }
  return static_cast<float>(p);
}
inline float allreduce_min(int size, int i) {
  return static_cast<float>(i - (size - 1));
}
inline float allreduce_max(int /*size*/, int i) {
  return static_cast<float>(i);
}

// reduce_scatter: rank r's input element j (of size × count) is 1000 r + j; block b, element k of
// the output is input element j = b count + k summed (or maximised) over the ranks.
inline float scatter_term(int rank, int j) {
  return static_cast<float>(1000 * rank + j);
}
inline float scatter_sum(int size, int j) {
  return static_cast<float>(1000 * size * (size - 1) / 2 + size * j);
}
inline float scatter_max(int size, int j) {
  return static_cast<float>(1000 * (size - 1) + j);
}

}  // namespace tessera::testing::collectives
