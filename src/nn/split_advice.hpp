#pragma once
// What ends a split before a layer that needs whole samples (or whole rows): the words of the
// errors of Layer::require_whole and LayerNorm::place_input. Private to src/nn.
#include "tessera/core/layout.hpp"

#include <string>

namespace tessera::nn::detail {

/// "a global_avgpool joins the spatial tiles" when `input` is split over a spatial axis, else
/// "a linear with split = \"input\" joins the tensor axis's blocks".
inline std::string join_advice(const Layout& input) {
  const AxisSet spatial{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
  return !(input.split_axes() & spatial).empty()
             ? "a global_avgpool joins the spatial tiles"
             : "a linear with split = \"input\" joins the tensor axis's blocks";
}

}  // namespace tessera::nn::detail
