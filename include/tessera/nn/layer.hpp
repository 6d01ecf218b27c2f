#pragma once
// The layer interface. A layer maps a batch (N, ...) to a batch (N, ...). forward() returns the
// output together with a Context holding exactly what backward() needs (tiny-cuda-nn's pattern:
// what is saved is explicit, nothing hides in members between the two calls), and backward()
// consumes that context. Parameter gradients accumulate (+=) so that several micro-batches can be
// summed before one optimizer step; zero_grad() clears them.
#include "tessera/core/init.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/build_context.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tessera::nn {

/// A trainable tensor (or a non-trainable buffer such as BatchNorm's running mean).
struct Parameter {
  std::string name;   ///< "conv1.weight": unique in a model, keys the RNG and the checkpoint path
  Tensor value;       ///< this rank's block of the tensor (layout.local_shape(place))
  Tensor grad;        ///< same shape as value; undefined for buffers
  Layout layout;      ///< global shape and placements of the value (never partial)
  InitSpec init;      ///< how initialize() fills it
  bool decay = true;  ///< whether weight decay applies (off for biases and norm scales)
  /// The axes over which this rank's gradient is partial, before its reduction: the data axis
  /// (each data rank saw its own samples), and any axis whose ranks computed it from their own
  /// part of the activations (a spatial tile, a sequence slice). The reducer sums the gradient
  /// over exactly these axes; over the others the ranks already hold equal gradients. For a buffer
  /// (running statistics), the axes over which the ranks' estimates are averaged.
  AxisSet partial{GridAxis::data};
};

/// Storage that a layer reuses from one call to the next for a tensor it hands out (an output, an
/// input gradient), instead of allocating and zero-filling a new tensor every step. get() returns
/// a tensor over held storage that nothing else refers to any more (the tensors and contexts of
/// earlier calls are gone) and that is large enough; otherwise it allocates new, uninitialised
/// storage and holds it too, up to kMaxHeld allocations (several micro-batches in flight each keep
/// their own). Storage still referred to elsewhere is never handed out again, so a tensor that a
/// caller keeps is never overwritten. The contents are unspecified: the caller writes every
/// element. The price: a layer holds its largest output and input gradient between steps (memory
/// that a step needs anyway at its peak, except the input gradients, which a fresh allocation
/// frees as backward moves on). Not thread-safe, like a layer's other scratch.
class BufferPool {
 public:
  static constexpr std::size_t kMaxHeld = 4;
  /// A tensor of `shape` named `label`, over storage that no other live tensor shares.
  Tensor get(const std::string& label, const Shape& shape);
  /// Allocations held (for tests).
  std::size_t held() const { return m_storage.size(); }
  /// Drops every held allocation (tensors handed out keep theirs alive).
  void clear() { m_storage.clear(); }

 private:
  std::vector<FloatView> m_storage;
};

/// Settings of one forward call.
struct ForwardOptions {
  bool training = true;
  std::uint64_t seed = 0;   ///< run seed (dropout masks)
  std::uint64_t step = 0;   ///< optimizer step: a new dropout mask every step
  Index sample_offset = 0;  ///< global index of this rank's first sample in the global batch
  /// Training only: when >= 0, BatchNorm moves its running estimates by this fraction instead of
  /// its own momentum (1 / (n + 1) for batch n gives their plain average over the batches:
  /// re-estimating the statistics of a model whose weights were averaged).
  float stats_momentum = -1.0F;
  /// Training only: BatchNorm keeps this forward's batch statistics instead of moving its running
  /// estimates; commit_statistics() moves them, every kept batch in turn (deterministic mode: in
  /// the global order of the sample groups, whatever the data size).
  bool defer_stats = false;
};

/// What a forward pass keeps for its backward pass. Each layer documents what `saved` holds.
struct Context {
  std::vector<Tensor> saved;
  Shape input_shape;
  std::vector<Context> children;  ///< composite layers: one context per child, in order
};

struct ForwardResult {
  Tensor output;
  Context ctx;
};

