#pragma once
// Checks shared by the kernel sources (not part of the public API).
#include "tessera/core/check.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::kernels::detail {

/// Throws unless x and y hold the same number of elements; `op` names the kernel.
inline void check_same_size(const Tensor& x, const Tensor& y, const char* op) {
  TESSERA_CHECK(x.numel() == y.numel(), "{}: '{}' {} and '{}' {} differ in size", op, x.label(),
                to_string(x.shape()), y.label(), to_string(y.shape()));
}

}  // namespace tessera::kernels::detail
