#include "tessera/core/dtype.hpp"

namespace tessera {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "float32";
    case DType::f64:
      return "float64";
    case DType::i32:
      return "int32";
    case DType::i64:
      return "int64";
    case DType::u64:
      return "uint64";
    case DType::u8:
      return "uint8";
  }
  return "unknown";
}

std::size_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f64:
    case DType::i64:
    case DType::u64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 1;
}

}  // namespace tessera
