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

#include <gtest/gtest.h>
#include <mpi.h>

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
