// Population training's pieces at any rank count: the hyper-parameters each trainer gets from a
// [population] section (values, grids, Latin hypercube draws; the same on every rank; text that
// parses back to the same number), the deck's errors, comm::TimedChannel, the exchange that
// gives up on a partner that does not answer, the re-estimation of a combined model's
// BatchNorm statistics, the scores' standard errors that LTFB and PBT test differences with, and
// the steps a restarted population's trainers resume from.
#include "tessera/comm/timed.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/train/population.hpp"
#include "tessera/train/trainer.hpp"

#include "support/mpi.hpp"
#include "support/tiny_training.hpp"
#include "support/trained.hpp"

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using tessera::testing::world_rank;
using tessera::testing::world_size;

std::string deck_text(int trainers, const std::string& population) {
  return "[run]\nseed = 40\nsteps = 10\n[parallel]\ntrainers = " + std::to_string(trainers) +
         "\n[data]\ntrain = \"x.h5:/train\"\nbatch = 8\n[model]\ninput = [4]\n"
         "layers = [ { linear = { out = 2 } } ]\nloss = \"mse\"\n[optimizer]\ntype = \"sgd\"\n"
         "lr = 0.1\nmomentum = 0.5\n[population]\n" +
         population;
}

// The value of `key` in trainer k's overrides ("key=value").
std::string value_of(const std::vector<std::string>& overrides, const std::string& key) {
  for (const std::string& o : overrides) {
    if (o.rfind(key + "=", 0) == 0) {
      return o.substr(key.size() + 1);
    }
  }
  return "";
}

TEST(PopulationDeck, ValuesGridsAndSeeds) {
  const tessera::deck::Deck d = tessera::deck::parse(
      deck_text(4,
                "[population.hyper]\n\"optimizer.lr\" = { grid = [0.01, 0.1] }\n"
                "\"optimizer.momentum\" = { grid = [0.5, 0.9] }\n"
                "\"run.log_every\" = { values = [1, 2, 3, 4] }\n"),
      "pop.toml");
  const double lr[] = {0.01, 0.01, 0.1, 0.1};  // the first grid key varies slowest
  const double momentum[] = {0.5, 0.9, 0.5, 0.9};
  for (int k = 0; k < 4; ++k) {
    const std::vector<std::string> o = tessera::deck::trainer_overrides(d, k);
    EXPECT_EQ(std::stod(value_of(o, "optimizer.lr")), lr[k]);
    EXPECT_EQ(std::stod(value_of(o, "optimizer.momentum")), momentum[k]);
    EXPECT_EQ(value_of(o, "run.log_every"), std::to_string(k + 1));  // an integer key: "3"
    EXPECT_EQ(value_of(o, "run.seed"), std::to_string(40 + k));
    // The overrides make a valid deck with exactly those values.
    const tessera::deck::Deck t = tessera::deck::parse(deck_text(4, ""), "pop.toml", o);
    EXPECT_EQ(t.optimizer.lr, lr[k]);
    EXPECT_EQ(t.run.seed, static_cast<std::uint64_t>(40 + k));
  }
}

TEST(PopulationDeck, LatinHypercubeDrawsCoverTheRange) {
  // Each trainer draws within its own part of the range: for K trainers, every part is taken
  // once, for each key; the draws are the same on every rank and parse back exactly.
  for (int trainers : {2, 4, 7}) {
    const tessera::deck::Deck d =
        tessera::deck::parse(deck_text(trainers,
                                       "seed = 9\n[population.hyper]\n"
                                       "\"optimizer.lr\" = { log_uniform = [1e-3, 1.0] }\n"
                                       "\"optimizer.momentum\" = { uniform = [0.2, 0.6] }\n"),
                             "pop.toml");
    std::set<int> lr_parts;
    std::set<int> momentum_parts;
    for (int k = 0; k < trainers; ++k) {
      const std::vector<std::string> o = tessera::deck::trainer_overrides(d, k);
      const double lr = std::stod(value_of(o, "optimizer.lr"));
      const double m = std::stod(value_of(o, "optimizer.momentum"));
      ASSERT_GE(lr, 1e-3);
      ASSERT_LT(lr, 1.0);
      ASSERT_GE(m, 0.2);
      ASSERT_LT(m, 0.6);
      lr_parts.insert(static_cast<int>(std::floor(trainers * std::log(lr / 1e-3) / std::log(1e3))));
      momentum_parts.insert(static_cast<int>(std::floor(trainers * (m - 0.2) / 0.4)));
      EXPECT_EQ(tessera::deck::hyper_value(d.population, d.population.hyper[0], k, trainers), lr);
      double lo = lr;
      double hi = lr;
      MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
      MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      EXPECT_EQ(lo, hi) << "trainer " << k << "'s draw differs between ranks";
    }
    EXPECT_EQ(lr_parts.size(), static_cast<size_t>(trainers));
    EXPECT_EQ(momentum_parts.size(), static_cast<size_t>(trainers));
    EXPECT_EQ(*lr_parts.rbegin(), trainers - 1);
  }
}

