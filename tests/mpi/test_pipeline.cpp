// Pipeline stages over every rank of the job (pipeline = the communicator's size): each rank
// allocates exactly the parameters of its own stage's layers — the cut `plan_stages` makes — and
// no other stage's; together the stages hold the whole model once; after the tiny deck's 6 steps
// every stage's parameters equal the same parameters trained on this rank alone with the same
// micro-batches, bit for bit (each stage computes what one rank computes, in the same order).
#include "support/tiny_training.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/train/trainer.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>

using namespace tessera;
using tessera::testing::world_rank;
using tessera::testing::world_size;

TEST(Pipeline, EachRankHoldsItsStageAndTrainsAsOneRank) {
  const tessera::testing::SharedTempDir dir("tessera-pipeline");
  tessera::testing::write_tiny_dataset(dir.path() + "/ds.h5");
  const int p = world_size();
  const std::vector<std::string> common{"data.train=" + dir.path() + "/ds.h5:/train",
                                        "data.micro_batches=4"};
  std::vector<std::string> par = common;
  par.push_back("parallel.pipeline=" + std::to_string(p));
  par.push_back("run.output=" + dir.path() + "/par");
  std::vector<std::string> one = common;
  one.push_back("run.output=" + dir.path() + "/one" + std::to_string(world_rank()));
  const deck::Deck pipelined = deck::parse(tessera::testing::kTinyDeck, "pp.toml", par);
  const deck::Deck single = deck::parse(tessera::testing::kTinyDeck, "pp.toml", one);

  train::Trainer stage(pipelined, MPI_COMM_WORLD);
  train::Trainer whole(single, MPI_COMM_SELF);
  EXPECT_EQ(stage.grid().place().coord_of(GridAxis::pipeline), world_rank());

  // The cut, from the deck alone: this rank's units and their layers' parameter names.
  const train::StagePlan plan = train::plan_stages(pipelined, stage.grid().place());
  ASSERT_EQ(plan.sizes.size(), static_cast<size_t>(p));
  const auto s = static_cast<size_t>(world_rank());
  std::set<std::string> mine_expected;
  Index expected_elements = 0;
  for (size_t u = plan.first[s]; u < plan.first[s + 1]; ++u) {
    expected_elements += plan.unit_local_params[u];
    for (const nn::Parameter* q : whole.model().all_parameters()) {
      if (q->name.rfind(plan.unit_names[u] + ".", 0) == 0) {
        mine_expected.insert(q->name);
      }
    }
  }
  std::set<std::string> mine;
  Index elements = 0;
  for (const nn::Parameter* q : stage.model().all_parameters()) {
    mine.insert(q->name);
    elements += q->value.numel();
  }
  EXPECT_EQ(mine, mine_expected) << "stage " << s;
  EXPECT_EQ(elements, expected_elements);
  // Together the stages hold the whole model, each parameter once.
  std::int64_t total = elements;
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  Index whole_elements = 0;
  for (const nn::Parameter* q : whole.model().all_parameters()) {
    whole_elements += q->value.numel();
  }
  EXPECT_EQ(total, whole_elements);

  EXPECT_EQ(stage.run().steps, 6);
  EXPECT_EQ(whole.run().steps, 6);
  std::map<std::string, const nn::Parameter*> reference;
  for (const nn::Parameter* q : whole.model().all_parameters()) {
    reference[q->name] = q;
  }
  for (const nn::Parameter* q : stage.model().all_parameters()) {
    const nn::Parameter* r = reference.at(q->name);
    ASSERT_EQ(q->value.numel(), r->value.numel()) << q->name;
    EXPECT_EQ(std::memcmp(q->value.data(), r->value.data(),
                          sizeof(float) * static_cast<size_t>(q->value.numel())),
              0)
        << q->name << " on stage " << s << " differs from one rank's";
  }
}
