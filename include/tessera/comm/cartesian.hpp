#pragma once
// Block decomposition of a global 2-D or 3-D grid over the ranks of a communicator, with halo
// exchange, as a domain-decomposed PDE solver has it (the Kokkos mpi_heat_conduction tutorial's
// shape: one small struct holds the Cartesian communicator, this rank's box and its neighbours).
// Spatial parallelism of the layers and the simulation datasets both stand on it.
#include "tessera/core/layout.hpp"

#include <mpi.h>

#include <array>
#include <vector>

namespace tessera::comm {

class CartesianGrid {
 public:
  /// Decomposes `extent` ((H, W) or (D, H, W)) over every rank of `comm`. `dims` gives the number
  /// of ranks along each dimension (0 = let MPI_Dims_create choose); `periodic` wraps neighbours.
  CartesianGrid(MPI_Comm comm, const std::vector<Index>& extent, bool periodic = true,
                std::vector<int> dims = {});
  ~CartesianGrid();
  CartesianGrid(const CartesianGrid&) = delete;
  CartesianGrid& operator=(const CartesianGrid&) = delete;

  MPI_Comm comm() const { return m_comm; }
  int ndims() const { return static_cast<int>(m_extent.size()); }
  const std::vector<int>& dims() const { return m_dims; }
  const std::vector<int>& coords() const { return m_coords; }
  const std::vector<Index>& global_extent() const { return m_extent; }
  const std::vector<Index>& local_extent() const { return m_local; }
  const std::vector<Index>& local_offset() const { return m_offset; }
  /// Rank of the neighbour along `dim` in `direction` (-1 or +1); MPI_PROC_NULL at a wall.
  int neighbour(int dim, int direction) const;

 private:
  MPI_Comm m_comm = MPI_COMM_NULL;
  std::vector<Index> m_extent, m_local, m_offset;
  std::vector<int> m_dims, m_coords;
  std::vector<std::array<int, 2>> m_neighbours;
};

/// Fills the ghost layers (width 1) of a local field stored with them: extents local + 2 in every
/// dimension, row-major. Faces are exchanged one dimension after another, ghosts included, so
/// edges and corners are filled too. Blocking; every rank of the grid calls it.
class HaloExchange {
 public:
  explicit HaloExchange(const CartesianGrid& grid);
  void exchange(std::vector<float>& field);

 private:
  const CartesianGrid& m_grid;
  std::vector<Index> m_padded;  // local + 2
  std::vector<float> m_send, m_recv;
};

}  // namespace tessera::comm
