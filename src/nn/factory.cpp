#include "tessera/nn/factory.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/nn/activation.hpp"
#include "tessera/nn/attention.hpp"
#include "tessera/nn/conv.hpp"
#include "tessera/nn/dropout.hpp"
#include "tessera/nn/embedding.hpp"
#include "tessera/nn/flatten.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/norm.hpp"
#include "tessera/nn/pooling.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/nn/spatial.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <set>

namespace tessera::nn {
namespace {

// Reads typed options out of a spec, remembering which were read so that the rest are reported
// as unknown.
class Options {
 public:
  Options(const LayerSpec& spec, std::string layer) : m_spec(spec), m_layer(std::move(layer)) {}

  /// A required option absent: a misspelling of it written instead is reported as such.
  Error missing(const std::string& key) const {
    for (const auto& [written, value] : m_spec.options) {
      if (m_read.count(written) == 0 && closest_match(written, {key}) == key) {
        return error(fmt::format("unknown option '{}' (did you mean '{}'?)", written, key));
      }
    }
    return error(fmt::format("option '{}' is required", key));
  }

  Error error(const std::string& what) const {
    return input_error(m_layer + ": " + what, m_spec.where);
  }

  std::int64_t integer(const std::string& key, std::optional<std::int64_t> fallback = {}) {
    const OptionValue* v = find(key);
    if (v == nullptr) {
      return required(key, fallback);
    }
    if (const auto* i = std::get_if<std::int64_t>(v)) {
      return *i;
    }
    throw error(fmt::format("option '{}' must be an integer, got {}", key, describe(*v)));
  }

  std::vector<Index> integers(const std::string& key, std::vector<Index> fallback = {}) {
    const OptionValue* v = find(key);
    if (v == nullptr) {
      return fallback;
    }
    if (const auto* i = std::get_if<std::int64_t>(v)) {
      return {*i};
    }
    if (const auto* list = std::get_if<std::vector<std::int64_t>>(v)) {
      if (list->empty()) {
        throw error(
            fmt::format("option '{}' is an empty list: give one value, or one per "
                        "spatial dimension",
                        key));
      }
      return {list->begin(), list->end()};
    }
    throw error(fmt::format("option '{}' must be an integer or a list of integers, got {}", key,
                            describe(*v)));
  }

  double real(const std::string& key, double fallback) {
    const OptionValue* v = find(key);
    if (v == nullptr) {
      return fallback;
    }
    if (const auto* d = std::get_if<double>(v)) {
      if (!std::isfinite(*d)) {
        throw error(fmt::format("option {} = {} must be a finite number", key, *d));
      }
      // Layers keep their options in float: a larger value would become infinity there.
      if (std::abs(*d) > static_cast<double>(std::numeric_limits<float>::max())) {
        throw error(fmt::format("option {} = {} is beyond a float's range (±{:g})", key, *d,
                                static_cast<double>(std::numeric_limits<float>::max())));
      }
      return *d;
    }
    if (const auto* i = std::get_if<std::int64_t>(v)) {
      return static_cast<double>(*i);
    }
    throw error(fmt::format("option '{}' must be a number, got {}", key, describe(*v)));
  }

  /// One of `choices` (the first is the default).
  std::string choice(const std::string& key, const std::vector<std::string>& choices) {
    const OptionValue* v = find(key);
    if (v == nullptr) {
      return choices.front();
    }
    const auto* text = std::get_if<std::string>(v);
    if (text == nullptr) {
      throw error(
          fmt::format("option '{}' must be one of {}, got {}", key, join(choices), describe(*v)));
    }
    if (std::find(choices.begin(), choices.end(), *text) == choices.end()) {
      const std::string near = closest_match(*text, choices);
      throw error(fmt::format("option {} = \"{}\" is not one of {}{}", key, *text, join(choices),
                              near.empty() ? "" : " (did you mean \"" + near + "\"?)"));
    }
    return *text;
  }

  bool boolean(const std::string& key, bool fallback) {
    const OptionValue* v = find(key);
    if (v == nullptr) {
      return fallback;
    }
    if (const auto* b = std::get_if<bool>(v)) {
      return *b;
    }
    throw error(fmt::format("option '{}' must be true or false, got {}", key, describe(*v)));
  }

  /// The layer's spec (a composite's children are spec().layers).
  const LayerSpec& spec() const { return m_spec; }

