// ProcessGrid at any rank count: for every factorisation of the world into trainers × data ×
// pipeline × tensor × spatial, the sizes and coordinates follow the documented placement (data
// slowest, tensor fastest, trainers as contiguous blocks), every axis communicator holds exactly
// the ranks that share all other coordinates, ranked by their coordinate on the axis, and GridPlace
// agrees with the communicators; a grid that does not fit the job fails with one message on every
// rank.
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/layout.hpp"

#include "support/mpi.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::comm;

namespace {
using tessera::testing::world_rank;
using tessera::testing::world_size;

constexpr std::array<GridAxis, kNumGridAxes> kAxes{GridAxis::data,     GridAxis::pipeline,
                                                   GridAxis::tensor,   GridAxis::spatial0,
                                                   GridAxis::spatial1, GridAxis::spatial2};
size_t at(GridAxis axis) {
  return static_cast<size_t>(axis);
}

// Every way to write `n` as an ordered product of `slots` factors.
void factorisations(int n, int slots, std::vector<int>& prefix,
                    std::vector<std::vector<int>>& out) {
  if (slots == 1) {
    prefix.push_back(n);
    out.push_back(prefix);
    prefix.pop_back();
    return;
  }
  for (int d = 1; d <= n; ++d) {
    if (n % d == 0) {
      prefix.push_back(d);
      factorisations(n / d, slots - 1, prefix, out);
      prefix.pop_back();
    }
  }
}

// The placement process_grid.hpp documents, computed here independently of the grid: trainers are
// blocks of world ranks; inside one, the trainer-local rank is the row-major index over
// (data, pipeline, spatial0, spatial1, spatial2, tensor).
struct Expected {
  int trainer = 0;
  int local = 0;  // rank in the trainer
  std::array<int, kNumGridAxes> size{};
  std::array<int, kNumGridAxes> coord{};
};
constexpr std::array<GridAxis, kNumGridAxes> kSlowestFirst{GridAxis::data,     GridAxis::pipeline,
                                                           GridAxis::spatial0, GridAxis::spatial1,
                                                           GridAxis::spatial2, GridAxis::tensor};

Expected expected_place(const GridSpec& s, int world_rank_, int world_size_) {
  Expected e;
  e.size[at(GridAxis::data)] = s.data;
  e.size[at(GridAxis::pipeline)] = s.pipeline;
  e.size[at(GridAxis::tensor)] = s.tensor;
  for (size_t i = 0; i < 3; ++i) {
    e.size[at(GridAxis::spatial0) + i] = i < s.spatial.size() ? s.spatial[i] : 1;
  }
  const int per_trainer = world_size_ / s.trainers;
  e.trainer = world_rank_ / per_trainer;
  e.local = world_rank_ % per_trainer;
  int rest = e.local;
  for (int k = kNumGridAxes - 1; k >= 0; --k) {  // fastest first
    const GridAxis a = kSlowestFirst[static_cast<size_t>(k)];
    e.coord[at(a)] = rest % e.size[at(a)];
    rest /= e.size[at(a)];
  }
  return e;
}

// The world rank at `coord` in `trainer`, by the same placement.
int world_rank_at(const Expected& e, const std::array<int, kNumGridAxes>& coord, int trainer) {
  int local = 0;
  for (GridAxis a : kSlowestFirst) {
    local = local * e.size[at(a)] + coord[at(a)];
  }
  int per_trainer = 1;
  for (int s : e.size) {
    per_trainer *= s;
  }
  return trainer * per_trainer + local;
}

// Checks one grid built from `spec` (data resolved in `resolved`) against the placement.
void check_grid(const GridSpec& spec, const GridSpec& resolved) {
  const int w = world_rank();
  const int n = world_size();
  const ProcessGrid grid(MPI_COMM_WORLD, spec);
  const std::string what = to_string(resolved) + " on rank " + std::to_string(w);
  SCOPED_TRACE(what);
  EXPECT_EQ(to_string(grid.spec()), to_string(resolved));
  const Expected e = expected_place(resolved, w, n);
  EXPECT_EQ(grid.trainers(), resolved.trainers);
  EXPECT_EQ(grid.trainer_index(), e.trainer);
  EXPECT_EQ(grid.trainer().size(), n / resolved.trainers);
  EXPECT_EQ(grid.trainer().rank(), e.local);
  EXPECT_EQ(grid.trainer().name(), "trainer");

  // The trainer communicator keeps the Cartesian topology: MPI's coordinates, slowest first.
  std::array<int, kNumGridAxes> cart{};
  ASSERT_EQ(MPI_Cart_coords(grid.trainer().mpi_comm(), e.local, kNumGridAxes, cart.data()),
            MPI_SUCCESS);
  for (size_t d = 0; d < kSlowestFirst.size(); ++d) {
    EXPECT_EQ(cart[d], e.coord[at(kSlowestFirst[d])]) << "Cartesian dimension " << d;
  }

  const GridPlace& place = grid.place();
  for (GridAxis a : kAxes) {
    SCOPED_TRACE(axis_name(a));
    EXPECT_EQ(place.size_of(a), e.size[at(a)]);
    EXPECT_EQ(place.coord_of(a), e.coord[at(a)]);
    Communicator& c = grid.axis(a);
    EXPECT_EQ(c.name(), axis_name(a));
    EXPECT_EQ(c.size(), place.size_of(a));
    EXPECT_EQ(c.rank(), place.coord_of(a));
    if (c.size() == 1) {
      continue;  // this rank alone: nothing to exchange
    }
    // Every member's world rank, trainer and coordinates, in the axis communicator's rank order.
    constexpr int kFields = 2 + kNumGridAxes;
    std::vector<float> mine{static_cast<float>(w), static_cast<float>(grid.trainer_index())};
    for (GridAxis b : kAxes) {
      mine.push_back(static_cast<float>(place.coord_of(b)));
    }
    std::vector<float> all(static_cast<size_t>(kFields * c.size()));
    c.allgather(mine, all)->wait();
    for (int j = 0; j < c.size(); ++j) {
      const float* member = all.data() + j * kFields;
      std::array<int, kNumGridAxes> coord = e.coord;
      coord[at(a)] = j;
      EXPECT_EQ(static_cast<int>(member[0]), world_rank_at(e, coord, e.trainer)) << "member " << j;
      EXPECT_EQ(static_cast<int>(member[1]), e.trainer) << "member " << j;
      for (size_t b = 0; b < kAxes.size(); ++b) {
        EXPECT_EQ(static_cast<int>(member[2 + b]), coord[at(kAxes[b])])
            << "member " << j << ", axis " << axis_name(kAxes[b]);
      }
    }
  }

  // Several axes at once (ProcessGrid::axes): the ranks of this trainer that share every other
  // coordinate, whatever the group — each member adds its bit, and the sum is the expected set.
  const AxisSet nontrivial = place.nontrivial();
  for (unsigned bits = 0; bits < (1U << kNumGridAxes); ++bits) {
    const AxisSet group = AxisSet::from_bits(bits);
    if ((group - nontrivial) != AxisSet()) {
      // Axes of one rank change nothing: the same communicator as without them.
      EXPECT_EQ(&grid.axes(group), &grid.axes(group & nontrivial)) << group.to_string();
      continue;
    }
    Communicator& c = grid.axes(group);
    std::uint64_t members = std::uint64_t{1} << w;
    c.allreduce(Buffer(&members, 1))->wait();
    std::uint64_t expected = 0;
    int size = 1;
    for (GridAxis a : group.axes()) {
      size *= e.size[at(a)];
    }
    for (int r = 0; r < n; ++r) {
      const Expected o = expected_place(resolved, r, n);
      bool same = o.trainer == e.trainer;
      for (GridAxis a : kAxes) {
        same = same && (group.contains(a) || o.coord[at(a)] == e.coord[at(a)]);
      }
      expected |= same ? std::uint64_t{1} << r : 0;
    }
    EXPECT_EQ(members, expected) << group.to_string();
    EXPECT_EQ(c.size(), size) << group.to_string();
  }
  EXPECT_EQ(grid.axes(AxisSet::all()).size(), grid.trainer().size());
  // grid_place computes the same placement without MPI.
  const GridPlace computed = grid_place(resolved, e.local);
  EXPECT_EQ(computed.size, place.size);
  EXPECT_EQ(computed.coord, place.coord);

  // The place drives Layout: dimension 0 of (10, 7) over data, dimension 1 over tensor.
  const Layout layout = Layout::split({10, 7}, 0, GridAxis::data).and_split(1, GridAxis::tensor);
  const auto block = [](Index extent, int parts, int part) {
    return extent / parts + (part < extent % parts ? 1 : 0);
  };
  EXPECT_EQ(layout.local_shape(place),
            (Shape{block(10, e.size[at(GridAxis::data)], e.coord[at(GridAxis::data)]),
                   block(7, e.size[at(GridAxis::tensor)], e.coord[at(GridAxis::tensor)])}));
}

struct Failure {
  std::string message;
  int exit_code = 0;
  bool on_all_ranks = false;
};
Failure grid_failure(const GridSpec& spec) {
  try {
    const ProcessGrid grid(MPI_COMM_WORLD, spec);
  } catch (const Error& e) {
    return {e.message(), e.exit_code(), e.on_all_ranks()};
  }
  return {};
}

}  // namespace

