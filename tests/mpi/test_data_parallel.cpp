// Data parallelism does not change the math (DESIGN.md, idea 3): k steps of the trainer on every
// rank of the world equal, parameter for parameter, k steps of the same deck on one rank, within
// 1e-5 relative (the gradient sums are reassociated, nothing else differs) — with buckets small
// enough to cut the model into several, with ZeRO-1, with gradient accumulation, and both; in
// deterministic mode they are equal bit for bit.
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/train/trainer.hpp"

#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

using namespace tessera;
using tessera::testing::world_rank;
using tessera::testing::world_size;
using namespace tessera::testing;

namespace {

// Each test trains on the tiny dataset, in a folder the ranks share.
class DataParallelTest : public ::testing::Test {
 protected:
  void SetUp() override { write_tiny_dataset(m_dir.path() + "/ds.h5"); }

  struct Runs {
    std::vector<std::vector<float>> parallel;  // every parameter after the run on every rank
    std::vector<std::vector<float>> single;    // the same deck on this rank alone
    std::vector<std::string> names;
    std::vector<std::vector<float>> parallel_buffers;  // every buffer, as the parameters
    std::vector<std::vector<float>> single_buffers;
    std::vector<std::string> buffer_names;
    std::vector<parallel::Shard> shards;  // ZeRO-1: this rank's pieces in the parallel run
    bool shared = false;                  // the parallel run reduced through shared memory
    int nodes = 0;                        // ... over this many nodes (more than one: hierarchical)
  };

  // Trains the deck (with `optimizer` and `overrides`) on every rank and on this rank alone.
  Runs run(const std::string& optimizer, const std::vector<std::string>& overrides,
           std::string deck_text = kTinyDeck) {
    if (optimizer == "adamw") {  // momentum is an sgd key
      deck_text.replace(deck_text.find("momentum = 0.9\n"), 15, "");
    }
    std::vector<std::string> common{"data.train=" + m_dir.path() + "/ds.h5:/train",
                                    "optimizer.type=" + optimizer};
    common.insert(common.end(), overrides.begin(), overrides.end());
    std::vector<std::string> par = common;
    par.push_back("run.output=" + m_dir.path() + "/par");
    std::vector<std::string> one = common;
    one.push_back("run.output=" + m_dir.path() + "/one" + std::to_string(world_rank()));
    const deck::Deck parallel_deck = deck::parse(deck_text, "dp.toml", par);
    const deck::Deck single_deck = deck::parse(deck_text, "dp.toml", one);

    Runs r;
    train::Trainer parallel(parallel_deck, MPI_COMM_WORLD);
    EXPECT_EQ(parallel.run().steps, 6);
    train::Trainer single(single_deck, MPI_COMM_SELF);
    EXPECT_EQ(single.run().steps, 6);
    for (const nn::Parameter* p : parallel.model().all_parameters()) {
      r.parallel.push_back(p->value.to_host());
      r.names.push_back(p->name);
    }
    for (const nn::Parameter* p : single.model().all_parameters()) {
      r.single.push_back(p->value.to_host());
    }
    for (const nn::Parameter* b : parallel.model().all_buffers()) {
      r.parallel_buffers.push_back(b->value.to_host());
      r.buffer_names.push_back(b->name);
    }
    for (const nn::Parameter* b : single.model().all_buffers()) {
      r.single_buffers.push_back(b->value.to_host());
    }
    r.shards = parallel.data_parallel().shards();
    r.shared = parallel.data_parallel().shared_reduction();
    r.nodes = parallel.data_parallel().shared_nodes();
    return r;
  }

  SharedTempDir m_dir{"tessera-dp-test"};
};

}  // namespace

