// comm::SharedReduction, the node-local sum through an MPI-3 shared-memory window, against sums
// computed here independently: on every rank count of the test, over several rounds (each round
// overwrites the arrays the previous one read), with segments reported out of order, some never
// reported (finish_reduce() reports them), segments smaller than the rank count (empty chunks),
// and in ZeRO-1's form (sum of this rank's chunks only, then the parameters gathered).
//
// The terms are small integers times a power of two, so every sum is exact in float whatever the
// order: the expectation is equality.
#include "support/mpi.hpp"
#include "tessera/comm/shared_reduction.hpp"
#include "tessera/core/error.hpp"
#include "tessera/nn/linear.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/parallel/data_parallel.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

using namespace tessera;
using tessera::testing::world_rank;
using tessera::testing::world_size;

namespace {

// Rank r's gradient element i in round t.
float term(int rank, Index i, int round) {
  return static_cast<float>((rank + 1) * 3 + (i * 7 + round * 5) % 13) * 0.25F;
}

float expected_sum(Index i, int round) {
  float s = 0.0F;
  for (int r = 0; r < world_size(); ++r) {
    s += term(r, i, round);
  }
  return s;
}

// Segments of 5, 1, 0 (empty), 37 and 200 elements.
std::vector<Range> test_segments() {
  std::vector<Range> s;
  Index at = 0;
  for (Index n : {5, 1, 0, 37, 200}) {
    s.push_back({at, n});
    at += n;
  }
  return s;
}

Index total(const std::vector<Range>& segments) {
  return segments.back().offset + segments.back().count;
}

}  // namespace

TEST(SharedReduction, AllRanksOfTheTestShareOneNode) {
  EXPECT_TRUE(comm::on_one_node(MPI_COMM_WORLD));
  EXPECT_TRUE(comm::on_one_node(MPI_COMM_SELF));
}

TEST(SharedReduction, EveryRankHoldsTheSumAfterEveryRound) {
  const std::vector<Range> segments = test_segments();
  const Index n = total(segments);
  comm::SharedReduction reduction(MPI_COMM_WORLD, n, segments, false);
  ASSERT_EQ(reduction.size(), world_size());
  ASSERT_EQ(reduction.rank(), world_rank());
  for (int round = 0; round < 5; ++round) {
    reduction.begin_round();
    float* g = reduction.grads();
    for (Index i = 0; i < n; ++i) {
      g[i] = term(world_rank(), i, round);
    }
    // Report the last segment first and the second not at all: the sums must not care.
    reduction.ready(4);
    reduction.ready(0);
    reduction.progress();
    reduction.ready(3);
    reduction.finish_reduce();
    for (Index i = 0; i < n; ++i) {
      ASSERT_EQ(g[i], expected_sum(i, round))
          << "element " << i << ", round " << round << ", " << world_size() << " ranks";
    }
  }
}

TEST(SharedReduction, ChunksCoverEverySegmentOnce) {
  const std::vector<Range> segments = test_segments();
  comm::SharedReduction reduction(MPI_COMM_WORLD, total(segments), segments, true);
  for (size_t s = 0; s < segments.size(); ++s) {
    Index at = segments[s].offset;
    for (int k = 0; k < world_size(); ++k) {
      const Range c = reduction.chunk(s, k);
      EXPECT_EQ(c.offset, at) << "segment " << s << ", rank " << k;
      at += c.count;
    }
    EXPECT_EQ(at, segments[s].offset + segments[s].count) << "segment " << s;
  }
}

