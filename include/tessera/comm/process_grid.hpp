#pragma once
// ProcessGrid: the world split into trainers, each a Cartesian grid data × pipeline × tensor ×
// spatial[d] (DESIGN.md, idea 2). Every collective runs on the communicator of one axis, which the
// grid hands out; the grid is an object passed to whoever needs it (no global state).
//
// Rank placement (no reordering, so it is fixed by the world ranks):
// - trainer t is the contiguous block of world ranks [t × P, (t + 1) × P), P = world / trainers;
// - inside a trainer, the Cartesian dimensions are, from slowest to fastest varying,
//     data, pipeline, spatial0, spatial1, spatial2, tensor
//   (MPI_Cart_create's row-major order: the last dimension varies fastest). Tensor-parallel ranks,
//   which exchange activations in every layer, are consecutive ranks (one node, NVLink); spatial
//   neighbours, which exchange halos every layer, come next; a data-parallel replica (all the
//   pipeline × spatial × tensor ranks of one data coordinate) is a contiguous block of ranks, so a
//   replica fills whole nodes and the data axis — one overlapped gradient reduction per step — is
//   the one that crosses them. (Megatron-LM puts pipeline outside data instead; swapping the two
//   is a change of kCartOrder in process_grid.cpp.)
// Trainer-local rank = ((((data × Np + pipeline) × Ns0 + s0) × Ns1 + s1) × Ns2 + s2) × Nt + tensor.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/layout.hpp"

#include <mpi.h>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tessera::comm {

/// The decomposition a deck's [parallel] section asks for.
struct GridSpec {
  int trainers = 1;                ///< independent models (population training)
  int data = 0;                    ///< data-parallel ranks; 0: the rest of the trainer's ranks
  int pipeline = 1;                ///< pipeline stages
  int tensor = 1;                  ///< tensor-parallel ranks
  std::vector<int> spatial{1, 1};  ///< ranks along each spatial dimension (at most 3 entries)
};

/// "trainers 1 × data 2 × pipeline 1 × tensor 2 × spatial [1, 1]".
std::string to_string(const GridSpec& spec);

/// Checks every size of `spec` and resolves data = 0 against a job of `world` ranks: the one grid
/// resolution, which the constructor below runs first and the deck checks (`tessera check`, the
/// trainer) run without communicating. Throws tessera::Error (exit code 2): "parallel: trainers 1
/// × data 3 × pipeline 1 × tensor 1 × spatial [1, 1] = 3 ranks, but the job has 2".
GridSpec resolve_grid(GridSpec spec, int world);
/// Where trainer rank `rank` sits in the grid of the resolved `spec` (the constructor's placement,
/// without MPI).
GridPlace grid_place(const GridSpec& spec, int rank);

class ProcessGrid {
 public:
  /// Collective over `world` (which stays the caller's). Every rank must pass the same `spec`.
  /// Throws tessera::Error on every rank together (on_all_ranks; exit code 2 for a spec that does
  /// not fit) when a size is out of range or the product of the sizes is not the world's size:
  /// "parallel: trainers 1 × data 3 × pipeline 1 × tensor 1 × spatial [1, 1] = 3 ranks, but the
  /// job has 2".
  ProcessGrid(MPI_Comm world, const GridSpec& spec);
  ~ProcessGrid();
  ProcessGrid(const ProcessGrid&) = delete;
  ProcessGrid& operator=(const ProcessGrid&) = delete;

  /// The spec with data resolved (never 0).
  const GridSpec& spec() const { return m_spec; }
  int trainers() const { return m_spec.trainers; }
  /// Which trainer this rank belongs to, 0 to trainers() - 1.
  int trainer_index() const { return m_trainer_index; }

  /// Every rank of this rank's trainer, ranked as in the module comment. Its mpi_comm() carries
  /// the Cartesian topology (MPI_Cart_coords, MPI_Cart_shift work on it).
  Communicator& trainer() const { return *m_trainer; }
  /// The ranks of this trainer that share every coordinate but `axis`'s, ranked by their
  /// coordinate on `axis` (so axis(a).rank() == place().coord_of(a)). An axis of size 1 is this
  /// rank alone. Communicating does not change the grid, hence const.
  Communicator& axis(GridAxis axis) const;
  /// The ranks of this trainer that share every coordinate but those of `axes`: one communicator
  /// per group of axes (a gradient partial over data and a spatial axis is summed over both at
  /// once; a norm is summed over every axis a tensor is split over). Axes of size 1 change nothing
  /// (axes({data, tensor}) is axis(data) when the tensor axis has one rank); no axis of size > 1
  /// is this rank alone, every one of them the trainer. Ranked in the trainer's order.
  Communicator& axes(AxisSet axes) const;
  /// Size and this rank's coordinate on every axis, for core::Layout.
  const GridPlace& place() const { return m_place; }

 private:
  GridSpec m_spec;
  int m_trainer_index = 0;
  GridPlace m_place;
  std::unique_ptr<MpiCommunicator> m_trainer;
  std::unique_ptr<MpiCommunicator> m_self;  // axes() of no axis of size > 1
  std::array<std::unique_ptr<MpiCommunicator>, kNumGridAxes> m_axes;
  // axes() of two or more axes of size > 1 that are not all of them, by AxisSet::bits().
  std::map<unsigned, std::unique_ptr<MpiCommunicator>> m_groups;
};

}  // namespace tessera::comm