TEST(PopulationDeck, PbtExploresByPerturbingOrByDrawingAnew) {
  // Ray Tune's explore step: with probability `resample` a fresh draw from the key's whole range
  // (log-uniform: uniform in log space), else the copied value times one of `perturb`, clamped.
  const tessera::deck::Deck d = tessera::deck::parse(
      deck_text(2,
                "algorithm = \"pbt\"\nevery = 5\nvalidation = \"v.h5:/validation\"\n"
                "perturb = [0.8, 1.25]\nresample = 0.25\n[population.hyper]\n"
                "\"optimizer.lr\" = { log_uniform = [1e-3, 1.0] }\n"
                "\"optimizer.momentum\" = { values = [0.5, 0.9] }\n"
                "\"optimizer.weight_decay\" = { uniform = [0.0, 4.0] }\n"),
      "pop.toml");
  const tessera::deck::PopulationConfig& pop = d.population;
  EXPECT_EQ(pop.resample, 0.25);
  const tessera::deck::HyperSpec& lr = pop.hyper[0];
  const tessera::deck::HyperSpec& momentum = pop.hyper[1];
  // Perturbed: the first word at or above resample * 2^32, the last picks the factor.
  const std::uint32_t keep0[4] = {0x40000000U, 0, 0, 0};  // 0.25: not below resample
  const std::uint32_t keep1[4] = {0xFFFFFFFFU, 0, 0, 1};
  EXPECT_DOUBLE_EQ(tessera::deck::explore_value(pop, lr, 0.05, keep0), 0.04);
  EXPECT_DOUBLE_EQ(tessera::deck::explore_value(pop, lr, 0.05, keep1), 0.0625);
  EXPECT_EQ(tessera::deck::explore_value(pop, lr, 1.1e-3, keep0), 1e-3);  // clamped to the range
  EXPECT_EQ(tessera::deck::explore_value(pop, lr, 0.9, keep1), 1.0);
  EXPECT_EQ(tessera::deck::explore_value(pop, momentum, 0.9, keep1), 0.9);  // [0.5, 0.9]
  // Drawn anew: the lowest and highest draws are the range's ends.
  const std::uint32_t low[4] = {0, 0, 0, 1};
  const std::uint32_t high[4] = {0x3FFFFFFFU, 0xFFFFFFFFU, 0xFFFFFFFFU, 1};
  EXPECT_DOUBLE_EQ(tessera::deck::explore_value(pop, lr, 0.05, low), 1e-3);
  EXPECT_NEAR(tessera::deck::explore_value(pop, lr, 0.05, high), 1.0, 1e-12);
  EXPECT_EQ(tessera::deck::explore_value(pop, momentum, 0.9, low), 0.5);
  // Over many draws from Philox words: a quarter drawn anew (neither 0.8 nor 1.25 times the
  // copied value), those spread log-uniformly (a third per decade); the uniform key's mean 2.
  const tessera::rng::CounterRng gen(7, 11);
  const int n = 40000;
  int fresh = 0;
  int decade[3] = {0, 0, 0};
  double sum = 0.0;
  int uniform_fresh = 0;
  for (int i = 0; i < n; ++i) {
    const tessera::rng::Philox4x32 r = gen.bits(static_cast<std::uint64_t>(i));
    const double x = tessera::deck::explore_value(pop, lr, 0.01, r.v);
    ASSERT_GE(x, 1e-3);
    ASSERT_LE(x, 1.0);
    if (x != 0.01 * 0.8 && x != 0.01 * 1.25) {
      ++fresh;
      ++decade[std::min(2, static_cast<int>(std::floor(std::log10(x / 1e-3))))];
    }
    const double w = tessera::deck::explore_value(pop, pop.hyper[2], 1.0, r.v);
    if (w != 0.8 && w != 1.25) {
      ++uniform_fresh;
      sum += w;
    }
  }
  const double share = static_cast<double>(fresh) / n;
  EXPECT_NEAR(share, 0.25, 4 * std::sqrt(0.25 * 0.75 / n));
  EXPECT_EQ(uniform_fresh, fresh);  // the same words pick alike for every key
  for (const int c : decade) {
    EXPECT_NEAR(static_cast<double>(c) / fresh, 1.0 / 3.0, 4 * std::sqrt(2.0 / 9.0 / fresh));
  }
  EXPECT_NEAR(sum / uniform_fresh, 2.0, 4 * std::sqrt(4.0 / 3.0 / uniform_fresh));
}

