#pragma once
// Math functions callable inside Kokkos kernels. Kokkos 3.x keeps them in Kokkos::Experimental,
// Kokkos 4 in Kokkos::; Debian ships 3.4 and sites run 4.x, so kernels call tessera::math::.
#include <Kokkos_Core.hpp>

namespace tessera::math {
#if KOKKOS_VERSION >= 40000
namespace kmath = ::Kokkos;
#else
namespace kmath = ::Kokkos::Experimental;
#endif
using kmath::cos;
using kmath::erf;
using kmath::exp;
using kmath::fabs;
using kmath::log;
using kmath::sqrt;
using kmath::tanh;
}  // namespace tessera::math
