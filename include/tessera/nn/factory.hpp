#pragma once
// Layers built from their deck description: a type name and a table of options, as the deck writes
// `{ conv2d = { out = 32, kernel = 3, pad = 1 } }`. Every mistake — an unknown type or option, an
// option of the wrong type, a value out of range, an input shape the layer cannot take — is a
// tessera::Error (exit code 2) carrying the deck location and naming the layer and the shapes.
#include "tessera/core/error.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/sequential.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace tessera::nn {

/// One option value as a deck can write it.
using OptionValue =
    std::variant<bool, std::int64_t, double, std::string, std::vector<std::int64_t>>;

struct LayerSpec {
  std::string kind;                            ///< "conv2d"
  std::map<std::string, OptionValue> options;  ///< {"out": 32, "kernel": 3}
  DeckLocation where;                          ///< deck file, line, key ("model.layers[3]")
  /// A composite layer's children (`residual`, `repeat`): its option `layers`, in order.
  std::vector<LayerSpec> layers;
};

/// `v` as TOML writes it: 3, 0.5 (a float always with a point), true, "relu", [3, 3].
std::string to_toml(const OptionValue& v);

/// Builds the layer `spec` describes, named `name`, for samples of (global) shape `input`, at the
/// grid place of `context` (one rank by default).
std::unique_ptr<Layer> make_layer(const LayerSpec& spec, const std::string& name,
                                  const Shape& input, const BuildContext& context = {});

/// A model: the chain of `layers` on samples of (global) shape `input` at the place of `context`,
/// layer i named `name_of(i)`, each placed as it is added (a `tied_head` tied first). An error of
/// a layer is thrown at its spec's location. The deck's parser and the trainer build through it.
std::unique_ptr<Sequential> make_model(const std::vector<LayerSpec>& layers, const Shape& input,
                                       const BuildContext& context,
                                       const std::function<std::string(size_t)>& name_of);

/// Ties `layer`, when it is a `tied_head`, to the first embedding (depth first) among the layers
/// already in `model`; does nothing to other layers. Throws, naming the head, when there is none.
/// Called on each layer of a model before it is added.
void tie_to_model(Layer& layer, Layer& model);

/// Every layer type a deck may name.
std::vector<std::string> layer_kinds();
/// The options `kind` accepts (empty for an unknown kind).
std::vector<std::string> layer_options(const std::string& kind);

}  // namespace tessera::nn