TEST(PopulationDeck, BadInputIsNamed) {
  const auto expect_error = [](const std::string& population, const std::string& message) {
    try {
      (void)tessera::deck::parse(deck_text(2, population), "pop.toml");
      ADD_FAILURE() << "no error for: " << population;
    } catch (const tessera::Error& e) {
      EXPECT_EQ(e.what(), message);
      EXPECT_EQ(e.exit_code(), 2);
    }
  };
  expect_error("[population.hyper]\n\"optimizer.type\" = { uniform = [0.0, 1.0] }\n",
               "pop.toml:19: population.hyper.optimizer.type: optimizer.type is a string "
               "(\"sgd\"), not a number: only numeric deck keys can vary");
  expect_error("[population.hyper]\n\"optimizer.lr\" = { uniform = [0.5, 0.1] }\n",
               "pop.toml:19: population.hyper.optimizer.lr: uniform = [0.5, 0.1]: low 0.5 > "
               "high 0.1");
  expect_error("[population.hyper]\n\"optimizer.lr\" = { log_uniform = [0.0, 0.1] }\n",
               "pop.toml:19: population.hyper.optimizer.lr: log_uniform = [0.0, 0.1]: the "
               "range must be positive");
  expect_error("[population.hyper]\n\"optimizer.lr\" = { grid = [0.1, 0.2, 0.3] }\n",
               "pop.toml:18: population.hyper: the grid holds 3 points but parallel.trainers = 2 "
               "(one trainer per point)");
  expect_error("[population.hyper]\n\"parallel.data\" = { values = [1, 2] }\n",
               "pop.toml:19: population.hyper.parallel.data: parallel.data cannot vary: every "
               "trainer has the same grid and length");
  expect_error(
      "algorithm = \"pbt\"\nevery = 5\nvalidation = \"v.h5:/validation\"\n"
      "[population.hyper]\n\"data.batch\" = { values = [4, 8] }\n",
      "pop.toml:22: population.hyper.data.batch: with population.algorithm = \"pbt\" "
      "only optimizer keys can vary (they travel with the weights)");
  expect_error("algorithm = \"ltfb\"\nvalidation = \"v.h5:/validation\"\n",
               "pop.toml:18: population.algorithm = \"ltfb\" needs population.every, the steps "
               "between tournaments");
  expect_error("resample = 1.5\n", "pop.toml:18: population.resample = 1.5 must be in [0, 1]");
  expect_error("perturb = [0.8, -1]\n",
               "pop.toml:18: population.perturb = [0.8, -1] must be a non-empty list of positive "
               "factors ([0.8, 1.25])");
}

