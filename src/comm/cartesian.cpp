#include "tessera/comm/cartesian.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/core/check.hpp"

namespace tessera::comm {

CartesianGrid::CartesianGrid(MPI_Comm comm, const std::vector<Index>& extent, bool periodic,
                             std::vector<int> dims)
    : m_extent(extent), m_dims(std::move(dims)) {
  const int nd = static_cast<int>(extent.size());
  TESSERA_CHECK(nd == 2 || nd == 3, "Cartesian grid: {} dimensions given, 2 or 3 supported", nd);
  int size = 1;
  TESSERA_MPI_CHECK(MPI_Comm_size(comm, &size));
  if (m_dims.empty()) {
    m_dims.assign(extent.size(), 0);
  }
  TESSERA_CHECK(m_dims.size() == extent.size(), "Cartesian grid: {} rank counts for {} dimensions",
                m_dims.size(), extent.size());
  TESSERA_MPI_CHECK(MPI_Dims_create(size, nd, m_dims.data()));
  for (int d = 0; d < nd; ++d) {
    TESSERA_CHECK(m_dims[static_cast<size_t>(d)] <= extent[static_cast<size_t>(d)],
                  "Cartesian grid: {} ranks along dimension {} of extent {}",
                  m_dims[static_cast<size_t>(d)], d, extent[static_cast<size_t>(d)]);
  }
  const std::vector<int> periods(extent.size(), periodic ? 1 : 0);
  // No reordering: rank r of `comm` is rank r of the grid, so output does not depend on it.
  TESSERA_MPI_CHECK(MPI_Cart_create(comm, nd, m_dims.data(), periods.data(), 0, &m_comm));
  int rank = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(m_comm, &rank));
  m_coords.assign(extent.size(), 0);
  TESSERA_MPI_CHECK(MPI_Cart_coords(m_comm, rank, nd, m_coords.data()));
  for (int d = 0; d < nd; ++d) {
    const auto du = static_cast<size_t>(d);
    const Range r = block_range(extent[du], m_dims[du], m_coords[du]);
    m_local.push_back(r.count);
    m_offset.push_back(r.offset);
    std::array<int, 2> nb{};
    TESSERA_MPI_CHECK(MPI_Cart_shift(m_comm, d, 1, &nb[0], &nb[1]));
    m_neighbours.push_back(nb);
  }
}

CartesianGrid::~CartesianGrid() {
  if (m_comm != MPI_COMM_NULL) {
    MPI_Comm_free(&m_comm);
  }
}

int CartesianGrid::neighbour(int dim, int direction) const {
  return m_neighbours.at(static_cast<size_t>(dim))[direction < 0 ? 0 : 1];
}

HaloExchange::HaloExchange(const CartesianGrid& grid) : m_grid(grid) {
  for (Index e : grid.local_extent()) {
    m_padded.push_back(e + 2);
  }
}

namespace {
// Visits every cell of the padded field whose coordinate along `dim` is `plane`, in row-major
// order, calling f(flat index).
template <class F>
void for_plane(const std::vector<Index>& padded, int dim, Index plane, F&& f) {
  const int nd = static_cast<int>(padded.size());
  std::vector<Index> stride(padded.size(), 1);
  for (int d = nd - 2; d >= 0; --d) {
    stride[static_cast<size_t>(d)] =
        stride[static_cast<size_t>(d) + 1] * padded[static_cast<size_t>(d) + 1];
  }
  // Iterate the other dimensions (two of them in 3-D, one in 2-D).
  std::vector<Index> idx(padded.size(), 0);
  idx[static_cast<size_t>(dim)] = plane;
  Index count = 1;
  for (int d = 0; d < nd; ++d) {
    if (d != dim) {
      count *= padded[static_cast<size_t>(d)];
    }
  }
  for (Index n = 0; n < count; ++n) {
    Index flat = 0;
    for (int d = 0; d < nd; ++d) {
      flat += idx[static_cast<size_t>(d)] * stride[static_cast<size_t>(d)];
    }
    f(flat);
    for (int d = nd - 1; d >= 0; --d) {
      if (d == dim) {
        continue;
      }
      if (++idx[static_cast<size_t>(d)] < padded[static_cast<size_t>(d)]) {
        break;
      }
      idx[static_cast<size_t>(d)] = 0;
    }
  }
}
}  // namespace

void HaloExchange::exchange(std::vector<float>& field) {
  Index total = 1;
  for (Index e : m_padded) {
    total *= e;
  }
  TESSERA_CHECK(static_cast<Index>(field.size()) == total,
                "halo exchange: field of {} values, {} expected with ghosts", field.size(), total);
  for (int dim = 0; dim < m_grid.ndims(); ++dim) {
    const Index last = m_padded[static_cast<size_t>(dim)] - 2;  // last interior plane
    // Two directions: send the low interior plane down and receive the high ghost from up, then
    // the reverse.
    for (int dir : {-1, +1}) {
      const Index send_plane = dir < 0 ? 1 : last;
      const Index recv_plane = dir < 0 ? last + 1 : 0;
      m_send.clear();
      for_plane(m_padded, dim, send_plane,
                [&](Index i) { m_send.push_back(field[static_cast<size_t>(i)]); });
      m_recv.resize(m_send.size());
      const int to = m_grid.neighbour(dim, dir);
      const int from = m_grid.neighbour(dim, -dir);
      TESSERA_MPI_CHECK(MPI_Sendrecv(m_send.data(), static_cast<int>(m_send.size()), MPI_FLOAT, to,
                                     dim * 2 + (dir > 0), m_recv.data(),
                                     static_cast<int>(m_recv.size()), MPI_FLOAT, from,
                                     dim * 2 + (dir > 0), m_grid.comm(), MPI_STATUS_IGNORE));
      if (from != MPI_PROC_NULL) {
        size_t k = 0;
        for_plane(m_padded, dim, recv_plane,
                  [&](Index i) { field[static_cast<size_t>(i)] = m_recv[k++]; });
      }
    }
  }
}

}  // namespace tessera::comm
