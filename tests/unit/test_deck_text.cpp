// deck::DeckText: a checkpoint's embedded deck read by key, and the keys a restart's deck changes
// (written out by hand here: each difference the restart's line must name).
#include "tessera/deck/deck.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using tessera::deck::DeckText;

namespace {
const char* const kSaved = R"(
[run]
seed = 3
[data]
batch = 16
shuffle = false
[model]
layers = [ { linear = { out = 8 } }, { dropout = { p = 0.1 } } ]
[optimizer]
type = "sgd"
lr = 0.01
momentum = 0.9
schedule = { type = "cosine", warmup_steps = 3 }
)";
}  // namespace

TEST(DeckText, ReadsKeysByTheirDottedName) {
  const DeckText d(kSaved);
  EXPECT_EQ(d.integer("data.batch"), 16);
  EXPECT_EQ(d.boolean("data.shuffle"), false);
  EXPECT_EQ(d.string("optimizer.type"), "sgd");
  EXPECT_EQ(d.integer("optimizer.schedule.warmup_steps"), 3);
  EXPECT_FALSE(d.integer("optimizer.lr"));  // a float, not an integer
  EXPECT_FALSE(d.string("no.such.key"));
  EXPECT_FALSE(DeckText("not [ toml").integer("data.batch"));
}

TEST(DeckText, ChangedNamesEachDifferingKeyUnderTheGivenPrefixes) {
  const DeckText saved(kSaved);
  const DeckText same(kSaved);
  EXPECT_TRUE(saved.changed(same, {"optimizer", "model", "data.shuffle"}).empty());

  const DeckText now(R"(
[run]
seed = 4
[data]
batch = 32
shuffle = true
[model]
layers = [ { linear = { out = 8 } }, { dropout = { p = 0.25 } } ]
[optimizer]
type = "sgd"
lr = 0.02
momentum = 0.9
nesterov = true
schedule = { type = "cosine", warmup_steps = 3.0 }
)");
  // In key order; run.seed and data.batch are not asked for; 3 and 3.0 are the same number.
  EXPECT_EQ(saved.changed(now, {"optimizer", "model", "data.shuffle"}),
            (std::vector<std::string>{
                "data.shuffle = false → true", "model.layers[1].dropout.p = 0.1 → 0.25",
                "optimizer.lr = 0.01 → 0.02", "optimizer.nesterov = (none) → true"}));
  EXPECT_EQ(saved.changed(now, {"run"}), std::vector<std::string>{"run.seed = 3 → 4"});
  // A text that is not TOML: nothing known, nothing said.
  EXPECT_TRUE(DeckText("not [ toml").changed(now, {"optimizer"}).empty());
  EXPECT_EQ(saved.changed(DeckText(""), {"optimizer"}).size(), 5U);  // each of the saved deck's
}