class Layer {
 public:
  /// `context`: the grid place and communicators a split layer needs (none: one rank).
  explicit Layer(std::string name, BuildContext context = {})
      : m_name(std::move(name)), m_context(std::move(context)) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  /// Unique name in the model ("conv1"); parameters are named "<name>.<param>".
  const std::string& name() const { return m_name; }
  /// The deck's name of the layer type ("conv2d").
  virtual const char* kind() const = 0;
  /// Output shape of one sample for an input sample of `input` (batch dimension excluded), both
  /// global shapes. Throws tessera::Error naming the layer and both shapes when the input does not
  /// fit.
  virtual Shape output_shape(const Shape& input) const = 0;
  /// Places the layer on input samples laid out as `input` (a layout of one sample's global shape:
  /// which dimensions are split over which grid axis) and returns its output's layout; forward()
  /// then takes and returns the local blocks. The chain a layer joins calls it once (Sequential::
  /// add). By default a layer needs its input whole and gives a whole output; element-wise layers
  /// pass a split through, and split layers (Linear with `split`) say what they take and give.
  /// Throws tessera::Error naming the layer when it cannot take `input`.
  virtual Layout place_input(const Layout& input);
  /// x: (N, input...). Returns (N, output...) and the context for backward().
  virtual ForwardResult forward(const Tensor& x, const ForwardOptions& options) = 0;
  /// dy: (N, output...). Accumulates parameter gradients, returns dL/dx of shape (N, input...).
  virtual Tensor backward(const Tensor& dy, Context&& ctx) = 0;
  /// A training micro-batch of no samples on this rank (the last, short batch of an epoch may
  /// leave a data rank none) while other ranks of a communicator the layer reduces over hold
  /// some: takes part in the collectives forward() and backward() would run, adding nothing, so
  /// that no rank waits for it (SyncBatchNorm's statistics over the data axis). Collectives over
  /// ranks that hold the same samples (tensor, spatial) need nothing: those ranks are empty
  /// together. By default a composite passes them to its children(), forward in order, backward
  /// in reverse; a plain layer has none.
  virtual void forward_empty(const ForwardOptions& options);
  virtual void backward_empty();
  /// Moves the running estimates by the batch statistics that forwards with
  /// ForwardOptions::defer_stats kept, on every rank of `across` (the data axis) in rank order and
  /// each rank's in the order of its forwards: one update per kept batch, the same on every rank.
  /// Collective over `across`. By default a composite passes it to its children(), in order; a
  /// plain layer keeps nothing.
  virtual void commit_statistics(comm::Communicator& across);

  /// This layer's own parameters (a composite layer's live in its children()).
  std::vector<Parameter>& parameters() { return m_parameters; }
  const std::vector<Parameter>& parameters() const { return m_parameters; }
  std::vector<Parameter>& buffers() { return m_buffers; }
  const std::vector<Parameter>& buffers() const { return m_buffers; }

  /// Whether backward() must return dL/dx. The first layers of a model (those before any
  /// parameter) need not: their input is data. A layer may then skip that work and return an
  /// undefined Tensor. Sequential sets it for the layers of a model.
  bool needs_input_grad() const { return m_needs_input_grad; }
  virtual void set_needs_input_grad(bool needed) { m_needs_input_grad = needed; }

  /// The layers a composite layer (Sequential, Residual) is made of; empty for a plain layer.
  virtual std::vector<Layer*> children() { return {}; }
  /// Every trainable parameter of this layer and its children, depth first, in model order.
  std::vector<Parameter*> all_parameters();
  /// Every buffer of this layer and its children, depth first.
  std::vector<Parameter*> all_buffers();

  /// Fills every parameter and buffer (children's too) from (seed, its name, global index): each
  /// rank its block, equal bit for bit to the same block of the whole tensor.
  void initialize(std::uint64_t seed);
  /// The grid place and communicators the layer was built with.
  const BuildContext& context() const { return m_context; }
  /// Sets every parameter gradient (children's too) to zero.
  void zero_grad();

 protected:
  /// Adds a trainable parameter "<name>.<suffix>" of global shape and placements `layout`,
  /// allocating this rank's block (layout.local_shape(context().place())). The returned reference
  /// is valid until the next add_*; afterwards reach parameters through parameters()[i].
  Parameter& add_parameter(const std::string& suffix, const Layout& layout, InitSpec init,
                           bool decay = true);
  /// Adds a replicated trainable parameter (whole on every rank) of `shape`.
  Parameter& add_parameter(const std::string& suffix, const Shape& shape, InitSpec init,
                           bool decay = true);
  /// Adds a replicated non-trainable buffer "<name>.<suffix>" of `shape`.
  Parameter& add_buffer(const std::string& suffix, const Shape& shape, InitSpec init);
  /// Throws unless `input` is whole (no dimension split): the default place_input's check, for
  /// layers that compute on whole samples.
  void require_whole(const Layout& input) const;
  /// Throws unless `input` is partial over no axis: for layers that are not linear in their input
  /// (f(a) + f(b) is not f(a + b)), which may take splits but not addends.
  void require_not_partial(const Layout& input) const;
  /// Throws unless x is (N, expected...) for some N >= 1; `what` is "input" or "output grad".
  void check_batch(const Tensor& x, const Shape& expected, const char* what) const;
  /// Throws unless `dy` and `ctx` come from one forward pass of this layer on a batch of samples
  /// `input` whose context saved `saved` tensors.
  void check_context(const Tensor& dy, const Context& ctx, const Shape& input, size_t saved) const;

 private:
  std::string m_name;
  BuildContext m_context;
  bool m_needs_input_grad = true;
  std::vector<Parameter> m_parameters;
  std::vector<Parameter> m_buffers;
};

/// (N, sample...) from N and a sample shape.
Shape batch_shape(Index n, const Shape& sample);

}  // namespace tessera::nn
