#pragma once
// What a layer is built with (DESIGN.md, "A build context"): where it sits in its trainer's process
// grid — its place, which layouts turn into local shapes, and the per-axis communicators that a
// split layer talks through — and where it computes. Layers allocate only their local shapes and
// initialise exactly their blocks of the whole tensors; a layer built without a grid is the
// one-rank layer.
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/layout.hpp"

#include <cstdint>
#include <functional>
#include <memory>

namespace tessera::nn {

/// Where a layer's tensors live and its kernels run. The host build has one; a CUDA build of
/// Kokkos adds the device (streams and library handles will live here).
enum class Device { host, cuda };
const char* device_name(Device device);

struct ExecContext {
  Device device = Device::host;
};

/// What the tensor-parallel layers built with one context spent in their collectives on the tensor
/// axis (nn::TensorRegion), or the spatial layers in their halo exchanges (nn::Halo): shared by
/// every copy of the context, read by the trainer for its progress line. One thread (the training
/// loop's) writes it.
struct TensorCommClock {
  double seconds = 0.0;
  std::int64_t calls = 0;
};

class BuildContext {
 public:
  /// One rank, no grid: every layout is whole.
  BuildContext() = default;
  /// On `grid` (which outlives the layers built with it).
  explicit BuildContext(const comm::ProcessGrid& grid, ExecContext exec = {})
      : m_grid(&grid), m_place(grid.place()), m_exec(exec) {}
  /// At `place` without communicators: a model built to be described (its local shapes), not run
  /// (`tessera check`).
  explicit BuildContext(const GridPlace& place, ExecContext exec = {})
      : m_place(place), m_exec(exec) {}

  const GridPlace& place() const { return m_place; }
  const ExecContext& exec() const { return m_exec; }
  /// Ranks on `axis` (1 without a grid or place).
  int size(GridAxis axis) const { return m_place.size_of(axis); }
  /// Whether the context has communicators (a grid).
  bool has_grid() const { return m_grid != nullptr; }
  /// The communicator of `axis`; only where size(axis) > 1 (an axis of one rank needs none, and a
  /// layer built without a grid has none): throws otherwise.
  comm::Communicator& axis(GridAxis axis) const;

  /// Megatron-LM's sequence parallelism (the deck's parallel.sequence_parallel): the layers that
  /// leave a tensor-parallel region (row-split) give their tokens split over the tensor axis
  /// (reduce-scatter instead of allreduce), the layers between regions (LayerNorm, element-wise)
  /// work on that slice, and the layers entering a region (column-split) gather the tokens
  /// (allgather; reduce-scatter backward). Off: regions end in an allreduce, activations whole.
  bool sequence_parallel() const { return m_sequence_parallel; }
  BuildContext& with_sequence_parallel(bool on) {
    m_sequence_parallel = on;
    return *this;
  }
  /// The tensor-axis communication clock shared by the copies of this context.
  TensorCommClock& tensor_clock() const { return *m_clock; }
  /// The spatial layers' halo exchanges (nn::Halo), likewise.
  TensorCommClock& halo_clock() const { return *m_halo_clock; }
  /// The communicator of the axes in `axes` together (comm::ProcessGrid::axes): throws without a
  /// grid unless every axis in `axes` has one rank (then nullptr: nothing to reduce over).
  comm::Communicator* axes(AxisSet axes) const;
  /// Called by composite layers between their children's forward and backward passes (shared by
  /// the copies of this context): the pipeline's transfers progress there, since MPI moves a
  /// message only inside MPI calls. None by default.
  void poll() const {
    if (*m_poll) {
      (*m_poll)();
    }
  }
  void set_poll(std::function<void()> poll) const { *m_poll = std::move(poll); }

 private:
  const comm::ProcessGrid* m_grid = nullptr;
  GridPlace m_place;
  ExecContext m_exec;
  bool m_sequence_parallel = false;
  std::shared_ptr<TensorCommClock> m_clock = std::make_shared<TensorCommClock>();
  std::shared_ptr<TensorCommClock> m_halo_clock = std::make_shared<TensorCommClock>();
  std::shared_ptr<std::function<void()>> m_poll = std::make_shared<std::function<void()>>();
};

}  // namespace tessera::nn
