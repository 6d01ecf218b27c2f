#include "tessera/comm/process_grid.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/core/check.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <climits>
#include <utility>

namespace tessera::comm {
namespace {

// The Cartesian dimensions of a trainer, slowest varying first (see process_grid.hpp).
constexpr std::array<GridAxis, kNumGridAxes> kCartOrder{GridAxis::data,     GridAxis::pipeline,
                                                        GridAxis::spatial0, GridAxis::spatial1,
                                                        GridAxis::spatial2, GridAxis::tensor};
constexpr int kMaxSpatial = 3;

// An MPI communicator freed when it goes out of scope (the intermediate ones of the build).
struct OwnedComm {
  MPI_Comm comm = MPI_COMM_NULL;
  OwnedComm() = default;
  OwnedComm(const OwnedComm&) = delete;
  OwnedComm& operator=(const OwnedComm&) = delete;
  ~OwnedComm() {
    if (comm != MPI_COMM_NULL) {
      MPI_Comm_free(&comm);
    }
  }
};

// a × b, saturating (absurd specs must still give a message, not an overflow).
long long times(long long a, long long b) {
  return a > LLONG_MAX / b ? LLONG_MAX : a * b;
}

}  // namespace

GridSpec resolve_grid(GridSpec spec, int world) {
  for (const auto& [name, value] : {std::pair<const char*, int>{"trainers", spec.trainers},
                                    {"pipeline", spec.pipeline},
                                    {"tensor", spec.tensor}}) {
    if (value < 1) {
      throw input_error(fmt::format("parallel: {} = {} must be >= 1", name, value));
    }
  }
  if (spec.data < 0) {
    throw input_error(
        fmt::format("parallel: data = {} must be >= 1, or 0 for the rest of the ranks", spec.data));
  }
  if (spec.spatial.size() > static_cast<size_t>(kMaxSpatial)) {
    throw input_error(fmt::format("parallel: spatial = [{}] has {} entries, at most {}",
                                  fmt::join(spec.spatial, ", "), spec.spatial.size(), kMaxSpatial));
  }
  long long others = times(times(spec.trainers, spec.pipeline), spec.tensor);
  for (int s : spec.spatial) {
    if (s < 1) {
      throw input_error(fmt::format("parallel: spatial = [{}] must hold sizes >= 1",
                                    fmt::join(spec.spatial, ", ")));
    }
    others = times(others, s);
  }
  if (spec.data == 0) {
    if (world % others != 0) {
      throw input_error(fmt::format(
          "parallel: trainers {} × pipeline {} × tensor {} × spatial [{}] = {} ranks, which does "
          "not divide the job's {} (data = 0 takes the rest)",
          spec.trainers, spec.pipeline, spec.tensor, fmt::join(spec.spatial, ", "), others, world));
    }
    spec.data = static_cast<int>(world / others);
  }
  const long long total = times(others, spec.data);
  if (total != world) {
    throw input_error(
        fmt::format("parallel: {} = {} ranks, but the job has {}", to_string(spec), total, world));
  }
  return spec;
}

namespace {
// The size of every Cartesian dimension of `spec`, in kCartOrder.
std::array<int, kNumGridAxes> cart_dims(const GridSpec& spec) {
  std::array<int, kNumGridAxes> dims{};
  for (int d = 0; d < kNumGridAxes; ++d) {
    const GridAxis axis = kCartOrder[static_cast<size_t>(d)];
    const size_t spatial = static_cast<size_t>(axis) - static_cast<size_t>(GridAxis::spatial0);
    switch (axis) {
      case GridAxis::data:
        dims[static_cast<size_t>(d)] = spec.data;
        break;
      case GridAxis::pipeline:
        dims[static_cast<size_t>(d)] = spec.pipeline;
        break;
      case GridAxis::tensor:
        dims[static_cast<size_t>(d)] = spec.tensor;
        break;
      default:
        dims[static_cast<size_t>(d)] = spatial < spec.spatial.size() ? spec.spatial[spatial] : 1;
    }
  }
  return dims;
}

// The spec as integers, to compare ranks' specs: trainers, data, pipeline, tensor, the number of
// spatial entries, the spatial sizes (0 for missing entries).
constexpr int kEncoded = 5 + kMaxSpatial;
std::array<int, kEncoded> encode(const GridSpec& s) {
  std::array<int, kEncoded> e{
      s.trainers, s.data, s.pipeline, s.tensor, static_cast<int>(s.spatial.size()), 0, 0, 0};
  for (size_t i = 0; i < s.spatial.size(); ++i) {
    e[5 + i] = s.spatial[i];
  }
  return e;
}
GridSpec decode(const std::array<int, kEncoded>& e) {
  return {e[0], e[1], e[2], e[3],
          std::vector<int>(e.begin() + 5, e.begin() + 5 + std::min(e[4], kMaxSpatial))};
}

}  // namespace

GridPlace grid_place(const GridSpec& spec, int rank) {
  const std::array<int, kNumGridAxes> dims = cart_dims(spec);
  GridPlace place;
  int rest = rank;
  for (int d = kNumGridAxes - 1; d >= 0; --d) {  // row-major: the last dimension varies fastest
    const int size = dims[static_cast<size_t>(d)];
    place = place.with(kCartOrder[static_cast<size_t>(d)], size, rest % size);
    rest /= size;
  }
  return place;
}

std::string to_string(const GridSpec& spec) {
  return fmt::format("trainers {} × data {} × pipeline {} × tensor {} × spatial [{}]",
                     spec.trainers, spec.data, spec.pipeline, spec.tensor,
                     fmt::join(spec.spatial, ", "));
}

ProcessGrid::ProcessGrid(MPI_Comm world, const GridSpec& spec) {
  int world_rank = 0;
  int world_size = 1;
  TESSERA_MPI_CHECK(MPI_Comm_rank(world, &world_rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(world, &world_size));
  agree(world, [&] { m_spec = resolve_grid(spec, world_size); });
  // Every rank builds the same grid: rank 0's.
  const std::array<int, kEncoded> mine = encode(m_spec);
  std::array<int, kEncoded> first = mine;
  TESSERA_MPI_CHECK(MPI_Bcast(first.data(), kEncoded, MPI_INT, 0, world));
  agree(world, [&] {
    if (mine != first) {
      TESSERA_THROW(
          "parallel: rank {} was given the grid {} but rank 0 {}; every rank must "
          "build the same grid",
          world_rank, to_string(m_spec), to_string(decode(first)));
    }
  });

  // Trainers: contiguous blocks of world ranks.
  const int per_trainer = world_size / m_spec.trainers;
  m_trainer_index = world_rank / per_trainer;
  OwnedComm trainer_ranks;
  TESSERA_MPI_CHECK(MPI_Comm_split(world, m_trainer_index, world_rank, &trainer_ranks.comm));

  // The trainer's Cartesian grid, without reordering.
  const std::array<int, kNumGridAxes> dims = cart_dims(m_spec);
  const std::array<int, kNumGridAxes> periods{};
  OwnedComm cart;
  TESSERA_MPI_CHECK(MPI_Cart_create(trainer_ranks.comm, kNumGridAxes, dims.data(), periods.data(),
                                    0, &cart.comm));
  m_trainer = std::make_unique<MpiCommunicator>(cart.comm, "trainer");

  std::array<int, kNumGridAxes> coords{};
  TESSERA_MPI_CHECK(MPI_Cart_coords(cart.comm, m_trainer->rank(), kNumGridAxes, coords.data()));
  // The sub-grid keeping the axes of `keep`, as a communicator named `name`.
  auto sub = [&](AxisSet keep, const std::string& name) {
    std::array<int, kNumGridAxes> remain{};
    for (int d = 0; d < kNumGridAxes; ++d) {
      remain[static_cast<size_t>(d)] = keep.contains(kCartOrder[static_cast<size_t>(d)]) ? 1 : 0;
    }
    OwnedComm part;
    TESSERA_MPI_CHECK(MPI_Cart_sub(cart.comm, remain.data(), &part.comm));
    return std::make_unique<MpiCommunicator>(part.comm, name);
  };
  for (int d = 0; d < kNumGridAxes; ++d) {
    const GridAxis axis = kCartOrder[static_cast<size_t>(d)];
    m_place = m_place.with(axis, dims[static_cast<size_t>(d)], coords[static_cast<size_t>(d)]);
    m_axes[static_cast<size_t>(axis)] = sub(AxisSet{axis}, axis_name(axis));
  }
  m_self = std::make_unique<MpiCommunicator>(MPI_COMM_SELF, "self");
  // Every group of two or more axes of size > 1, short of all of them (the trainer). Axes are in
  // grid order so that every rank creates the same communicators in the same order.
  const unsigned nontrivial = m_place.nontrivial().bits();
  for (unsigned bits = 1; bits < nontrivial; ++bits) {
    const AxisSet group = AxisSet::from_bits(bits);
    if ((bits & ~nontrivial) != 0 || group.axes().size() < 2) {
      continue;
    }
    std::string name;
    for (GridAxis a : group.axes()) {
      name += (name.empty() ? "" : "×") + std::string(axis_name(a));
    }
    m_groups[bits] = sub(group, name);
  }
}

ProcessGrid::~ProcessGrid() = default;

Communicator& ProcessGrid::axis(GridAxis axis) const {
  return *m_axes.at(static_cast<size_t>(axis));
}

Communicator& ProcessGrid::axes(AxisSet axes) const {
  const AxisSet group = axes & m_place.nontrivial();
  const std::vector<GridAxis> list = group.axes();
  if (list.empty()) {
    return *m_self;
  }
  if (list.size() == 1) {
    return axis(list.front());
  }
  if (group == m_place.nontrivial()) {
    return *m_trainer;
  }
  return *m_groups.at(group.bits());
}

}  // namespace tessera::comm
