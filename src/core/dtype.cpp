#include "tessera/core/dtype.hpp"

namespace tessera {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "float32";
  }
  return "unknown";
}

}  // namespace tessera