TEST_F(DataParallelTest, RanksMatchOneRankAfterKSteps) {
  // bucket_mb = 0.0005 (131 floats) puts the model's 8 parameters into several buckets. The
  // ranks of the test share one node, so the default reduction is through shared memory;
  // parallel.reduce = "mpi" takes MPI's non-blocking collectives instead.
  const std::vector<std::pair<std::string, std::vector<std::string>>> variants{
      {"one bucket", {}},
      {"small buckets", {"parallel.bucket_mb=0.0005"}},
      {"zero-1", {"parallel.zero=1", "parallel.bucket_mb=0.0005"}},
      {"accumulation", {"data.micro_batches=3"}},
      {"zero-1 + accumulation", {"parallel.zero=1", "data.micro_batches=3"}},
      {"mpi, small buckets", {"parallel.reduce=mpi", "parallel.bucket_mb=0.0005"}},
      {"mpi, zero-1", {"parallel.reduce=mpi", "parallel.zero=1", "parallel.bucket_mb=0.0005"}},
      {"mpi, zero-1 + accumulation",
       {"parallel.reduce=mpi", "parallel.zero=1", "data.micro_batches=3"}},
      // Clipping that bites every step writes the summed gradients in place: through shared
      // memory, only once every rank has copied its sums out of this rank's array.
      {"clipping", {"optimizer.clip_grad_norm=0.05"}},
      {"clipping, small buckets", {"optimizer.clip_grad_norm=0.05", "parallel.bucket_mb=0.0005"}},
      {"zero-1, clipping", {"optimizer.clip_grad_norm=0.05", "parallel.zero=1"}},
  };
  for (const std::string optimizer : {"sgd", "adamw"}) {
    for (const auto& [what, overrides] : variants) {
      const Runs r = run(optimizer, overrides);
      EXPECT_EQ(r.shared, world_size() > 1 && what.rfind("mpi", 0) != 0) << what;
      ASSERT_EQ(r.parallel.size(), r.single.size());
      for (size_t i = 0; i < r.parallel.size(); ++i) {
        ASSERT_EQ(r.parallel[i].size(), r.single[i].size());
        EXPECT_LE(relative_difference(r.parallel[i], r.single[i]), 1e-5)
            << optimizer << ", " << what << ": " << r.names[i] << " at " << world_size()
            << " ranks";
      }
    }
  }
}

TEST_F(DataParallelTest, ZeroShardsCoverEveryParameterOnce) {
  const Runs r = run("adamw", {"parallel.zero=1", "parallel.bucket_mb=0.0005"});
  // Every rank's pieces, gathered: each parameter's elements covered exactly once.
  std::map<std::string, std::vector<int>> covered;
  for (size_t i = 0; i < r.names.size(); ++i) {
    covered[r.names[i]].assign(r.parallel[i].size(), 0);
  }
  for (int rank = 0; rank < world_size(); ++rank) {
    long n = static_cast<long>(r.shards.size());
    MPI_Bcast(&n, 1, MPI_LONG, rank, MPI_COMM_WORLD);
    for (long k = 0; k < n; ++k) {
      char name[64] = {};
      long range[2] = {0, 0};
      if (world_rank() == rank) {
        std::snprintf(name, sizeof(name), "%s", r.shards[static_cast<size_t>(k)].name.c_str());
        range[0] = static_cast<long>(r.shards[static_cast<size_t>(k)].offset);
        range[1] = static_cast<long>(r.shards[static_cast<size_t>(k)].count);
      }
      MPI_Bcast(name, sizeof(name), MPI_CHAR, rank, MPI_COMM_WORLD);
      MPI_Bcast(range, 2, MPI_LONG, rank, MPI_COMM_WORLD);
      ASSERT_EQ(covered.count(name), 1U) << name;
      for (long e = range[0]; e < range[0] + range[1]; ++e) {
        ++covered[name].at(static_cast<size_t>(e));
      }
    }
  }
  for (const auto& [name, counts] : covered) {
    EXPECT_EQ(std::count(counts.begin(), counts.end(), 1), static_cast<long>(counts.size()))
        << name << " at " << world_size() << " ranks";
  }
}

