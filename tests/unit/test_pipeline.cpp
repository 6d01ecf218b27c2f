// Pipeline parallelism without ranks: the schedules (every micro-batch once each way, backwards in
// order, what 1F1B keeps alive), their bubble in a simulation of the stages' dependencies against
// the formula, the balanced cut against brute force, and stages built by the factory against the
// whole model (names, and the output bit for bit).
#include "support/gradcheck.hpp"
#include "tessera/nn/factory.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/parallel/pipeline.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <random>

using namespace tessera;
using parallel::Action;
using parallel::Schedule;

namespace {
nn::LayerSpec spec(const std::string& kind, std::map<std::string, nn::OptionValue> options = {}) {
  return nn::LayerSpec{kind, std::move(options), DeckLocation{"d.toml", 3, "model.layers"}, {}};
}
}  // namespace

TEST(PipelineSchedule, EveryMicroBatchOnceEachWayBackwardsInOrder) {
  for (const Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b}) {
    for (int p : {1, 2, 3, 4}) {
      for (int m : {1, 2, 3, 4, 8, 16}) {
        for (int s = 0; s < p; ++s) {
          const std::vector<Action> a = parallel::schedule_actions(schedule, p, s, m);
          ASSERT_EQ(a.size(), static_cast<size_t>(2 * m));
          int forwards = 0;
          int backwards = 0;
          for (const Action& x : a) {
            if (x.forward) {
              EXPECT_EQ(x.micro, forwards++) << "forwards in order";
            } else {
              EXPECT_EQ(x.micro, backwards++) << "backwards in order";
              EXPECT_LT(x.micro, forwards) << "a backward after its forward";
            }
          }
          EXPECT_EQ(forwards, m);
          EXPECT_EQ(backwards, m);
        }
      }
    }
  }
}

TEST(PipelineSchedule, OneFOneBIsWarmUpSteadyCoolDown) {
  // Stage 0 of 4 with 6 micro-batches: 3 forwards, then F B pairs, then 3 backwards.
  const std::vector<Action> want{{true, 0},  {true, 1},  {true, 2},  {true, 3},
                                 {false, 0}, {true, 4},  {false, 1}, {true, 5},
                                 {false, 2}, {false, 3}, {false, 4}, {false, 5}};
  EXPECT_EQ(parallel::schedule_actions(Schedule::one_f_one_b, 4, 0, 6), want);
  // The last stage alternates from the start; GPipe runs every forward first.
  const std::vector<Action> last = parallel::schedule_actions(Schedule::one_f_one_b, 4, 3, 3);
  EXPECT_EQ(last, (std::vector<Action>{
                      {true, 0}, {false, 0}, {true, 1}, {false, 1}, {true, 2}, {false, 2}}));
  const std::vector<Action> gpipe = parallel::schedule_actions(Schedule::gpipe, 4, 3, 2);
  EXPECT_EQ(gpipe, (std::vector<Action>{{true, 0}, {true, 1}, {false, 0}, {false, 1}}));
}

TEST(PipelineSchedule, PeakActivationsArePMinusSForOneFOneBAndMForGPipe) {
  for (int p : {2, 4}) {
    for (int m : {1, 4, 8, 16}) {
      for (int s = 0; s < p; ++s) {
        EXPECT_EQ(parallel::peak_in_flight(Schedule::one_f_one_b, p, s, m), std::min(p - s, m));
        EXPECT_EQ(parallel::peak_in_flight(Schedule::gpipe, p, s, m), m);
      }
    }
  }
}

TEST(PipelineSchedule, SimulatedBubbleIsTheFormulaOnBalancedStages) {
  // Balanced stages, a backward twice a forward: both schedules idle (p-1)/(m+p-1) of the step on
  // every stage, and neither deadlocks (idle_fractions checks that every action ran).
  for (const Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b}) {
    for (int p : {1, 2, 3, 4}) {
      for (int m : {1, 4, 8, 16}) {
        const std::vector<double> idle =
            parallel::idle_fractions(schedule, std::vector<double>(static_cast<size_t>(p), 1.0),
                                     std::vector<double>(static_cast<size_t>(p), 2.0), m);
        ASSERT_EQ(idle.size(), static_cast<size_t>(p));
        for (int s = 0; s < p; ++s) {
          EXPECT_NEAR(idle[static_cast<size_t>(s)], parallel::bubble_fraction(p, m), 1e-12)
              << parallel::schedule_name(schedule) << " p " << p << " m " << m << " stage " << s;
        }
      }
    }
  }
  EXPECT_DOUBLE_EQ(parallel::bubble_fraction(2, 8), 1.0 / 9.0);
}

