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

comm::Communicator* BuildContext::axes(AxisSet axes) const {
  AxisSet wide;
  for (GridAxis a : axes.axes()) {
    if (size(a) > 1) {
      wide = wide | AxisSet{a};
    }
  }
  if (wide.empty()) {
    return nullptr;
  }
  TESSERA_CHECK(m_grid != nullptr, "layer built without a process grid has no {} communicator",
                wide.to_string());
  return &m_grid->axes(wide);
}

}  // namespace tessera::nn