TEST(ProcessGrid, EveryFactorisationOfTheWorld) {
  const int n = world_size();
  std::vector<std::vector<int>> all;
  std::vector<int> prefix;
  factorisations(n, 6, prefix, all);  // trainers, data, pipeline, tensor, spatial0, spatial1
  for (size_t i = 0; i < all.size(); ++i) {
    const std::vector<int>& f = all[i];
    GridSpec resolved{f[0], f[1], f[2], f[3], {f[4], f[5]}};
    GridSpec spec = resolved;
    if (i % 2 == 1) {
      spec.data = 0;  // the rest: must resolve to the same grid
    }
    check_grid(spec, resolved);
  }
}

TEST(ProcessGrid, OneTwoAndThreeSpatialDimensions) {
  const int n = world_size();
  check_grid({1, 0, 1, 1, {}}, {1, n, 1, 1, {}});
  check_grid({1, 0, 1, 1, {n}}, {1, 1, 1, 1, {n}});
  check_grid({1, 1, 1, 1, {1, 1, n}}, {1, 1, 1, 1, {1, 1, n}});
}

TEST(ProcessGrid, CollectivesStayInsideTheirTrainerAndAxis) {
  // Two trainers where the world splits evenly, each data × the rest.
  const int n = world_size();
  const int trainers = n % 2 == 0 ? 2 : 1;
  const ProcessGrid grid(MPI_COMM_WORLD, {trainers, 0, 1, 1, {1, 1}});
  const int per = n / trainers;
  std::vector<float> v{static_cast<float>(world_rank())};
  grid.axis(GridAxis::data).allreduce(v)->wait();
  // The sum of the world ranks of this trainer's block.
  const int first = grid.trainer_index() * per;
  EXPECT_EQ(v[0], static_cast<float>(per * first + per * (per - 1) / 2));
}