  /// After the builder has read what it knows: any option left is unknown.
  void reject_unread(const std::vector<std::string>& accepted) const {
    for (const auto& [key, value] : m_spec.options) {
      if (m_read.count(key) == 0) {
        const std::string near = closest_match(key, accepted);
        throw error(fmt::format("unknown option '{}'{}; {} takes {}", key,
                                near.empty() ? "" : " (did you mean '" + near + "'?)", m_spec.kind,
                                accepted.empty() ? "no options" : join(accepted)));
      }
    }
  }

 private:
  const OptionValue* find(const std::string& key) {
    m_read.insert(key);
    const auto it = m_spec.options.find(key);
    return it == m_spec.options.end() ? nullptr : &it->second;
  }
  std::int64_t required(const std::string& key, std::optional<std::int64_t> fallback) const {
    if (!fallback) {
      throw missing(key);
    }
    return *fallback;
  }
  static std::string describe(const OptionValue& v) { return to_toml(v); }

  const LayerSpec& m_spec;
  std::string m_layer;
  std::set<std::string> m_read;
};

using Builder = std::function<std::unique_ptr<Layer>(Options&, const std::string&, const Shape&,
                                                     const BuildContext&)>;
struct Kind {
  std::vector<std::string> options;
  Builder build;
};

ConvOptions conv_options(Options& o) {
  ConvOptions c;
  c.out = o.integer("out");
  c.kernel = o.integers("kernel");
  if (c.kernel.empty()) {
    throw o.missing("kernel");
  }
  c.stride = o.integers("stride");
  c.pad = o.integers("pad");
  c.bias = o.boolean("bias", true);
  return c;
}

PoolOptions pool_options(Options& o) {
  PoolOptions p;
  p.kernel = o.integers("kernel");
  if (p.kernel.empty()) {
    throw o.missing("kernel");
  }
  p.stride = o.integers("stride");
  p.pad = o.integers("pad");
  return p;
}

template <class L>
Kind pool(std::vector<std::string> opts = {"kernel", "stride", "pad"}) {
  return {std::move(opts),
          [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
            return std::make_unique<L>(name, in, pool_options(o), ctx);
          }};
}

template <class L>
Kind conv() {
  return {{"out", "kernel", "stride", "pad", "bias"},
          [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
            return std::make_unique<L>(name, in, conv_options(o), ctx);
          }};
}

Kind activation(kernels::ActivationKind kind, bool slope) {
  return {
      slope ? std::vector<std::string>{"negative_slope"} : std::vector<std::string>{},
      [kind, slope](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
        ActivationOptions a;
        a.kind = kind;
        if (slope) {
          a.negative_slope = static_cast<float>(o.real("negative_slope", 0.01));
        }
        return std::make_unique<Activation>(name, in, a, ctx);
      }};
}

template <class L>
Kind batchnorm() {
  return {{"momentum", "eps", "sync"},
          [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
            BatchNormOptions b;
            b.momentum = static_cast<float>(o.real("momentum", 0.1));
            b.eps = static_cast<float>(o.real("eps", 1e-5));
            b.sync = o.boolean("sync", false);
            return std::make_unique<L>(name, in, b, ctx);
          }};
}

// The chain of a composite layer's children, named "<name>.<kind><j>", each built at the place
// of `ctx` for the output of the one before it; placed when the composite is.
std::unique_ptr<Sequential> chain_of(Options& o, const std::string& name, const Shape& in,
                                     const BuildContext& ctx) {
  const std::vector<LayerSpec>& children = o.spec().layers;
  if (children.empty()) {
    throw o.missing("layers");
  }
  auto chain = std::make_unique<Sequential>(name, in, ctx);
  for (size_t j = 0; j < children.size(); ++j) {
    const LayerSpec& c = children[j];
    auto layer = make_layer(c, fmt::format("{}.{}{}", name, c.kind, j), chain->output_shape(), ctx);
    try {
      tie_to_model(*layer, *chain);
      chain->append(std::move(layer));
    } catch (const Error& e) {
      throw input_error(e.message(), e.where().empty() ? c.where : e.where());
    }
  }
  return chain;
}

const std::map<std::string, Kind>& kinds() {
  static const std::map<std::string, Kind> table = [] {
    std::map<std::string, Kind> t;
    t["linear"] = {
        {"out", "bias", "split"},
        [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
          LinearOptions l;
          l.out = o.integer("out");
          l.bias = o.boolean("bias", true);
          const std::string split = o.choice("split", {"none", "output", "input"});
          l.split = split == "output"  ? LinearSplit::output
                    : split == "input" ? LinearSplit::input
                                       : LinearSplit::none;
          return std::make_unique<Linear>(name, in, l, ctx);
        }};
    t["conv2d"] = conv<Conv2d>();
    t["conv3d"] = conv<Conv3d>();
    t["maxpool2d"] = pool<MaxPool2d>();
    t["maxpool3d"] = pool<MaxPool3d>();
    t["avgpool2d"] = pool<AvgPool2d>();
    t["avgpool3d"] = pool<AvgPool3d>();
    t["global_avgpool"] = {
        {}, [](Options&, const std::string& name, const Shape& in, const BuildContext& ctx) {
          return std::make_unique<GlobalAvgPool>(name, in, GlobalAvgPoolOptions{}, ctx);
        }};
    t["batchnorm2d"] = batchnorm<BatchNorm2d>();
    t["batchnorm3d"] = batchnorm<BatchNorm3d>();
    t["layernorm"] = {
        {"eps"}, [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
          LayerNormOptions l;
          l.eps = static_cast<float>(o.real("eps", 1e-5));
          return std::make_unique<LayerNorm>(name, in, l, ctx);
        }};
    t["relu"] = activation(kernels::ActivationKind::relu, false);
    t["leaky_relu"] = activation(kernels::ActivationKind::leaky_relu, true);
    t["gelu"] = activation(kernels::ActivationKind::gelu, false);
    t["tanh"] = activation(kernels::ActivationKind::tanh, false);
    t["sigmoid"] = activation(kernels::ActivationKind::sigmoid, false);
    t["dropout"] = {
        {"p"}, [](Options& o, const std::string& name, const Shape& in, const BuildContext& ctx) {
          DropoutOptions d;
          d.p = static_cast<float>(o.real("p", 0.5));
          return std::make_unique<Dropout>(name, in, d, ctx);
        }};
    // A language model's layers: token + position embedding, causal multi-head self-attention;
    // both split over the tensor axis with split = true (vocabulary rows; heads).
    t["embedding"] = {{"vocab", "dim", "positions", "split"},
                      [](Options& o, const std::string& name, const Shape& in,
                         const BuildContext& ctx) -> std::unique_ptr<Layer> {
                        EmbeddingOptions e;
                        e.vocab = o.integer("vocab");
                        e.dim = o.integer("dim");
                        e.positions = o.integer("positions", in.empty() ? 0 : in[0]);
                        e.split = o.boolean("split", false);
                        return std::make_unique<Embedding>(name, in, e, ctx);
                      }};
    t["tied_head"] = {{},
                      [](Options&, const std::string& name, const Shape& in,
                         const BuildContext& ctx) -> std::unique_ptr<Layer> {
                        return std::make_unique<TiedHead>(name, in, ctx);
                      }};
    t["attention"] = {{"heads", "bias", "split"},
                      [](Options& o, const std::string& name, const Shape& in,
                         const BuildContext& ctx) -> std::unique_ptr<Layer> {
                        AttentionOptions a;
                        a.heads = o.integer("heads");
                        a.bias = o.boolean("bias", true);
                        a.split = o.boolean("split", false);
                        return std::make_unique<CausalSelfAttention>(name, in, a, ctx);
                      }};
    // Composites: y = x + body(x), and `times` copies of a chain one after the other (a
    // transformer's blocks written once).
    t["residual"] = {{"layers"},
                     [](Options& o, const std::string& name, const Shape& in,
                        const BuildContext& ctx) -> std::unique_ptr<Layer> {
                       return std::make_unique<Residual>(name, in, chain_of(o, name, in, ctx), ctx);
                     }};
    t["repeat"] = {
        {"times", "layers"},
        [](Options& o, const std::string& name, const Shape& in,
           const BuildContext& ctx) -> std::unique_ptr<Layer> {
          const std::int64_t times = o.integer("times");
          if (times < 1 || times > 100000) {
            throw o.error(fmt::format("option times = {} must be in [1, 100000]", times));
          }
          auto all = std::make_unique<Sequential>(name, in, ctx, "repeat");
          for (std::int64_t r = 0; r < times; ++r) {
            all->append(chain_of(o, fmt::format("{}.{}", name, r), all->output_shape(), ctx));
          }
          return all;
        }};
    t["flatten"] = {{},
                    [](Options&, const std::string& name, const Shape& in, const BuildContext&) {
                      return std::make_unique<Flatten>(name, in);
                    }};
    return t;
  }();
  return table;
}

}  // namespace

std::string to_toml(const OptionValue& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, std::string>) {
          std::string out = "\"";
          for (char c : x) {
            if (c == '"' || c == '\\') {
              out += '\\';
            }
            out += c;
          }
          return out + "\"";
        } else if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) {
          return fmt::format("[{}]", fmt::join(x, ", "));
        } else if constexpr (std::is_same_v<T, double>) {
          const std::string text = fmt::format("{}", x);
          return text.find_first_of(".eEn") == std::string::npos ? text + ".0" : text;
        } else {
          return fmt::format("{}", x);
        }
      },
      v);
}