// checkpoint.restart = "auto" for a population: each trainer from its newest checkpoint on the
// same side of every meeting (an LTFB pair's round, a PBT round, an average) as its fellows there;
// independent ones from their own newest; no such state: refused, naming the steps and meeting.
tessera::train::SavedTrainer saved(std::map<std::int64_t, std::int64_t> checkpoints,
                                   std::set<std::int64_t> states,
                                   std::set<std::int64_t> held = {}) {
  return {std::move(checkpoints), std::move(states), std::move(held)};
}

TEST(PopulationRestart, EachTrainerFromItsNewestCheckpointConsistentWithTheMeetings) {
  using tessera::train::resume_steps;
  using Steps = std::vector<std::int64_t>;
  tessera::deck::PopulationConfig independent;
  // Independent trainers that drifted apart (t0 at 121, t1 at 71): each from its own newest; one
  // that saved nothing starts afresh; nobody saved: a fresh start.
  EXPECT_EQ(resume_steps(independent, {saved({{100, 200}, {121, 200}}, {0}),
                                       saved({{71, 200}}, {0}), saved({}, {0})}),
            (Steps{121, 71, -1}));
  EXPECT_EQ(resume_steps(independent, {saved({}, {}), saved({}, {})}), (Steps{-1, -1}));

  tessera::deck::PopulationConfig ltfb;
  ltfb.algorithm = "ltfb";
  ltfb.every = 20;
  const std::set<std::int64_t> rounds{0, 20, 40, 60};
  // Both after round 60, before round 80: each from its own newest.
  EXPECT_EQ(resume_steps(ltfb, {saved({{75, 100}}, rounds), saved({{60, 100}, {71, 100}}, rounds)}),
            (Steps{75, 71}));
  // t0 saved past round 80 too (at 80 and 85), t1 did not: both from before round 80.
  EXPECT_EQ(resume_steps(ltfb, {saved({{70, 100}, {80, 100}, {85, 100}}, {0, 20, 40, 60, 80}),
                                saved({{65, 100}, {78, 100}}, rounds)}),
            (Steps{70, 78}));
  // A checkpoint at round 80's step without a state record there: saved as t0 left the round for
  // a stop signal; it holds the round on resuming, so it counts as before it.
  EXPECT_EQ(resume_steps(ltfb, {saved({{80, 100}}, rounds), saved({{78, 100}}, rounds)}),
            (Steps{80, 78}));
  // The end of a 100-step run is no round: its checkpoint is with those after round 80.
  EXPECT_EQ(resume_steps(ltfb, {saved({{100, 100}}, {0, 20, 40, 60, 80}),
                                saved({{95, 100}}, {0, 20, 40, 60, 80})}),
            (Steps{100, 95}));
  // A trainer that saved nothing and one that saved before the first round: both start there.
  EXPECT_EQ(resume_steps(ltfb, {saved({{10, 100}}, {0}), saved({}, {0})}), (Steps{10, -1}));
  // Trainer 0 is past round 20 in all its checkpoints, trainer 1 before it: refused, each
  // trainer's steps and the round named.
  try {
    (void)resume_steps(ltfb, {saved({{30, 100}, {35, 100}}, rounds), saved({{10, 100}}, rounds)});
    ADD_FAILURE() << "trainers on two sides of a round they met at were accepted";
  } catch (const tessera::Error& e) {
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_EQ(std::string(e.message()),
              "checkpoint.restart = \"auto\": the trainers' checkpoints (trainer 0 steps 30, 35; "
              "trainer 1 step 10) hold no state from which the population can resume together: "
              "trainer 0 has none before the ltfb round at step 20, which trainer 1's newest "
              "usable one, step 10, is before (trainers that met there resume on the same side "
              "of it); nothing was changed. A larger checkpoint.keep keeps one after a crash; to "
              "start again from step 0, use another run.output (or remove the trainers' "
              "checkpoints)");
  }
  // A checkpoint rewritten after a round held on resuming, killed before its state record (a
  // "held" record, no state record): of no known side of the round, not used.
  EXPECT_EQ(
      resume_steps(ltfb, {saved({{75, 100}, {80, 100}}, rounds, {80}), saved({{78, 100}}, rounds)}),
      (Steps{75, 78}));
  EXPECT_EQ(resume_steps(ltfb, {saved({{75, 100}, {80, 100}}, {0, 20, 40, 60, 80}, {80}),
                                saved({{82, 100}}, {0, 20, 40, 60, 80})}),
            (Steps{80, 82}));

  // Four LTFB trainers meet in pairs: a pair held back before round 20 (one waiting at it, its
  // checkpoint saved as it left) does not hold back the other pair, past it, unless the other
  // pair met one of them at a later round.
  const std::vector<int> pairs = tessera::train::ltfb_partners(ltfb, 4, 1);
  const int a0 = 0;
  const int a1 = pairs[0];
  std::vector<int> others;
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(pairs[static_cast<size_t>(pairs[static_cast<size_t>(k)])], k);  // pairs
    if (k != a0 && k != a1) {
      others.push_back(k);
    }
  }
  std::vector<tessera::train::SavedTrainer> four(4);
  four[static_cast<size_t>(a0)] = saved({{15, 100}}, {0});
  four[static_cast<size_t>(a1)] = saved({{10, 100}, {20, 100}}, {0});  // left round 20
  for (int k : others) {
    four[static_cast<size_t>(k)] = saved({{20, 100}, {30, 100}}, {0, 20});
  }
  Steps want(4, 30);
  want[static_cast<size_t>(a0)] = 15;
  want[static_cast<size_t>(a1)] = 20;
  EXPECT_EQ(resume_steps(ltfb, four), want);
  // Round 40's pairs: once the other pair is past it too, each of them that met trainer a0 or a1
  // there goes back before it, and so does its round-40 partner if it was past it.
  const std::vector<int> next = tessera::train::ltfb_partners(ltfb, 4, 2);
  for (int k : others) {
    four[static_cast<size_t>(k)] = saved({{30, 100}, {45, 100}}, {0, 20});
  }
  const bool crossed = next[static_cast<size_t>(others[0])] != others[1];
  for (int k : others) {
    want[static_cast<size_t>(k)] = crossed ? 30 : 45;
  }
  EXPECT_EQ(resume_steps(ltfb, four), want);
  // PBT: every trainer meets every other at each round.
  tessera::deck::PopulationConfig pbt = ltfb;
  pbt.algorithm = "pbt";
  four[static_cast<size_t>(a0)] = saved({{15, 100}}, {0});
  four[static_cast<size_t>(a1)] = saved({{10, 100}, {20, 100}}, {0});
  for (int k : others) {
    four[static_cast<size_t>(k)] = saved({{18, 100}, {30, 100}}, {0, 20});
    want[static_cast<size_t>(k)] = 18;
  }
  EXPECT_EQ(resume_steps(pbt, four), want);
  // Three LTFB trainers: one sits each round out and meets nobody there.
  const std::vector<int> three = tessera::train::ltfb_partners(ltfb, 3, 1);
  const auto out = static_cast<size_t>(std::find(three.begin(), three.end(), -1) - three.begin());
  ASSERT_LT(out, 3U);
  std::vector<tessera::train::SavedTrainer> trio(3, saved({{15, 100}}, {0}));
  trio[out] = saved({{25, 100}}, {0});
  Steps solo(3, 15);
  solo[out] = 25;
  EXPECT_EQ(resume_steps(ltfb, trio), solo);

  // Local SGD: averages every 20 steps and at the end (of 50 steps here).
  tessera::deck::PopulationConfig local;
  local.average_every = 20;
  EXPECT_EQ(resume_steps(local, {saved({{40, 50}, {45, 50}}, {0}), saved({{42, 50}}, {0})}),
            (Steps{45, 42}));
  EXPECT_EQ(resume_steps(local, {saved({{45, 50}, {50, 50}}, {0}), saved({{50, 50}}, {0})}),
            (Steps{50, 50}));
  // A fresh start is collective (every trainer from trainer 0's model): not beside a resume.
  EXPECT_THROW((void)resume_steps(local, {saved({{10, 50}}, {0}), saved({}, {0})}), tessera::Error);
}