TEST(SharedReduction, ScatterOnlySumsOwnChunksAndGathersUpdatedValues) {
  const std::vector<Range> segments = test_segments();
  const Index n = total(segments);
  comm::SharedReduction reduction(MPI_COMM_WORLD, n, segments, true);
  float* v = reduction.values();
  for (Index i = 0; i < n; ++i) {
    v[i] = -1.0F;
  }
  for (int round = 0; round < 4; ++round) {
    reduction.gather_values();  // the previous round's update (nothing before round 0)
    if (round > 0) {
      for (Index i = 0; i < n; ++i) {  // every rank's update of round - 1: the sum, times 2
        ASSERT_EQ(v[i], 2.0F * expected_sum(i, round - 1)) << "element " << i;
      }
    }
    reduction.begin_round();
    float* g = reduction.grads();
    for (Index i = 0; i < n; ++i) {
      g[i] = term(world_rank(), i, round);
    }
    for (size_t s = 0; s < segments.size(); ++s) {
      reduction.ready(s);
    }
    reduction.finish_reduce();
    // This rank's chunks hold the sum; "update" them, as the optimizer would its pieces.
    reduction.begin_update();
    for (size_t s = 0; s < segments.size(); ++s) {
      const Range c = reduction.chunk(s, world_rank());
      for (Index i = c.offset; i < c.offset + c.count; ++i) {
        ASSERT_EQ(g[i], expected_sum(i, round)) << "element " << i << ", round " << round;
        v[i] = 2.0F * g[i];
      }
    }
    reduction.updated();
  }
  reduction.gather_values();
  for (Index i = 0; i < n; ++i) {
    ASSERT_EQ(v[i], 2.0F * expected_sum(i, 3)) << "element " << i;
  }
}

TEST(SharedReduction, RejectsSegmentsThatDoNotCutTheArray) {
  // A gap between segments: the same message on every rank, before any collective.
  try {
    comm::SharedReduction reduction(MPI_COMM_WORLD, 10, {{0, 4}, {5, 5}}, false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "shared reduction: segments must cut [0, 10) in order; one is [5, 10)"),
              std::string::npos)
        << e.what();
  }
}

TEST(SharedReduction, WindowSizeAndFreeSharedMemory) {
  // Flags (2 per segment + 3, a cache line each), two arrays of 64-byte-rounded floats, 64 of
  // slack.
  EXPECT_EQ(comm::SharedReduction::window_bytes(100, 2), 7 * 64 + 2 * 448 + 64);
  EXPECT_GT(comm::shared_memory_free(), size_t{0});
}

namespace {
// A two-layer model whose ranks each compute their own gradient, for DataParallel directly.
std::unique_ptr<nn::Sequential> small_model() {
  auto m = std::make_unique<nn::Sequential>("model", Shape{6});
  m->add(std::make_unique<nn::Linear>("fc0", Shape{6}, nn::LinearOptions{5, true}));
  m->add(std::make_unique<nn::Linear>("fc1", Shape{5}, nn::LinearOptions{3, true}));
  m->initialize(7);
  return m;
}
}  // namespace

TEST(SharedReduction, DataParallelFallsBackToMpiWhenSharedMemoryIsShort) {
  // 1 KiB of /dev/shm cannot hold the windows: "auto" sums with MPI (and says so on rank 0's
  // stderr); "shared" is an error on every rank. One rank never needs either.
  comm::MpiCommunicator data(MPI_COMM_WORLD, "data");
  {
    auto model = small_model();
    parallel::DataParallelOptions o;
    o.shared_memory_free = 1024;
    parallel::DataParallel dp(*model, data, o);
    EXPECT_FALSE(dp.shared_reduction());
  }
  {
    auto model = small_model();
    parallel::DataParallelOptions o;
    parallel::DataParallel dp(*model, data, o);  // this machine's /dev/shm is large enough
    EXPECT_EQ(dp.shared_reduction(), world_size() > 1);
  }
  auto model = small_model();
  parallel::DataParallelOptions o;
  o.reduce = parallel::Reduce::shared;
  o.shared_memory_free = 1024;
  if (world_size() == 1) {
    parallel::DataParallel dp(*model, data, o);
    EXPECT_FALSE(dp.shared_reduction());
    return;
  }
  try {
    parallel::DataParallel dp(*model, data, o);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    // 53 floats in one bucket: a window of 896 bytes a rank, with a tenth to spare.
    const double need = 1.1 * world_size() * comm::SharedReduction::window_bytes(53, 1);
    EXPECT_EQ(comm::SharedReduction::window_bytes(53, 1), 896U);
    const std::string expected = fmt::format(
        "data parallel: parallel.reduce = \"shared\" needs {:.1f} KiB of shared memory "
        "(/dev/shm) and 1.0 KiB are free; use \"auto\" or \"mpi\"",
        need / 1024.0);
    EXPECT_NE(m.find(expected), std::string::npos) << m << "\nexpected: " << expected;
  }
}
