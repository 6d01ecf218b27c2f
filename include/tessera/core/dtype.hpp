#pragma once
// Element counts and element types: the part of core/tensor.hpp that needs no Kokkos, so that code
// built without it (the communicators of the GPU-only build, TESSERA_GPU_ONLY) shares them.
#include <cstdint>

namespace tessera {

using Index = std::int64_t;

/// Element type. Only f32 has storage today; bf16 will join with its own view type, and every
/// kernel checks the dtype it is given.
enum class DType { f32 };
/// "float32".
const char* dtype_name(DType dtype);

}  // namespace tessera
