#pragma once
// Composite layers: Sequential (a chain) and Residual (y = x + body(x)). Both are Layers, so blocks
// nest: a ResNet or transformer block is a Residual around a Sequential, and a model is a
// Sequential of blocks.
#include "tessera/nn/layer.hpp"

#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace tessera::nn {

class Sequential final : public Layer {
 public:
  /// An empty chain taking whole samples of shape `input`; `context` gives the place that turns
  /// its layers' layouts into the local shapes forward() checks.
  Sequential(std::string name, Shape input, BuildContext context = {},
             const char* kind = "sequential");

  /// Appends `layer`, whose input must be the chain's current output shape, and places it on the
  /// chain's current output layout. Returns it.
  Layer& add(std::unique_ptr<Layer> layer);
  /// Appends `layer` checking its shape only: the chain of a composite layer, whose placements are
  /// known once the composite itself is placed (place_input places every layer then).
  Layer& append(std::unique_ptr<Layer> layer);
  /// Constructs L(name, <current output shape>, args...) at the end of the chain.
  template <class L, class... Args>
  L& emplace(std::string layer_name, Args&&... args) {
    auto layer = std::make_unique<L>(std::move(layer_name), m_output, std::forward<Args>(args)...);
    L& ref = *layer;
    add(std::move(layer));
    return ref;
  }

  /// "sequential", or the deck's name of the composite it makes ("repeat").
  const char* kind() const override { return m_kind; }
  Shape output_shape(const Shape& input) const override;
  /// Places every layer in turn (they were placed on a whole input when added).
  Layout place_input(const Layout& input) override;
  const Shape& input_shape() const { return m_input; }
  const Shape& output_shape() const { return m_output; }
  /// How the chain's input samples are placed on the grid (whole unless place_input said else).
  const Layout& input_layout() const { return m_input_layout; }
  /// How the chain's output samples are placed on the grid (whole unless its last layer splits).
  const Layout& output_layout() const { return m_output_layout; }
  std::size_t size() const { return m_layers.size(); }
  Layer& operator[](std::size_t i) { return *m_layers.at(i); }

  /// Called during backward() as soon as a layer's gradients are final (last layer first), so
  /// that their reduction can start while the earlier layers still compute (data parallelism).
  using BackwardHook = std::function<void(Layer&)>;
  void set_backward_hook(BackwardHook hook) { m_backward_hook = std::move(hook); }

  /// Context: one child context per layer.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;
  /// As backward(): the layers in reverse, each followed by the backward hook, down to the first
  /// layer that needs no input gradient.
  void backward_empty() override;
  std::vector<Layer*> children() override;
  /// A chain whose input needs no gradient passes that on to its first layers, up to and including
  /// the first one with parameters; backward() stops there.
  void set_needs_input_grad(bool needed) override;

 private:
  void update_input_grad_flags();
  const char* m_kind;
  Shape m_input;
  Shape m_output;
  Layout m_input_layout;
  Layout m_output_layout;
  Shape m_local_input;   // this rank's block of an input sample
  Shape m_local_output;  // and of an output sample
  std::vector<std::unique_ptr<Layer>> m_layers;
  BackwardHook m_backward_hook;
};

class Residual final : public Layer {
 public:
  /// y = x + body(x); body must map `input` to `input`.
  Residual(std::string name, const Shape& input, std::unique_ptr<Layer> body,
           BuildContext context = {});

  const char* kind() const override { return "residual"; }
  Shape output_shape(const Shape& input) const override;
  /// The body must give back the layout it takes.
  Layout place_input(const Layout& input) override;
  /// Context: the body's context as the only child.
  ForwardResult forward(const Tensor& x, const ForwardOptions& options) override;
  Tensor backward(const Tensor& dy, Context&& ctx) override;
  std::vector<Layer*> children() override { return {m_body.get()}; }
  void set_needs_input_grad(bool needed) override;

 private:
  Shape m_input;
  Shape m_local_input;  // this rank's block of a sample
  std::unique_ptr<Layer> m_body;
};

}  // namespace tessera::nn
