#pragma once
// What a layer is built with (DESIGN.md, "A build context"): where it sits in its trainer's process
// grid — its place, which layouts turn into local shapes, and the per-axis communicators that a
// split layer talks through — and where it computes. Layers allocate only their local shapes and
// initialise exactly their blocks of the whole tensors; a layer built without a grid is the
// one-rank layer.
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/layout.hpp"

namespace tessera::nn {

/// Where a layer's tensors live and its kernels run. The host build has one; a CUDA build of
/// Kokkos adds the device (streams and library handles will live here).
enum class Device { host, cuda };
const char* device_name(Device device);

struct ExecContext {
  Device device = Device::host;
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

 private:
  const comm::ProcessGrid* m_grid = nullptr;
  GridPlace m_place;
  ExecContext m_exec;
};

}  // namespace tessera::nn
