// Spatial decomposition does not change the math (DESIGN.md, idea 3): a 3-D (and a 2-D) CNN whose
// samples are split over the grid's spatial axes — convolutions with kernels 3 and 5, stride 2,
// padding and none, max and average pooling, batch normalisation over the whole volume (and the
// data axis: sync = true), dropout, global pooling into a dense head — trained 10 steps equals the
// same deck on one rank within 1e-5, loss and every parameter, on odd extents that do not split
// evenly; at [n,1,1], [1,n,1], [1,1,n] for n = the world size and, at 4 ranks, [2,2,1], [1,2,2]
// and data 2 × [2,1,1]. Each rank reads only its tile of every sample. Bad splits are refused
// with one message on every rank.
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "support/trained.hpp"
#include "tessera/core/error.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/train/trainer.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <string>
#include <vector>

using namespace tessera;
using namespace tessera::testing;

namespace {

// Extents odd and uneven at 2, 3 and 4 ranks along any dimension; every layer's output keeps at
// least 4 planes so that no rank is left without one.
const Shape kVolume{1, 11, 9, 10};
const Shape kImage{1, 11, 10};

// A regression split /train of 24 random samples of `shape` with 2 targets (their mean and the
// mean of their first half), written by rank 0.
void write_volumes(const std::string& path, const Shape& shape) {
  const size_t n = 24;
  const auto size = static_cast<size_t>(numel(shape));
  std::vector<float> x(n * size);
  std::vector<float> y(n * 2);
  const rng::CounterRng gen(9, 4);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = gen.uniform(i) - 0.5F;
  }
  for (size_t s = 0; s < n; ++s) {
    double all = 0.0;
    double half = 0.0;
    for (size_t j = 0; j < size; ++j) {
      const auto v = static_cast<double>(x[s * size + j]);
      all += v;
      half += j < size / 2 ? v : 0.0;
    }
    y[2 * s] = static_cast<float>(10.0 * all / static_cast<double>(size));
    y[2 * s + 1] = static_cast<float>(10.0 * half / static_cast<double>(size / 2));
  }
  tessera::testing::write_regression_split(path, shape, x, 2, y);
}

// The deck for samples of `shape` (2 or 3 spatial dimensions).
std::string deck_text(const Shape& shape) {
  const int nd = static_cast<int>(shape.size()) - 1;
  return fmt::format(R"(
[run]
seed = 21
steps = 10
log_every = 100
[data]
batch = 4
[model]
input = [{}]
layers = [
  {{ conv{nd}d = {{ out = 3, kernel = 3 }} }}, {{ batchnorm{nd}d = {{ sync = true }} }}, {{ relu = {{}} }},
  {{ conv{nd}d = {{ out = 4, kernel = 5, stride = 2, pad = 2 }} }}, {{ tanh = {{}} }},
  {{ maxpool{nd}d = {{ kernel = 3, stride = 1, pad = 1 }} }}, {{ dropout = {{ p = 0.2 }} }},
  {{ conv{nd}d = {{ out = 4, kernel = 3, pad = 1 }} }}, {{ relu = {{}} }},
  {{ avgpool{nd}d = {{ kernel = 3, stride = 1, pad = 1 }} }},
  {{ global_avgpool = {{}} }}, {{ linear = {{ out = 6 }} }}, {{ relu = {{}} }}, {{ linear = {{ out = 2 }} }},
]
loss = "mse"
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
)",
                     fmt::join(shape, ", "), fmt::arg("nd", nd));
}

// The splits of the world's ranks for samples of `nd` spatial dimensions: all of them along each
// dimension, and at 4 ranks two dimensions at once and data × spatial.
std::vector<std::vector<std::string>> splits(int nd) {
  const int n = world_size();
  std::vector<std::vector<std::string>> out;
  for (int d = 0; d < nd; ++d) {
    std::vector<int> s(static_cast<size_t>(nd), 1);
    s[static_cast<size_t>(d)] = n;
    out.push_back({fmt::format("parallel.spatial=[{}]", fmt::join(s, ","))});
  }
  if (n == 4) {
    out.push_back({nd == 3 ? "parallel.spatial=[2,2,1]" : "parallel.spatial=[2,2]"});
    if (nd == 3) {
      out.push_back({"parallel.spatial=[1,2,2]"});
    }
    out.push_back(
        {nd == 3 ? "parallel.spatial=[2,1,1]" : "parallel.spatial=[2,1]", "parallel.data=2"});
  }
  return out;
}

class SpatialTraining : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    write_volumes(path("vol.h5"), kVolume);
    write_volumes(path("img.h5"), kImage);
  }
  std::string path(const std::string& name) const { return m_dir.path() + "/" + name; }
  const Shape& shape() const { return GetParam() == 3 ? kVolume : kImage; }

  deck::Deck deck(std::vector<std::string> overrides, const std::string& output) const {
    overrides.push_back("data.train=" + path(GetParam() == 3 ? "vol.h5" : "img.h5") + ":/train");
    overrides.push_back("run.output=" + path(output));
    if (GetParam() == 2) {
      // A 2-D model's grid has two spatial entries.
      bool set = false;
      for (const std::string& o : overrides) {
        set = set || o.rfind("parallel.spatial=", 0) == 0;
      }
      if (!set) {
        overrides.push_back("parallel.spatial=[1,1]");
      }
    }
    return deck::parse(deck_text(shape()), "spatial.toml", overrides);
  }

  SharedTempDir m_dir{"tessera-spatial-test"};
};

