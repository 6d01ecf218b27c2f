// Data parallelism does not change the math (DESIGN.md, idea 3): k steps of the trainer on every
// rank of the world equal, parameter for parameter, k steps of the same deck on one rank, within
// 1e-5 relative (the gradient sums are reassociated, nothing else differs).
#include "support/mpi.hpp"
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
#include <filesystem>

using namespace tessera;
using tessera::testing::world_rank;
using tessera::testing::world_size;

namespace {

// A classification split of 40 random 1×4×4 samples in 3 classes, written by rank 0.
void write_dataset(const std::string& path) {
  if (world_rank() == 0) {
    const hsize_t n = 40;
    std::vector<float> x(n * 16);
    std::vector<std::int32_t> y(n);
    const rng::CounterRng gen(5, 6);
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = gen.uniform(i) - 0.5F;
    }
    for (hsize_t i = 0; i < n; ++i) {
      y[i] = static_cast<std::int32_t>(i % 3);
      x[i * 16] += 0.5F * static_cast<float>(y[i]);  // make it learnable
    }
    io::File f = io::File::create(path, MPI_COMM_SELF);
    {
      const io::Group root = f.root();
      root.attributes().set("format", std::string(io::kDatasetFormat));
      root.attributes().set("format_version", io::kDatasetVersion);
      const io::Group g = root.create_group("train");
      g.attributes().set("task", std::string("classification"));
      g.create_dataset("x", io::ElementType::f32, {n, 1, 4, 4})
          .write({{0, 0, 0, 0}, {n, 1, 4, 4}}, io::ElementType::f32, x.data(), false);
      g.create_dataset("y", io::ElementType::i32, {n})
          .write({{0}, {n}}, io::ElementType::i32, y.data(), false);
    }
    f.close();
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

const char* kDeck = R"(
[run]
seed = 7
steps = 6
log_every = 100
[data]
batch = 12
[model]
input = [1, 4, 4]
layers = [
  { conv2d = { out = 3, kernel = 3, pad = 1 } }, { tanh = {} }, { maxpool2d = { kernel = 2 } },
  { flatten = {} }, { linear = { out = 8 } }, { gelu = {} }, { dropout = { p = 0.25 } },
  { linear = { out = 3 } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "sgd"
lr = 0.1
momentum = 0.9
clip_grad_norm = 5.0
)";

}  // namespace

TEST(DataParallel, RanksMatchOneRankAfterKSteps) {
  long pid = static_cast<long>(getpid());
  MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("tessera-dp-test-" + std::to_string(pid)))
          .string();
  if (world_rank() == 0) {
    std::filesystem::create_directories(dir);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  write_dataset(dir + "/ds.h5");

  for (const std::string optimizer : {"sgd", "adamw"}) {
    std::string deck_text = kDeck;
    if (optimizer == "adamw") {  // momentum is an sgd key
      deck_text.replace(deck_text.find("momentum = 0.9\n"), 15, "");
    }
    const std::vector<std::string> common{"data.train=" + dir + "/ds.h5:/train",
                                          "optimizer.type=" + optimizer};
    std::vector<std::string> par = common;
    par.push_back("run.output=" + dir + "/par");
    std::vector<std::string> one = common;
    one.push_back("run.output=" + dir + "/one" + std::to_string(world_rank()));
    // The data-parallel run on every rank, and the same deck on this rank alone.
    const deck::Deck parallel_deck = deck::parse(deck_text, "dp.toml", par);
    const deck::Deck single_deck = deck::parse(deck_text, "dp.toml", one);

    train::Trainer parallel(parallel_deck, MPI_COMM_WORLD);
    const train::RunSummary ps = parallel.run();
    train::Trainer single(single_deck, MPI_COMM_SELF);
    const train::RunSummary ss = single.run();
    EXPECT_EQ(ps.steps, 6);
    EXPECT_EQ(ss.steps, 6);

    const auto a = parallel.model().all_parameters();
    const auto b = single.model().all_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const std::vector<float> pa = a[i]->value.to_host();
      const std::vector<float> pb = b[i]->value.to_host();
      double scale = 1e-12;
      double diff = 0.0;
      for (size_t j = 0; j < pa.size(); ++j) {
        scale = std::max(scale, std::fabs(static_cast<double>(pb[j])));
        diff = std::max(diff, std::fabs(static_cast<double>(pa[j]) - static_cast<double>(pb[j])));
      }
      EXPECT_LE(diff / scale, 1e-5)
          << optimizer << " " << a[i]->name << " at " << world_size() << " ranks";
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::filesystem::remove_all(dir);
  }
}