namespace {
Embedding* first_embedding(Layer& layer) {
  if (auto* e = dynamic_cast<Embedding*>(&layer)) {
    return e;
  }
  for (Layer* child : layer.children()) {
    if (Embedding* e = first_embedding(*child)) {
      return e;
    }
  }
  return nullptr;
}

// An embedding looks its input up as token ids: the model's own input, so it must be the model's
// first layer (`index` 0, not inside a composite). Anything before it would hand it values that
// are no token ids (a LayerNorm's or tanh's outputs).
void require_embedding_first(Layer& layer, size_t index, const LayerSpec& spec) {
  Embedding* e = first_embedding(layer);
  if (e != nullptr && (index > 0 || e != &layer)) {
    throw input_error(
        fmt::format("embedding '{}' looks up the model's input token ids: it must be the "
                    "model's first layer, not inside another layer or after one",
                    e->name()),
        spec.where);
  }
}
}  // namespace

void tie_to_model(Layer& layer, Layer& model) {
  auto* head = dynamic_cast<TiedHead*>(&layer);
  if (head == nullptr) {
    return;
  }
  Embedding* e = first_embedding(model);
  if (e == nullptr) {
    throw Error(
        fmt::format("tied_head '{}' ties the head to the model's embedding, but there is "
                    "no embedding before it",
                    head->name()));
  }
  head->bind(*e);
}