TEST_F(DataParallelTest, DeterministicModeIsBitIdenticalToOneRank) {
  // 12 groups of one sample: every rank count of the test (1, 2, 3, 4) divides them.
  for (const std::string optimizer : {"sgd", "adamw"}) {
    for (const std::string zero : {"0", "1"}) {
      const Runs r = run(optimizer, {"parallel.deterministic=true", "parallel.sample_groups=12",
                                     "data.drop_last=true", "parallel.zero=" + zero});
      for (size_t i = 0; i < r.parallel.size(); ++i) {
        ASSERT_EQ(r.parallel[i].size(), r.single[i].size());
        EXPECT_EQ(std::memcmp(r.parallel[i].data(), r.single[i].data(),
                              r.single[i].size() * sizeof(float)),
                  0)
            << optimizer << ", zero = " << zero << ": " << r.names[i] << " differs at "
            << world_size() << " ranks (max relative "
            << relative_difference(r.parallel[i], r.single[i]) << ")";
      }
    }
  }
}

TEST_F(DataParallelTest, DeterministicModeRunningStatisticsAreBitIdenticalToOneRank) {
  // BatchNorm after the convolution: each sample group (2 samples, 32 values per channel) takes
  // its own batch statistics, and the running estimates move once per group in the global order
  // of the groups — on one rank as on 2, 3 or 4 (batch 12: 6 groups of 2 samples; at 4 ranks 12
  // groups of 1).
  std::string deck = kTinyDeck;
  const std::string conv = "{ conv2d = { out = 3, kernel = 3, pad = 1 } },";
  deck.replace(deck.find(conv), conv.size(), conv + " { batchnorm2d = { momentum = 0.3 } },");
  const std::string groups = world_size() == 4 ? "12" : "6";
  for (const std::string zero : {"0", "1"}) {
    const Runs r = run("sgd",
                       {"parallel.deterministic=true", "parallel.sample_groups=" + groups,
                        "data.drop_last=true", "parallel.zero=" + zero},
                       deck);
    ASSERT_EQ(r.parallel_buffers.size(), 2U);  // running_mean, running_var
    ASSERT_EQ(r.single_buffers.size(), 2U);
    for (size_t i = 0; i < r.parallel_buffers.size(); ++i) {
      EXPECT_EQ(r.parallel_buffers[i], r.single_buffers[i])
          << "zero = " << zero << ": " << r.buffer_names[i] << " differs at " << world_size()
          << " ranks (max relative "
          << relative_difference(r.parallel_buffers[i], r.single_buffers[i]) << ")";
      EXPECT_NE(r.single_buffers[i], std::vector<float>(3, i == 0 ? 0.0F : 1.0F))
          << r.buffer_names[i] << " never moved";
    }
    for (size_t i = 0; i < r.parallel.size(); ++i) {
      EXPECT_EQ(r.parallel[i], r.single[i]) << "zero = " << zero << ": " << r.names[i];
    }
  }
}

TEST_F(DataParallelTest, DeterministicModeComputesTheSameGradient) {
  // Same steps as plain data parallelism, only summed in another order.
  const Runs det = run(
      "sgd", {"parallel.deterministic=true", "parallel.sample_groups=12", "data.drop_last=true"});
  const Runs plain = run("sgd", {"data.drop_last=true"});
  for (size_t i = 0; i < det.parallel.size(); ++i) {
    EXPECT_LE(relative_difference(det.parallel[i], plain.single[i]), 1e-5) << det.names[i];
  }
}