TEST(ProcessGrid, AGridThatDoesNotFitFailsWithOneMessageOnEveryRank) {
  const int n = world_size();
  const std::string job = std::to_string(n);
  const std::string more = std::to_string(n + 1);
  const auto expect_input_error = [](const GridSpec& spec, const std::string& message) {
    const Failure f = grid_failure(spec);
    EXPECT_EQ(f.message, message);
    EXPECT_EQ(f.exit_code, 2) << f.message;
    EXPECT_TRUE(f.on_all_ranks) << f.message;
  };
  expect_input_error({1, n + 1, 1, 1, {1, 1}}, "parallel: trainers 1 × data " + more +
                                                   " × pipeline 1 × tensor 1 × spatial [1, 1] = " +
                                                   more + " ranks, but the job has " + job);
  if (n == 2) {  // the example of the documentation
    expect_input_error({1, 3, 1, 1, {1, 1}},
                       "parallel: trainers 1 × data 3 × pipeline 1 × tensor 1 × spatial [1, 1] = "
                       "3 ranks, but the job has 2");
  }
  if (n != 8) {
    expect_input_error({2, 1, 2, 1, {1, 2}},
                       "parallel: trainers 2 × data 1 × pipeline 2 × tensor 1 × spatial [1, 2] = 8 "
                       "ranks, but the job has " +
                           job);
  }
  expect_input_error({1, 0, 1, n + 1, {1, 1}}, "parallel: trainers 1 × pipeline 1 × tensor " +
                                                   more + " × spatial [1, 1] = " + more +
                                                   " ranks, which does not divide the job's " +
                                                   job + " (data = 0 takes the rest)");
  expect_input_error({1, 0, 0, 1, {1, 1}}, "parallel: pipeline = 0 must be >= 1");
  expect_input_error({1, -1, 1, 1, {1, 1}},
                     "parallel: data = -1 must be >= 1, or 0 for the rest of the ranks");
  expect_input_error({1, 0, 1, 1, {1, 1, 1, 1}},
                     "parallel: spatial = [1, 1, 1, 1] has 4 entries, at most 3");
  expect_input_error({1, 0, 1, 1, {2, 0}}, "parallel: spatial = [2, 0] must hold sizes >= 1");
  // Bad on the last rank alone: every rank still fails, with that rank's message.
  GridSpec last_bad{1, 0, 1, 1, {1, 1}};
  if (world_rank() == n - 1) {
    last_bad.tensor = 0;
  }
  expect_input_error(last_bad, "parallel: tensor = 0 must be >= 1");
}

TEST(ProcessGrid, RanksGivenDifferentGridsFailTogether) {
  const int n = world_size();
  if (n == 1) {
    GTEST_SKIP() << "needs two ranks";
  }
  // Both grids fit the job, but they are not the same grid.
  const GridSpec spec = world_rank() == 0 ? GridSpec{n, 1, 1, 1, {1, 1}} : GridSpec{};
  const Failure f = grid_failure(spec);
  EXPECT_EQ(f.message, "parallel: rank 1 was given the grid trainers 1 × data " +
                           std::to_string(n) +
                           " × pipeline 1 × tensor 1 × spatial [1, 1] but rank 0 trainers " +
                           std::to_string(n) +
                           " × data 1 × pipeline 1 × tensor 1 × spatial [1, 1]; every rank must "
                           "build the same grid");
  EXPECT_TRUE(f.on_all_ranks);
}