TEST(PipelineSchedule, UnequalStagesIdleAsTheirTimelinesSay) {
  // Two stages, two micro-batches; stage 0 takes 2 forward and 4 backward, stage 1 half of that.
  // 1F1B, by hand: stage 0 runs F0 [0, 2], F1 [2, 4], B0 [5, 9] (after stage 1's B0 [3, 5]),
  // B1 [9, 13]; stage 1 F0 [2, 3], B0 [3, 5], F1 [5, 6], B1 [6, 8]. The step is 13 long: stage 0
  // idles 1 of it, stage 1 7.
  const std::vector<double> f{2.0, 1.0};
  const std::vector<double> b{4.0, 2.0};
  const std::vector<double> one = parallel::idle_fractions(Schedule::one_f_one_b, f, b, 2);
  EXPECT_NEAR(one[0], 1.0 / 13.0, 1e-12);
  EXPECT_NEAR(one[1], 7.0 / 13.0, 1e-12);
  // GPipe: stage 1 runs F0 [2, 3], F1 [4, 5], B0 [5, 7], B1 [7, 9]; stage 0 F0, F1, then
  // B0 [7, 11], B1 [11, 15]: 15 long, idle 3 and 9.
  const std::vector<double> gpipe = parallel::idle_fractions(Schedule::gpipe, f, b, 2);
  EXPECT_NEAR(gpipe[0], 3.0 / 15.0, 1e-12);
  EXPECT_NEAR(gpipe[1], 9.0 / 15.0, 1e-12);
  // Where the last stage is the slowest (and for GPipe always, a backward twice its forward), a
  // step is the flow shop's sum_s t_s + (m - 1) max_s t_s, t_s = f_s + b_s: every micro-batch
  // through every stage, then one more per time of the slowest.
  for (const Schedule schedule : {Schedule::gpipe, Schedule::one_f_one_b}) {
    for (const std::vector<double>& t :
         {std::vector<double>{1.0, 1.04}, std::vector<double>{1.0, 1.2},
          std::vector<double>{1.0, 0.8, 1.3}, std::vector<double>{0.7, 1.0, 0.9, 1.1}}) {
      for (int m : {1, 4, 8, 16}) {
        std::vector<double> fw;
        std::vector<double> bw;
        double sum = 0.0;
        for (const double x : t) {
          fw.push_back(x / 3.0);
          bw.push_back(2.0 * x / 3.0);
          sum += x;
        }
        const double step = sum + (m - 1) * *std::max_element(t.begin(), t.end());
        const std::vector<double> idle = parallel::idle_fractions(schedule, fw, bw, m);
        for (size_t s = 0; s < t.size(); ++s) {
          EXPECT_NEAR(idle[s], 1.0 - m * t[s] / step, 1e-12)
              << parallel::schedule_name(schedule) << " stages " << t.size() << " m " << m
              << " stage " << s;
        }
      }
    }
  }
}

