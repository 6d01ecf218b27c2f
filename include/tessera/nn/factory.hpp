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

/// The units a pipeline cuts a model into: its top-level layers, a `repeat` counted as its
/// repetitions (a transformer's blocks are cut between blocks).
struct PipelineUnit {
  size_t layer = 0;              ///< index in the deck's layer list
  std::int64_t repetition = -1;  ///< the repetition of a `repeat`; -1: the whole layer
};
std::vector<PipelineUnit> pipeline_units(const std::vector<LayerSpec>& layers);

/// A pipeline stage: the units [first, end) of `layers` (pipeline_units' order) of a model on
/// samples of `model_input`, as a chain on samples of global shape `input` placed as
/// `input_layout` (what the units before it give), named as make_model names them — layer i
/// `name_of(i)`, repetition r of a `repeat` "<name>.<r>" inside a `repeat` of that name — so that
/// parameter names, and the checkpoint, do not depend on the cut. Only the stage's layers are
/// built (allocated, with a grid context). A `tied_head` whose embedding (the model's first
/// layer) is on an earlier stage holds a copy of it (TiedHead::hold).
std::unique_ptr<Sequential> make_stage(const std::vector<LayerSpec>& layers,
                                       const Shape& model_input, const Shape& input,
                                       const Layout& input_layout, size_t first, size_t end,
                                       const BuildContext& context,
                                       const std::function<std::string(size_t)>& name_of);

/// An estimate of the floating-point operations of `layer`'s forward pass on one sample of global
/// shape `input` (multiply-adds count 2; element-wise work one per output element): the cost
/// `tessera check` prints and the pipeline's `auto` cut balances (a backward costs about twice).
double forward_flops(Layer& layer, const Shape& input);

/// Every layer type a deck may name.
std::vector<std::string> layer_kinds();
/// The options `kind` accepts (empty for an unknown kind).
std::vector<std::string> layer_options(const std::string& kind);

}  // namespace tessera::nn
