#pragma once
// The registry of a trainer's distributed state (DESIGN.md, "A registry of distributed state"):
// every parameter, buffer and optimizer state tensor — or, under ZeRO-1, this rank's piece of it —
// with its name, global shape, placements and this rank's values. Whatever must know where the
// pieces of a tensor live reads it from here: the checkpoint writes each element once and reads
// back what this rank's layout owns, whatever wrote it; gradient clipping counts each element once.
//
// Copies and owners. The axes a tensor is neither split over nor partial over hold copies of it
// (its Layout's replicated axes), except the pipeline axis, whose stages hold different tensors.
// Of the ranks holding copies of an element, the one with coordinate 0 on every copy axis owns it:
// it writes the element to a checkpoint and counts it in a norm. A ZeRO-1 piece is this rank's
// alone on the data axis (the other data ranks hold the other pieces), so its copy axes exclude
// data.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/layer.hpp"

#include <string>
#include <vector>

namespace tessera::parallel {

enum class StateKind { parameter, buffer, optimizer_state };
/// "parameter", "buffer", "state" (the checkpoint's `kind` attribute).
const char* state_kind_name(StateKind kind);

/// The axes holding copies of a tensor of `layout`: replicated ones, pipeline excepted.
AxisSet copy_axes(const Layout& layout);

/// One distributed tensor as this rank holds it.
struct StateEntry {
  std::string name;   ///< "fc1.weight", or "fc1.weight" with state "momentum"
  std::string state;  ///< the optimizer state's name ("momentum", "exp_avg"); "" otherwise
  StateKind kind = StateKind::parameter;
  Layout layout;  ///< global shape and placements of the tensor
  /// This rank's values: its whole local block (layout.local_shape(place)), or the elements
  /// [first, first + local.numel()) of that block (row-major) for a ZeRO-1 piece.
  Tensor local;
  Index first = 0;
  AxisSet copies;  ///< axes whose ranks hold these same elements
  /// The boxes of the global tensor `local` holds, each with where it lies in the local block.
  std::vector<Block> blocks;
  bool owner = false;  ///< this rank writes these elements (coordinate 0 on every copy axis)
};

class StateRegistry {
 public:
  explicit StateRegistry(GridPlace place) : m_place(place) {}

  /// Registers `local` as this rank's block of `layout` — or, when `first` > 0 or `local` is
  /// smaller than the block, its elements [first, first + local.numel()) — with copies on
  /// `copies`. Throws when a name (with state) is registered twice or the sizes do not fit.
  void add(std::string name, std::string state, StateKind kind, const Layout& layout,
           const Tensor& local, AxisSet copies, Index first = 0);

  /// Registers a tensor of global shape `shape` that another pipeline stage holds: this rank holds
  /// none of its elements and owns none (a checkpoint still creates it on every rank).
  void add_elsewhere(std::string name, std::string state, StateKind kind, const Shape& shape);
  /// Registers a copy of `entry` (registered with this registry's place).
  void add_entry(const StateEntry& entry);

  const std::vector<StateEntry>& entries() const { return m_entries; }
  /// The entry of `name` (with `state`), or null.
  StateEntry* find(const std::string& name, const std::string& state);
  const GridPlace& place() const { return m_place; }

 private:
  GridPlace m_place;
  std::vector<StateEntry> m_entries;
};

/// The registry of a whole pipeline: `mine` (this stage's tensors) together with every other
/// stage's, which this rank holds none of, in the order one rank holding the whole model lists
/// them (parameters, then buffers, then optimizer state, each in stage order), so that a
/// checkpoint is the same whatever the cut. Collective over `pipeline` (the pipeline axis); with
/// one stage, `mine` itself.
StateRegistry gather_stages(const StateRegistry& mine, comm::Communicator& pipeline);

/// The parameters and buffers of `model` at `place` (their whole local blocks): the registry of a
/// model without an optimizer (tessera generate loads one); DataParallel::registry adds the state.
StateRegistry model_registry(nn::Layer& model, const GridPlace& place);

}  // namespace tessera::parallel
