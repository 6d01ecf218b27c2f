// tessera generate: a language model's checkpoint continues a prompt — the same bytes on one rank
// and split over every rank of the world as tensor ranks, all inside the vocabulary; bad input
// (a prompt byte outside the vocabulary, a checkpoint of a model that is not a language model,
// options out of range) is one message on every rank, exit code 2.
#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/train/generate.hpp"
#include "tessera/train/trainer.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <string>

using namespace tessera;
using namespace tessera::testing;

namespace {

// A two-block GPT of vocabulary 100, its heads split over the tensor axis.
const char* kGpt = R"(
[run]
seed = 9
steps = 5
log_every = 100
[data]
batch = 4
[model]
context = 16
layers = [
  { embedding = { vocab = 100, dim = 24, positions = 16, split = true } },
  { repeat = { times = 2, layers = [
      { residual = { layers = [ { layernorm = {} }, { attention = { heads = 12, split = true } } ] } },
      { residual = { layers = [ { layernorm = {} }, { linear = { out = 48, split = "output" } },
                               { gelu = {} }, { linear = { out = 24, split = "input" } } ] } },
  ] } },
  { layernorm = {} },
  { linear = { out = 100, bias = false, split = "output" } },
]
loss = "softmax_cross_entropy"
[optimizer]
type = "adamw"
lr = 0.003
[checkpoint]
every_steps = 100
)";

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.exit_code(), 2) << e.what();
    EXPECT_TRUE(e.on_all_ranks()) << e.what();
    return e.what();
  }
  return "no error";
}

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_tiny_tokens(path("tokens.h5"), 2048, 100);
    const int n = world_size();
    const std::vector<std::string> o{"data.train=" + path("tokens.h5") + ":/train",
                                     "run.output=" + path("run"),
                                     "parallel.tensor=" + std::to_string(12 % n == 0 ? n : 1)};
    train::Trainer(deck::parse(kGpt, "gpt.toml", o), MPI_COMM_WORLD).run();
  }
  std::string path(const std::string& name) const { return m_dir.path() + "/" + name; }
  std::string checkpoint() const { return path("run") + "/ckpt/ckpt-00000005.h5"; }

  SharedTempDir m_dir{"tessera-generate-test"};
};

}  // namespace

TEST_F(GenerateTest, TheSameBytesOnOneRankAndOverTheWorld) {
  train::GenerateOptions o;
  o.prompt = "AND GOD SAID ";  // bytes below the vocabulary of 100
  o.tokens = 40;
  o.seed = 4;
  o.top_k = 20;
  MPI_Comm world = MPI_COMM_WORLD;
  if (12 % world_size() != 0) {
    GTEST_SKIP() << "12 heads do not split over " << world_size() << " ranks";
  }
  const std::string split = train::generate(checkpoint(), o, world);
  const std::string alone = train::generate(checkpoint(), o, MPI_COMM_SELF);
  EXPECT_EQ(split.size(), 40U);
  EXPECT_EQ(split, alone) << "at " << world_size() << " ranks";
  for (const char c : split) {
    EXPECT_LT(static_cast<unsigned char>(c), 100) << "a byte outside the vocabulary";
  }
  o.temperature = 0.0;  // greedy: no randomness at all
  EXPECT_EQ(train::generate(checkpoint(), o, world),
            train::generate(checkpoint(), o, MPI_COMM_SELF));
  o.seed = 5;
  o.temperature = 1.0;
  EXPECT_NE(train::generate(checkpoint(), o, MPI_COMM_SELF), alone) << "another seed, another text";
}

TEST_F(GenerateTest, BadInputIsOneMessageOnEveryRank) {
  train::GenerateOptions o;
  o.prompt = "ab\x96";
  EXPECT_EQ(error_of([&] { (void)train::generate(checkpoint(), o, MPI_COMM_WORLD); }),
            "generate: the prompt's byte 150 at position 2 is outside the model's vocabulary of "
            "100");
  o.prompt = "";
  EXPECT_EQ(error_of([&] { (void)train::generate(checkpoint(), o, MPI_COMM_WORLD); }),
            "generate: --prompt is empty: give at least one byte to continue");
  o.prompt = "a";
  o.tokens = 0;
  EXPECT_EQ(error_of([&] { (void)train::generate(checkpoint(), o, MPI_COMM_WORLD); }),
            "generate: --tokens 0 must be in [1, 1000000]");
  o.tokens = 5;
  EXPECT_EQ(error_of([&] { (void)train::generate(path("none.h5"), o, MPI_COMM_WORLD); }),
            "generate: " + path("none.h5") + ": no such file");
  // A checkpoint of a classifier (the tiny MLP deck) is not a language model.
  write_tiny_dataset(path("ds.h5"));
  train::Trainer(
      deck::parse(std::string(kTinyDeck) + "[checkpoint]\n", "mlp.toml",
                  {"data.train=" + path("ds.h5") + ":/train", "run.output=" + path("mlp")}),
      MPI_COMM_WORLD)
      .run();
  const std::string mlp = path("mlp") + "/ckpt/ckpt-00000006.h5";
  EXPECT_EQ(error_of([&] { (void)train::generate(mlp, o, MPI_COMM_WORLD); }),
            "generate: " + mlp +
                " holds a model of input (1, 4, 4), not a language model (its deck has no "
                "model.context)");
}
