#pragma once
// Element counts and element types: the part of core/tensor.hpp that needs no Kokkos, so that code
// built without it (the communicators of the GPU-only build, TESSERA_GPU_ONLY) shares them.
#include <cstddef>
#include <cstdint>

namespace tessera {

using Index = std::int64_t;

/// Element type. Tensors store f32 (bf16 will join with its own view type, and every kernel checks
/// the dtype it is given); the other types are what collectives also carry: metrics in double,
/// counters and flags as integers, text as bytes.
enum class DType { f32, f64, i32, i64, u64, u8 };
/// "float32", "float64", "int32", "int64", "uint64", "uint8".
const char* dtype_name(DType dtype);
/// Bytes of one element.
std::size_t dtype_bytes(DType dtype);

/// The DType of a C++ element type (float, double, std::int32_t, std::int64_t, std::uint64_t,
/// char/unsigned char as bytes).
template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::f32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::f64;
}
template <>
constexpr DType dtype_of<std::int32_t>() {
  return DType::i32;
}
template <>
constexpr DType dtype_of<std::int64_t>() {
  return DType::i64;
}
template <>
constexpr DType dtype_of<std::uint64_t>() {
  return DType::u64;
}
template <>
constexpr DType dtype_of<unsigned char>() {
  return DType::u8;
}
template <>
constexpr DType dtype_of<char>() {
  return DType::u8;
}

}  // namespace tessera