std::string joined(const std::vector<std::string>& v) {
  return fmt::format("{}", fmt::join(v, " "));
}

}  // namespace

TEST_P(SpatialTraining, SplitsMatchOneRankAfterTenSteps) {
  const Trained one =
      train_and_gather(deck({}, "one-" + std::to_string(world_rank())), MPI_COMM_SELF);
  ASSERT_TRUE(std::isfinite(one.summary.loss));
  int k = 0;
  for (const std::vector<std::string>& split : splits(GetParam())) {
    const std::string what = joined(split);
    const Trained p = train_and_gather(deck(split, "split" + std::to_string(k++)), MPI_COMM_WORLD);
    EXPECT_EQ(p.summary.steps, 10) << what;
    EXPECT_LE(std::fabs(p.summary.loss - one.summary.loss), 1e-5 * std::fabs(one.summary.loss))
        << what << ": loss " << p.summary.loss << " vs one rank's " << one.summary.loss;
    expect_close(p, one, 1e-5, what);
  }
}

TEST_P(SpatialTraining, CheckpointRestartsOnAnotherSplit) {
  const int nd = GetParam();
  const int n = world_size();
  std::vector<int> along_first(static_cast<size_t>(nd), 1);
  std::vector<int> along_last(static_cast<size_t>(nd), 1);
  along_first[0] = n;
  along_last.back() = n;
  const std::string first = fmt::format("parallel.spatial=[{}]", fmt::join(along_first, ","));
  const std::string last = fmt::format("parallel.spatial=[{}]", fmt::join(along_last, ","));
  // Saved at step 5 of 10 on the split along the first dimension; the checkpoint holds every
  // tensor at its global shape.
  const std::string saved = path("saved-" + std::to_string(nd));
  train::Trainer(deck({first, "checkpoint.every_steps=5", "checkpoint.dir=" + saved}, "saving"),
                 MPI_COMM_WORLD)
      .run();
  const std::string file = saved + "/ckpt-00000005.h5";
  const std::string me = std::to_string(world_rank());
  const Trained one = train_and_gather(deck({}, "ref-" + me), MPI_COMM_SELF);
  // Restarted on one rank and on the split along the last dimension.
  const Trained alone = train_and_gather(
      deck({"checkpoint.restart=" + file, "checkpoint.dir=" + path("re-one-" + me)},
           "re-one-" + me),
      MPI_COMM_SELF);
  const Trained other = train_and_gather(
      deck({last, "checkpoint.restart=" + file, "checkpoint.dir=" + path("re-last")}, "re-last"),
      MPI_COMM_WORLD);
  EXPECT_EQ(alone.summary.steps, 10);
  EXPECT_EQ(other.summary.steps, 10);
  expect_close(alone, one, 1e-5, "restarted on one rank from " + first);
  expect_close(other, one, 1e-5, "restarted with " + last + " from " + first);
}

std::string dims_name(const ::testing::TestParamInfo<int>& p) {
  return std::to_string(p.param) + "d";
}

INSTANTIATE_TEST_SUITE_P(Dims, SpatialTraining, ::testing::Values(2, 3), dims_name);

TEST(SpatialErrors, ASplitLargerThanTheVolumeIsRefusedOnEveryRank) {
  const int n = world_size();
  if (n < 2) {
    GTEST_SKIP() << "a split needs two ranks";
  }
  // n ranks along a depth of n - 1 planes.
  const std::string text = fmt::format(R"(
[data]
train = "none.h5:/train"
batch = 4
[model]
input = [1, {}, 8, 8]
layers = [ {{ conv3d = {{ out = 2, kernel = 3, pad = 1 }} }}, {{ global_avgpool = {{}} }} ]
loss = "mse"
[optimizer]
type = "sgd"
lr = 0.1
[parallel]
spatial = [{}, 1, 1]
)",
                                       n - 1, n);
  const deck::Deck d = deck::parse(text, "bad.toml", {});
  try {
    train::Trainer t(d, MPI_COMM_WORLD);
    FAIL() << "a split larger than the volume was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(),
              fmt::format("parallel.spatial = [{}, 1, 1]: the grid splits the input's D extent {} "
                          "over {} ranks: more ranks than planes (samples (1, {}, 8, 8))",
                          n, n - 1, n, n - 1));
    EXPECT_TRUE(e.on_all_ranks());
  }
}

TEST(SpatialErrors, AKernelWiderThanATileIsRefusedOnEveryRank) {
  const int n = world_size();
  if (n < 3) {
    GTEST_SKIP() << "tiles of one plane need three ranks or more";
  }
  // Tiles of 1 or 2 planes; a kernel 5 with padding 2 reads 2 planes from each side.
  const std::string text = fmt::format(R"(
[data]
train = "none.h5:/train"
batch = 4
[model]
input = [1, {}, 8, 8]
layers = [ {{ conv3d = {{ out = 2, kernel = 5, pad = 2 }} }}, {{ global_avgpool = {{}} }} ]
loss = "mse"
[optimizer]
type = "sgd"
lr = 0.1
[parallel]
spatial = [{}, 1, 1]
)",
                                       n + 1, n);
  const deck::Deck d = deck::parse(text, "bad.toml", {});
  try {
    train::Trainer t(d, MPI_COMM_WORLD);
    FAIL() << "a kernel wider than a tile was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("conv3d 'conv3d0': kernel 5 with stride 1 and pad 2 is wider than "
                               "a tile"),
              std::string::npos)
        << e.message();
    EXPECT_TRUE(e.on_all_ranks());
  }
}