TEST(PipelineBalance, TheLargestPartIsAsSmallAsBruteForceFinds) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> cost(0.1, 10.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 2 + trial % 9;
    const int p = 1 + trial % std::min(n, 4);
    std::vector<double> costs(static_cast<size_t>(n));
    for (double& c : costs) {
      c = cost(gen);
    }
    const std::vector<int> sizes = parallel::balance_stages(costs, p);
    ASSERT_EQ(sizes.size(), static_cast<size_t>(p));
    double worst = 0.0;
    size_t at = 0;
    for (const int k : sizes) {
      ASSERT_GE(k, 1);
      double sum = 0.0;
      for (int j = 0; j < k; ++j) {
        sum += costs[at++];
      }
      worst = std::max(worst, sum);
    }
    ASSERT_EQ(at, costs.size());
    // Brute force over every cut into p non-empty parts.
    double best = std::numeric_limits<double>::infinity();
    std::function<void(size_t, int, double)> cut = [&](size_t from, int parts, double sofar) {
      if (parts == 1) {
        double sum = 0.0;
        for (size_t j = from; j < costs.size(); ++j) {
          sum += costs[j];
        }
        best = std::min(best, std::max(sofar, sum));
        return;
      }
      double sum = 0.0;
      for (size_t end = from + 1; end + static_cast<size_t>(parts - 1) <= costs.size(); ++end) {
        sum += costs[end - 1];
        cut(end, parts - 1, std::max(sofar, sum));
      }
    };
    cut(0, p, 0.0);
    EXPECT_DOUBLE_EQ(worst, best) << "trial " << trial;
  }
  EXPECT_EQ(parallel::balance_stages({1, 1, 1, 1}, 2), (std::vector<int>{2, 2}));
  EXPECT_EQ(parallel::balance_stages({5, 1, 1, 1, 1, 1}, 2), (std::vector<int>{1, 5}));
  try {
    (void)parallel::balance_stages({1, 1}, 3);
    ADD_FAILURE() << "3 stages of 2 layers accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "the model has 2 layers to cut into 3 pipeline stages: every stage needs at "
                 "least one (a `repeat` counts as its repetitions)");
  }
}

TEST(PipelineStages, StagesOfTheFactoryAreTheModelCut) {
  const nn::LayerSpec block = [] {
    nn::LayerSpec r = spec("repeat", {{"times", std::int64_t{3}}});
    r.layers = {spec("linear", {{"out", std::int64_t{6}}}), spec("tanh")};
    return r;
  }();
  const std::vector<nn::LayerSpec> layers{spec("linear", {{"out", std::int64_t{6}}}), block,
                                          spec("relu"), spec("linear", {{"out", std::int64_t{3}}})};
  const std::vector<nn::PipelineUnit> units = nn::pipeline_units(layers);
  ASSERT_EQ(units.size(), 6U);  // linear, 3 repetitions, relu, linear
  EXPECT_EQ(units[2].layer, 1U);
  EXPECT_EQ(units[2].repetition, 1);
  EXPECT_EQ(units[4].repetition, -1);
  const auto name = [&](size_t i) { return layers[i].kind + std::to_string(i); };
  const Shape input{5};
  auto whole = nn::make_model(layers, input, {}, name);
  whole->initialize(11);
  // Cut after the first repetition: stage 0 = linear0, repeat1.0; stage 1 = repeat1.1 .. linear3.
  auto first = nn::make_stage(layers, input, input, Layout::replicated(input), 0, 2, {}, name);
  auto second = nn::make_stage(layers, input, first->output_shape(),
                               Layout::replicated(first->output_shape()), 2, 6, {}, name);
  first->initialize(11);
  second->initialize(11);
  std::vector<std::string> names;
  for (auto* stage : {first.get(), second.get()}) {
    for (const nn::Parameter* p : stage->all_parameters()) {
      names.push_back(p->name);
    }
  }
  std::vector<std::string> want;
  for (const nn::Parameter* p : whole->all_parameters()) {
    want.push_back(p->name);
  }
  EXPECT_EQ(names, want);
  EXPECT_EQ(names[2], "repeat1.0.linear0.weight");
  EXPECT_EQ(names[4], "repeat1.1.linear0.weight");
  const Tensor x = tessera::testing::random_tensor("x", {4, 5}, 3);
  nn::ForwardOptions fo;
  const Tensor y = whole->forward(x, fo).output;
  const Tensor z = second->forward(first->forward(x, fo).output, fo).output;
  ASSERT_EQ(y.shape(), z.shape());
  EXPECT_EQ(std::memcmp(y.data(), z.data(), sizeof(float) * static_cast<size_t>(y.numel())), 0);
  // The cost estimate: a linear of 5 inputs and 6 outputs is 2 · 5 · 6 multiply-adds.
  EXPECT_DOUBLE_EQ(nn::forward_flops((*whole)[0], input), 60.0);
  EXPECT_DOUBLE_EQ(nn::forward_flops((*whole)[2], Shape{6}), 6.0);  // relu: one per output
}