// Across nodes (issue 18): the ranks made to look like nodes of 2 (TESSERA_TEST_RANKS_PER_NODE,
// comm::split_by_node) reduce hierarchically — shared memory within each node, MPI between the
// nodes' ranks of the same node rank — and still equal one rank within 1e-5; in deterministic mode
// (sample-group order, whatever the nodes) bit for bit. At 4 ranks: 2 × 2 nodes, hierarchical; at
// 2: one node; at 3: nodes of 2 and 1, uneven, so MPI; with ZeRO-1 across nodes, MPI.
TEST_F(DataParallelTest, HierarchicalReductionOverSimulatedNodesMatchesOneRank) {
  setenv("TESSERA_TEST_RANKS_PER_NODE", "2", 1);
  const int n = world_size();
  const int nodes = (n + 1) / 2;
  const bool even = n % 2 == 0;
  const std::vector<std::pair<std::string, std::vector<std::string>>> variants{
      {"one bucket", {}},
      {"small buckets", {"parallel.bucket_mb=0.0005"}},
      {"accumulation", {"data.micro_batches=3", "parallel.bucket_mb=0.0005"}},
      {"clipping", {"optimizer.clip_grad_norm=0.05", "parallel.bucket_mb=0.0005"}},
      {"zero-1", {"parallel.zero=1", "parallel.bucket_mb=0.0005"}},
  };
  for (const std::string optimizer : {"sgd", "adamw"}) {
    for (const auto& [what, overrides] : variants) {
      const Runs r = run(optimizer, overrides);
      const bool zero = what == "zero-1";
      const bool shared = n > 1 && (nodes == 1 || (even && !zero));
      EXPECT_EQ(r.shared, shared) << what << " at " << n << " ranks";
      EXPECT_EQ(r.nodes, shared ? nodes : 0) << what << " at " << n << " ranks";
      for (size_t i = 0; i < r.parallel.size(); ++i) {
        EXPECT_LE(relative_difference(r.parallel[i], r.single[i]), 1e-5)
            << optimizer << ", " << what << ": " << r.names[i] << " at " << n << " ranks";
      }
    }
  }
  const Runs det = run(
      "sgd", {"parallel.deterministic=true", "parallel.sample_groups=12", "data.drop_last=true"});
  for (size_t i = 0; i < det.parallel.size(); ++i) {
    EXPECT_EQ(std::memcmp(det.parallel[i].data(), det.single[i].data(),
                          det.single[i].size() * sizeof(float)),
              0)
        << "deterministic: " << det.names[i] << " at " << n << " ranks";
  }
  unsetenv("TESSERA_TEST_RANKS_PER_NODE");
}

// run.check_replicas: replicas that hold the same parameters pass the check, however the gradients
// are summed (MPI, shared memory, ZeRO-1, whose parameters are gathered before the comparison);
// one element changed on the last rank before training (MPI reduction, no ZeRO: every rank updates
// its own copy, so the difference stays) is found at the first check, on every rank, naming the
// step, the parameter, the rank and the difference.
TEST_F(DataParallelTest, ReplicasThatDifferAreFoundAtTheNextCheck) {
  const int n = world_size();
  const auto overrides = [&](const std::string& reduce, const std::string& zero) {
    return std::vector<std::string>{"data.train=" + m_dir.path() + "/ds.h5:/train",
                                    "run.output=" + m_dir.path() + "/rc", "run.check_replicas=4",
                                    "parallel.reduce=" + reduce, "parallel.zero=" + zero};
  };
  for (const auto& [reduce, zero] : std::vector<std::pair<std::string, std::string>>{
           {"mpi", "0"}, {"mpi", "1"}, {"auto", "0"}, {"auto", "1"}}) {
    train::Trainer same(deck::parse(kTinyDeck, "dp.toml", overrides(reduce, zero)), MPI_COMM_WORLD);
    EXPECT_EQ(same.run().steps, 6) << reduce << ", zero " << zero;
  }
  train::Trainer t(deck::parse(kTinyDeck, "dp.toml", overrides("mpi", "0")), MPI_COMM_WORLD);
  nn::Parameter* p = t.model().all_parameters()[2];  // the first linear layer's weight
  if (world_rank() == n - 1 && n > 1) {
    p->value.data()[5] += 0.25F;
  }
  std::string message = "no error";
  try {
    t.run();
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_TRUE(e.on_all_ranks());
    message = e.message();
  }
  if (n == 1) {
    EXPECT_EQ(message, "no error") << "one rank has no replicas to compare";
  } else {
    EXPECT_EQ(message, "step 4: the data-parallel replicas' parameters differ: " + p->name +
                           " on rank " + std::to_string(n - 1) +
                           " is not rank 0's (largest difference 0.25); they must be identical "
                           "bit for bit (a fault of the machine or a bug: please report it)");
  }
}