std::unique_ptr<Sequential> make_model(const std::vector<LayerSpec>& layers, const Shape& input,
                                       const BuildContext& context,
                                       const std::function<std::string(size_t)>& name_of) {
  auto model = std::make_unique<Sequential>("model", input, context);
  // On a grid with spatial axes each rank holds its tile of every sample.
  const Layout tiles = spatial_input_layout(input, context.place());
  if (!tiles.is_replicated()) {
    model->place_input(tiles);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    auto layer = make_layer(layers[i], name_of(i), model->output_shape(), context);
    require_embedding_first(*layer, i, layers[i]);
    try {
      tie_to_model(*layer, *model);
      model->add(std::move(layer));
    } catch (const Error& e) {
      throw input_error(e.message(), layers[i].where);
    }
  }
  return model;
}

std::vector<PipelineUnit> pipeline_units(const std::vector<LayerSpec>& layers) {
  std::vector<PipelineUnit> units;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::int64_t times = 0;
    if (layers[i].kind == "repeat") {
      const auto it = layers[i].options.find("times");
      if (it != layers[i].options.end()) {
        if (const auto* t = std::get_if<std::int64_t>(&it->second)) {
          times = *t;
        }
      }
    }
    if (times < 1) {
      units.push_back({i, -1});
      continue;
    }
    for (std::int64_t r = 0; r < times; ++r) {
      units.push_back({i, r});
    }
  }
  return units;
}

