#include "tessera/nn/build_context.hpp"

#include "tessera/core/check.hpp"

namespace tessera::nn {

const char* device_name(Device device) {
  return device == Device::host ? "host" : "cuda";
}

comm::Communicator& BuildContext::axis(GridAxis axis) const {
  TESSERA_CHECK(m_grid != nullptr, "layer built without a process grid has no {} communicator",
                axis_name(axis));
  return m_grid->axis(axis);
}

}  // namespace tessera::nn
