// tessera-bench-pipeline: the bubble of parallel::Pipeline's schedules on stages of equal, known
// cost — the balanced pipeline that the theory (p - 1) / (m + p - 1) describes — with real
// transfers between the ranks. Each stage is a chain of `--layers` layers that busy-wait for their
// share of `--forward-ms` and `--backward-ms` per micro-batch (the core stays busy, as with
// compute) and pass on their tensor of `--floats` floats, which the pipeline sends to the next
// stage (activations) or the previous one (gradients), posted early and progressed between the
// layers as in training.
//
//   mpiexec.mpich -n 2 build/bin/tessera-bench-pipeline [--micro 4,8,16] [--forward-ms 2]
//       [--backward-ms 4] [--layers 4] [--floats 32768] [--steps 20] [--schedule 1f1b]
//
// One step: a barrier, Pipeline::train over m micro-batches, then a barrier (a stage that
// finished first waits there for the pipeline to drain: idle, as in training). Reported per stage
// and m: the median over the steps (after one warm-up step) of the idle share of the step (time
// in receives, in the final sends and in the closing barrier, over the step's wall time), its
// excess over the theory, and the step time against the schedule's ideal (m + p - 1) (f + b).
// Where the stages' compute is equal, what the schedule adds beyond the theory is the cost of the
// transfers on its critical path.
#include "app_main.hpp"
#include "median.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/parallel/pipeline.hpp"

#include <fmt/format.h>
#include <mpi.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

using namespace tessera;
using tessera::bench::median;

namespace {

void spin(double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
  }
}

// A layer of known cost: forward and backward busy-wait and pass their input on (the tensors that
// travel are the received ones, or the stage's one input: no copy adds to the stated cost).
class Spin final : public nn::Layer {
 public:
  Spin(std::string name, double forward_s, double backward_s)
      : Layer(std::move(name)), m_forward_s(forward_s), m_backward_s(backward_s) {}
  const char* kind() const override { return "spin"; }
  Shape output_shape(const Shape& input) const override { return input; }
  nn::ForwardResult forward(const Tensor& x, const nn::ForwardOptions&) override {
    spin(m_forward_s);
    return {x, {}};
  }
  Tensor backward(const Tensor& dy, nn::Context&&) override {
    spin(m_backward_s);
    return dy;
  }

 private:
  double m_forward_s;
  double m_backward_s;
};

int run(int argc, char** argv) {
  std::vector<int> micro{4, 8, 16};
  double forward_ms = 2.0;
  double backward_ms = 4.0;
  int layers = 4;
  Index floats = 32768;
  int steps = 20;
  std::string schedule = "1f1b";
  CLI::App app("the bubble of the pipeline schedules on stages of equal, known cost",
               "tessera-bench-pipeline");
  app.add_option("--micro", micro, "micro-batch counts m")
      ->delimiter(',')
      ->check(CLI::Range(1, 1000000));
  app.add_option("--forward-ms", forward_ms, "forward ms per stage and micro-batch")
      ->check(CLI::Range(0.0, 60000.0));
  app.add_option("--backward-ms", backward_ms, "backward ms per stage and micro-batch")
      ->check(CLI::Range(0.0, 60000.0));
  app.add_option("--layers", layers, "layers per stage")->check(CLI::Range(1, 10000));
  app.add_option("--floats", floats, "floats sent per micro-batch each way")
      ->check(CLI::Range(Index{1}, Index{1} << 28));
  app.add_option("--steps", steps, "steps per m (the first is a warm-up)")
      ->check(CLI::Range(2, 1000000));
  app.add_option("--schedule", schedule, "1f1b or gpipe")->check(CLI::IsMember({"1f1b", "gpipe"}));
  if (const std::optional<int> code = apps::parse_command_line(app, argc, argv)) {
    return *code;
  }
  comm::MpiCommunicator axis(MPI_COMM_WORLD, "pipeline");
  const int p = axis.size();
  if (p < 2) {  // the same on every rank
    throw input_error("run it on 2 or more ranks (mpiexec -n 2 ...): one rank is one stage")
        .mark_on_all_ranks();
  }
  const int s = axis.rank();
  const GridPlace place = GridPlace::single().with(GridAxis::pipeline, p, s);
  nn::Sequential stage("stage", Shape{floats});
  for (int l = 0; l < layers; ++l) {
    stage.add(std::make_unique<Spin>(fmt::format("spin{}", l), 1e-3 * forward_ms / layers,
                                     1e-3 * backward_ms / layers));
  }
  parallel::Pipeline pipeline(stage, &axis, place, parallel::schedule_from_name(schedule));
  stage.context().set_poll([&pipeline] { pipeline.progress(); });
  if (s == 0) {
    fmt::print(
        "{} stages on {} ranks, schedule {}; per stage and micro-batch: forward {} ms, "
        "backward {} ms in {} layers, {} floats ({} KiB) sent each way\n",
        p, p, schedule, forward_ms, backward_ms, layers, floats, floats * 4 / 1024);
    fmt::print(
        "idle share of a step per stage, median of {} steps (after one warm-up), against "
        "(p - 1) / (m + p - 1); step time against (m + p - 1)(f + b)\n",
        steps - 1);
  }
  const Tensor x("input", {1, floats});
  const Tensor dy("loss grad", {1, floats});  // the last stage's: no cost beyond the stated
  for (const int m : micro) {
    parallel::MicroBatches mb;
    mb.count = m;
    mb.size = [](int) { return Index{1}; };
    mb.options = [](int) { return nn::ForwardOptions{}; };
    mb.input = [&](int) { return x; };
    mb.loss = [&](int, const Tensor&) { return dy; };
    std::vector<double> idle;
    std::vector<double> wall;
    for (int step = 0; step < steps; ++step) {
      MPI_Barrier(MPI_COMM_WORLD);
      const Stopwatch clock;
      const parallel::PipelineStats ps = pipeline.train(mb);
      const Stopwatch drain;
      MPI_Barrier(MPI_COMM_WORLD);
      const double total = clock.seconds();
      if (step > 0) {
        idle.push_back((ps.idle_s + drain.seconds()) / total);
        wall.push_back(total);
      }
    }
    const double mine[2] = {median(idle), median(wall)};
    std::vector<double> all(2 * static_cast<size_t>(p));
    MPI_Gather(mine, 2, MPI_DOUBLE, all.data(), 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (s == 0) {
      const double theory = parallel::bubble_fraction(p, m);
      const double ideal = 1e-3 * (m + p - 1) * (forward_ms + backward_ms);
      std::string line = fmt::format("m = {:2}: theory {:5.1f}%;", m, 100.0 * theory);
      for (int r = 0; r < p; ++r) {
        const double share = all[2 * static_cast<size_t>(r)];
        line += fmt::format(" stage {} {:5.1f}% ({:+4.0f}%)", r, 100.0 * share,
                            100.0 * (share - theory) / theory);
      }
      line += fmt::format("; step {:.2f} ms against {:.2f} ms ({:+.1f}%)", 1e3 * all[1],
                          1e3 * ideal, 100.0 * (all[1] - ideal) / ideal);
      fmt::print("{}\n", line);
    }
  }
  return 0;
}

}  // namespace

// run_main: MPI (MPI_THREAD_MULTIPLE), Kokkos and the allocator set as in tessera's programs (the
// step-sized buffers stay in the heap: without it every 128 KiB tensor here would be mapped and
// faulted in afresh).
int main(int argc, char** argv) {
  return apps::run_main(argc, argv, run);
}