TEST(TimedChannel, ExchangesWithAPartner) {
  const int n = world_size();
  const int r = world_rank();
  tessera::comm::TimedChannel channel(MPI_COMM_WORLD);
  const int partner = (r ^ 1) < n ? (r ^ 1) : -1;
  std::vector<float> mine(1000, static_cast<float>(r));
  std::vector<float> theirs(1000, -1.0F);
  const bool ok = channel.exchange(partner, mine.data(), mine.size() * sizeof(float), partner,
                                   theirs.data(), theirs.size() * sizeof(float), 7, 30.0);
  EXPECT_TRUE(ok);
  if (partner >= 0) {
    EXPECT_EQ(theirs.front(), static_cast<float>(partner));
    EXPECT_EQ(theirs.back(), static_cast<float>(partner));
  }
  EXPECT_EQ(channel.pending_sends(), 0U);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(TimedChannel, GivesUpOnAPartnerThatDoesNotAnswer) {
  const int n = world_size();
  if (n < 2) {
    GTEST_SKIP() << "needs two ranks";
  }
  const int r = world_rank();
  tessera::comm::TimedChannel channel(MPI_COMM_WORLD);
  double mine = 1.5;
  double theirs = 0.0;
  if (r == 0) {
    // Rank 1 sleeps through this exchange: rank 0 gives up after the timeout, not before.
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(channel.exchange(1, &mine, sizeof mine, 1, &theirs, sizeof theirs, 3, 0.3));
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(waited, 0.3);
    EXPECT_LT(waited, 5.0);
  } else if (r == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    // A message of the wrong size is no exchange either; rank 0's round-3 message never matches
    // round 4.
    double pair[2] = {0.0, 0.0};
    EXPECT_FALSE(channel.exchange(-1, nullptr, 0, 0, pair, sizeof pair, 3, 5.0));
    EXPECT_FALSE(channel.exchange(-1, nullptr, 0, 0, &theirs, sizeof theirs, 4, 0.2));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Messages no exchange took — rank 0's 1 MiB model to an exchange rank 1 never held (a
// rendezvous send, in flight until taken), rank 1's 16-byte score to one rank 0 never held (sent
// eagerly) — are taken and discarded by drain(), collective: no send is left in flight at the end.
TEST(TimedChannel, DrainTakesWhatNoExchangeTook) {
  const int n = world_size();
  if (n < 2) {
    GTEST_SKIP() << "needs two ranks";
  }
  const int r = world_rank();
  tessera::comm::TimedChannel channel(MPI_COMM_WORLD);
  std::vector<char> model(1 << 20, 'm');
  double score[2] = {0.5, 0.01};
  if (r == 0) {
    EXPECT_FALSE(channel.exchange(1, model.data(), model.size(), -1, nullptr, 0, 11, 0.05));
    EXPECT_EQ(channel.pending_sends(), 1U);  // nobody received it
  } else if (r == 1) {
    (void)channel.exchange(0, score, sizeof score, -1, nullptr, 0, 12, 0.05);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const int discarded = channel.drain(10.0);
  EXPECT_EQ(discarded, r < 2 ? 1 : 0);
  EXPECT_EQ(channel.pending_sends(), 0U);
  // Nothing is left to take: a second drain finds nothing.
  EXPECT_EQ(channel.drain(10.0), 0);
}

// population.recalibrate: Trainer::recalibrate_norms(n) leaves in BatchNorm's running estimates
// the plain average of the statistics of the first n training batches (mean, unbiased variance)
// — computed here from the samples themselves, the same at every rank count (the statistics are
// synchronised over the data ranks: each batch's are the whole global batch's).
TEST(Recalibration, RunningStatisticsAreTheAverageOfTheFirstBatches) {
  tessera::testing::SharedTempDir dir("tessera-recal-test");
  const std::string data = dir.path() + "/ds.h5";
  tessera::testing::write_tiny_dataset(data);  // 40 samples of 1x4x4
  const std::string text =
      "[run]\nseed = 11\nsteps = 1\n[data]\ntrain = \"" + data +
      ":/train\"\nbatch = 8\n[model]\ninput = [1, 4, 4]\nlayers = [ { batchnorm2d = { sync = true "
      "} }, { flatten = {} }, { linear = { out = 3 } } ]\nloss = \"softmax_cross_entropy\"\n"
      "[optimizer]\ntype = \"sgd\"\nlr = 0.1\n";
  const tessera::deck::Deck d = tessera::deck::parse(
      text, "recal.toml", {"run.output=" + dir.path() + "/run" + std::to_string(world_size())});
  tessera::train::Trainer t(d, MPI_COMM_WORLD);
  EXPECT_EQ(t.recalibrate_norms(3), 24);  // 3 batches of 8
  const std::vector<tessera::Tensor> buffers = t.buffer_tensors();
  ASSERT_EQ(buffers.size(), 2U);  // running_mean, running_var of the one channel
  const float mean = buffers[0].to_host()[0];
  const float var = buffers[1].to_host()[0];

  // The same batches, read whole on this rank: the reader's order is the seed's, not the ranks'.
  tessera::io::ReaderOptions ro;
  ro.batch = 8;
  ro.seed = 11;
  ro.shuffle = true;
  ro.prefetch = 0;
  tessera::io::DatasetReader reader(data + ":/train", ro);
  double mean_sum = 0.0;
  double var_sum = 0.0;
  for (int b = 0; b < 3; ++b) {
    const std::vector<float> x = reader.next().x.to_host();
    ASSERT_EQ(x.size(), 8U * 16U);
    double m = 0.0;
    for (float v : x) {
      m += static_cast<double>(v);
    }
    m /= static_cast<double>(x.size());
    double ss = 0.0;
    for (float v : x) {
      ss += (static_cast<double>(v) - m) * (static_cast<double>(v) - m);
    }
    mean_sum += m;
    var_sum += ss / static_cast<double>(x.size() - 1);
  }
  EXPECT_NEAR(mean, mean_sum / 3.0, 1e-6);
  EXPECT_NEAR(var, var_sum / 3.0, 1e-6);
  // More batches than an epoch holds: one epoch (5 batches of 8).
  EXPECT_EQ(t.recalibrate_norms(100), 40);
}

// A validation score's standard error (population.significance): Trainer::evaluate returns what
// it needs — the samples an accuracy averages over, and for a loss the mean of each sample's loss
// squared — checked against the losses of every sample computed here from the model's weights, at
// every rank count (the samples are split over the data ranks); then the test on two scores.
TEST(PopulationScore, StandardErrorsOfAccuracyAndLoss) {
  tessera::testing::SharedTempDir dir("tessera-score-test");
  const std::string data = dir.path() + "/reg.h5";
  constexpr size_t kSamples = 30;
  constexpr size_t kFeatures = 4;
  constexpr size_t kTargets = 2;
  std::vector<float> x(kSamples * kFeatures);
  std::vector<float> y(kSamples * kTargets);
  const tessera::rng::CounterRng gen(3, 8);
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = gen.uniform(i) - 0.5F;
  }
  for (size_t i = 0; i < y.size(); ++i) {
    y[i] = 2.0F * gen.uniform(1000 + i) - 1.0F;
  }
  tessera::testing::write_regression_split(data, {1, 2, 2}, x, kTargets, y);  // 4 features
  const std::string text =
      "[run]\nseed = 5\nsteps = 1\n[data]\ntrain = \"" + data +
      ":/train\"\nbatch = 12\n[model]\ninput = [1, 2, 2]\nlayers = [ { flatten = {} "
      "}, { linear = { out = 2 } } ]\nloss = \"mse\"\n[optimizer]\ntype = \"sgd\"\nlr = 0.1\n";
  const tessera::deck::Deck d = tessera::deck::parse(
      text, "score.toml", {"run.output=" + dir.path() + "/run" + std::to_string(world_size())});
  tessera::train::Trainer t(d, MPI_COMM_WORLD);
  const tessera::testing::Trained model = tessera::testing::gathered(t);
  ASSERT_EQ(model.parameters.size(), 2U);  // weight (2, 4), bias (2)
  const std::vector<float>& w = model.parameters[0];
  const std::vector<float>& b = model.parameters[1];
  double sum = 0.0;
  double squares = 0.0;
  std::vector<double> losses;
  for (size_t s = 0; s < kSamples; ++s) {
    double loss = 0.0;  // the sample's: its targets' mean squared error
    for (size_t o = 0; o < kTargets; ++o) {
      double p = static_cast<double>(b[o]);
      for (size_t i = 0; i < kFeatures; ++i) {
        p += static_cast<double>(w[o * kFeatures + i]) * static_cast<double>(x[s * kFeatures + i]);
      }
      const double e = p - static_cast<double>(y[s * kTargets + o]);
      loss += e * e / static_cast<double>(kTargets);
    }
    losses.push_back(loss);
    sum += loss;
    squares += loss * loss;
  }
  const double mean = sum / kSamples;
  double spread = 0.0;  // two passes: Σ (loss - mean)²
  for (double l : losses) {
    spread += (l - mean) * (l - mean);
  }
  const tessera::train::Evaluation e = t.evaluate(data + ":/train");
  EXPECT_EQ(e.samples, static_cast<tessera::Index>(kSamples));
  EXPECT_EQ(e.scored, static_cast<double>(kSamples));
  EXPECT_NEAR(e.loss, mean, 1e-6 * mean);
  EXPECT_NEAR(e.loss_sq, squares / kSamples, 1e-6 * squares / kSamples);
  const tessera::train::Score loss_score = tessera::train::validation_score(d, e);
  EXPECT_NEAR(loss_score.value, -mean, 1e-6 * mean);
  const double error = std::sqrt(spread / kSamples / kSamples);
  EXPECT_NEAR(loss_score.error, error, 1e-4 * error);

  // Classification: an accuracy p over n samples has the standard error sqrt(p (1 - p) / n).
  const std::string tiny = dir.path() + "/tiny.h5";
  tessera::testing::write_tiny_dataset(tiny);  // 40 samples in 3 classes
  const tessera::deck::Deck c = tessera::deck::parse(
      "[run]\nseed = 5\nsteps = 1\n[data]\ntrain = \"" + tiny +
          ":/train\"\nbatch = 8\n[model]\ninput = [1, 4, 4]\nlayers = [ { flatten = {} }, { "
          "linear = { out = 3 } } ]\nloss = \"softmax_cross_entropy\"\n[optimizer]\ntype = "
          "\"sgd\"\nlr = 0.1\n",
      "class.toml", {"run.output=" + dir.path() + "/class" + std::to_string(world_size())});
  tessera::train::Trainer ct(c, MPI_COMM_WORLD);
  const tessera::train::Evaluation a = ct.evaluate(tiny + ":/train");
  EXPECT_EQ(a.scored, 40.0);
  EXPECT_TRUE(std::isnan(a.loss_sq));
  const tessera::train::Score accuracy = tessera::train::validation_score(c, a);
  EXPECT_EQ(accuracy.value, a.metric);
  EXPECT_NEAR(accuracy.error, std::sqrt(a.metric * (1.0 - a.metric) / 40.0), 1e-12);

  // 0.90 ± 0.003 against 0.89 ± 0.004: 0.01 apart, 2 standard errors of the difference (0.005).
  const tessera::train::Score high{0.90, 0.003};
  const tessera::train::Score low{0.89, 0.004};
  EXPECT_TRUE(tessera::train::beats(high, low, 0.0));
  EXPECT_TRUE(tessera::train::beats(high, low, 1.9));
  EXPECT_FALSE(tessera::train::beats(high, low, 2.1));
  EXPECT_FALSE(tessera::train::beats(low, high, 0.0));
  EXPECT_FALSE(tessera::train::beats(high, high, 0.0));  // a tie keeps a model
  // A failed trainer scores -inf: any healthy score beats it at any z, and no failed one does.
  const tessera::train::Score failed{-std::numeric_limits<double>::infinity(), 0.0};
  EXPECT_TRUE(tessera::train::beats(low, failed, 1e6));
  EXPECT_FALSE(tessera::train::beats(failed, failed, 0.0));
  EXPECT_FALSE(tessera::train::beats(failed, low, 0.0));
}

}  // namespace