std::unique_ptr<Sequential> make_stage(const std::vector<LayerSpec>& layers,
                                       const Shape& model_input, const Shape& input,
                                       const Layout& input_layout, size_t first, size_t end,
                                       const BuildContext& context,
                                       const std::function<std::string(size_t)>& name_of) {
  const std::vector<PipelineUnit> units = pipeline_units(layers);
  TESSERA_CHECK(first < end && end <= units.size(), "pipeline stage of units [{}, {}) of {}", first,
                end, units.size());
  auto stage = std::make_unique<Sequential>("model", input, context);
  for (size_t u = first; u < end;) {
    const size_t index = units[u].layer;
    const LayerSpec& spec = layers[index];
    const std::string name = name_of(index);
    std::unique_ptr<Layer> layer;
    if (units[u].repetition < 0) {
      layer = make_layer(spec, name, stage->output_shape(), context);
      ++u;
    } else {  // this stage's repetitions of a `repeat`, in a `repeat` of the same name
      Options o(spec, fmt::format("{} '{}'", spec.kind, name));
      auto part = std::make_unique<Sequential>(name, stage->output_shape(), context, "repeat");
      for (; u < end && units[u].layer == index; ++u) {
        part->append(chain_of(o, fmt::format("{}.{}", name, units[u].repetition),
                              part->output_shape(), context));
      }
      layer = std::move(part);
    }
    require_embedding_first(*layer, index, spec);
    try {
      auto* head = dynamic_cast<TiedHead*>(layer.get());
      if (head != nullptr && first_embedding(*stage) == nullptr && first > 0) {
        // Its embedding is on an earlier stage: the head holds a copy, the trainer keeps the two
        // equal. The model's first layer is that embedding (on the model's input).
        if (layers.empty() || layers[0].kind != "embedding" || index == 0) {
          throw input_error(fmt::format("tied_head '{}' ties the head to the model's embedding, "
                                        "but on its pipeline stage there is none before it and "
                                        "the model's first layer is not one",
                                        name),
                            spec.where);
        }
        std::unique_ptr<Layer> copy = make_layer(layers[0], name_of(0), model_input, context);
        head->hold(std::unique_ptr<Embedding>(static_cast<Embedding*>(copy.release())));
      } else {
        tie_to_model(*layer, *stage);
      }
      stage->append(std::move(layer));
    } catch (const Error& e) {
      throw input_error(e.message(), e.where().empty() ? spec.where : e.where());
    }
  }
  stage->place_input(input_layout);
  return stage;
}

double forward_flops(Layer& layer, const Shape& input) {
  const std::string kind = layer.kind();
  const Shape output = layer.output_shape(input);
  const auto out = static_cast<double>(numel(output));
  if (kind == "sequential" || kind == "repeat") {
    double sum = 0.0;
    Shape at = input;
    for (Layer* child : layer.children()) {
      sum += forward_flops(*child, at);
      at = child->output_shape(at);
    }
    return sum;
  }
  if (kind == "residual") {
    return forward_flops(*layer.children().at(0), input) + out;
  }
  if (auto* linear = dynamic_cast<Linear*>(&layer)) {
    return 2.0 * static_cast<double>(numel(input)) * static_cast<double>(linear->out_features());
  }
  if (kind == "attention" && input.size() == 2) {
    // qkv and the projection, then the causal half of the scores and of their product with v.
    const auto t = static_cast<double>(input[0]);
    const auto c = static_cast<double>(input[1]);
    return 2.0 * t * c * 4.0 * c + 2.0 * t * t * c;
  }
  if ((kind == "conv2d" || kind == "conv3d") && !layer.parameters().empty() && !output.empty()) {
    const Shape& w = layer.parameters()[0].layout.global_shape();  // (out, in, k...)
    return 2.0 * out * static_cast<double>(numel(w)) / static_cast<double>(w[0]);
  }
  if (kind == "tied_head" && !input.empty()) {
    return 2.0 * out * static_cast<double>(input.back());
  }
  return out;  // element-wise, normalisation, pooling, a lookup
}

std::vector<std::string> layer_kinds() {
  std::vector<std::string> out;
  for (const auto& [name, kind] : kinds()) {
    out.push_back(name);
  }
  return out;
}

std::vector<std::string> layer_options(const std::string& kind) {
  const auto it = kinds().find(kind);
  return it == kinds().end() ? std::vector<std::string>{} : it->second.options;
}

std::unique_ptr<Layer> make_layer(const LayerSpec& spec, const std::string& name,
                                  const Shape& input, const BuildContext& context) {
  const auto it = kinds().find(spec.kind);
  if (it == kinds().end()) {
    const std::string near = closest_match(spec.kind, layer_kinds());
    throw input_error(
        fmt::format("unknown layer type '{}'{}; known types: {}", spec.kind,
                    near.empty() ? "" : " (did you mean '" + near + "'?)", join(layer_kinds())),
        spec.where);
  }
  Options options(spec, fmt::format("{} '{}'", spec.kind, name));
  std::unique_ptr<Layer> layer;
  try {
    layer = it->second.build(options, name, input, context);
  } catch (const Error& e) {
    if (!e.where().empty()) {
      throw;
    }
    // The layer's own validation (shapes, ranges): attach where in the deck it came from.
    throw input_error(e.message(), spec.where);
  }
  options.reject_unread(it->second.options);
  return layer;
}

}  // namespace tessera::nn
