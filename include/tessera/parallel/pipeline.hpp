#pragma once
// Pipeline parallelism (DESIGN.md: "a schedule object that drives forward and backward of
// micro-batches over a stage's layers and moves activations with send/recv").
//
// The model's units (its top-level layers, a `repeat` counted as its repetitions) are cut into
// consecutive stages, one per rank of the pipeline axis; each rank builds only its stage
// (nn::make_stage). A step cuts each data rank's share of the batch into m micro-batches that flow
// through the stages:
//
//   GPipe  every forward, then every backward (m micro-batches' activations alive at once);
//   1F1B   PipeDream-Flush: stage s runs min(p - s - 1, m) forwards (warm-up), then alternates one
//          forward and one backward, then the remaining backwards (cool-down): at most p - s
//          micro-batches' activations alive.
//
// Both run the backwards of a stage in micro-batch order 0, 1, ..., m - 1, so the gradients add up
// in the same order and the two schedules give identical results — equal bit for bit to one rank
// accumulating the same micro-batches. Activations travel forward and their gradients backward
// through the pipeline axis's non-blocking send/recv; each receive is posted one micro-batch ahead
// and sends complete in the background, so transfers overlap compute. The time a stage spends
// waiting for a receive (or for its sends at the end of the step) is its idle time, the measured
// bubble: in theory (p - 1) / (m + p - 1) of a step for both schedules when stages are balanced.
#include "tessera/comm/communicator.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/nn/sequential.hpp"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tessera::parallel {

enum class Schedule { gpipe, one_f_one_b };
/// "gpipe" or "1f1b" (the deck's parallel.schedule); throws tessera::Error on another name.
Schedule schedule_from_name(const std::string& name);
const char* schedule_name(Schedule schedule);

/// One step of a stage's schedule: the forward or the backward of micro-batch `micro`.
struct Action {
  bool forward = true;
  int micro = 0;
  bool operator==(const Action& o) const { return forward == o.forward && micro == o.micro; }
};

/// The actions stage `stage` of `stages` runs in one step of `micro_batches` micro-batches.
std::vector<Action> schedule_actions(Schedule schedule, int stages, int stage, int micro_batches);

/// The largest number of micro-batches whose activations stage `stage` holds at once.
int peak_in_flight(Schedule schedule, int stages, int stage, int micro_batches);

/// The bubble of a balanced pipeline: (p - 1) / (m + p - 1) of a step idle on every stage.
double bubble_fraction(int stages, int micro_batches);

/// Each stage's idle share of a step under `schedule` when stage s takes `forward[s]` for a
/// micro-batch's forward and `backward[s]` for its backward (any unit): the schedule's actions run
/// as a discrete-event simulation, each action as soon as its stage is free and its input (the
/// previous stage's forward, the next stage's backward) has arrived; transfers cost nothing.
/// Balanced stages give bubble_fraction() on every stage; with unequal stages the faster ones
/// also wait for the slowest, every micro-batch.
std::vector<double> idle_fractions(Schedule schedule, const std::vector<double>& forward,
                                   const std::vector<double>& backward, int micro_batches);

/// Cuts `costs` (one per unit, in order) into `stages` consecutive non-empty parts whose largest
/// sum is as small as it can be (ties: the earlier cut). Returns each part's number of units.
/// Throws tessera::Error when there are fewer units than stages.
std::vector<int> balance_stages(const std::vector<double>& costs, int stages);

/// What one step (or one evaluation batch) of a stage measured.
struct PipelineStats {
  double idle_s = 0.0;  ///< waiting for a receive, or at the end of the step for the sends
  /// The most bytes the saved contexts of the micro-batches in flight held at once (each storage
  /// counted once): the activations this stage keeps between forward and backward.
  double peak_saved_bytes = 0.0;
};

/// What a step needs from the trainer, per micro-batch i.
struct MicroBatches {
  int count = 1;
  std::function<Index(int)> size;                  ///< samples of micro-batch i
  std::function<nn::ForwardOptions(int)> options;  ///< its forward's settings
  std::function<Tensor(int)> input;                ///< first stage: its input
  std::function<Tensor(int, const Tensor&)> loss;  ///< last stage: output -> its grad
  std::function<void(int)> before_backward;        ///< optional
  std::function<void(int)> after_backward;         ///< optional
};

class Pipeline {
 public:
  /// `stage`: this rank's layers, placed (its input and output layouts set); `axis`: the pipeline
  /// axis (null or one rank: a single stage, which runs the schedule's actions alone). The stage
  /// and the communicator outlive the pipeline.
  Pipeline(nn::Sequential& stage, comm::Communicator* axis, const GridPlace& place,
           Schedule schedule);

  int stages() const { return m_stages; }
  int stage() const { return m_stage; }
  bool first() const { return m_stage == 0; }
  bool last() const { return m_stage + 1 == m_stages; }
  Schedule schedule() const { return m_schedule; }

  /// One step's forwards and backwards over `mb` (parameter gradients accumulate in the layers).
  PipelineStats train(const MicroBatches& mb);
  /// A forward pass of a whole batch of `samples` through every stage (evaluation): the first
  /// stage gives `x`, the last returns the model's output (the others an undefined tensor). In
  /// training mode (re-estimating BatchNorm's statistics) a batch of no samples on this data rank
  /// only takes part in the layers' collectives and returns an undefined tensor.
  Tensor forward(const Tensor& x, Index samples, const nn::ForwardOptions& options,
                 PipelineStats* stats = nullptr);

  /// Bytes held by the tensors `ctx` saved (and its children's), each storage once.
  static double saved_bytes(const nn::Context& ctx);
  /// Progresses the transfers in flight (MPI moves a message only inside MPI calls) and lets the
  /// completed sends go. The stage's layers call it between their children (BuildContext::poll),
  /// so a message moves while the stage computes.
  void progress();

 private:
  struct Pending {
    Tensor tensor;  // kept alive until the transfer completes
    std::unique_ptr<comm::Work> work;
  };
  Pending post_recv(const Shape& sample, Index samples, int peer, int tag) const;
  void wait(Pending& p, PipelineStats& stats) const;
  void send(const Tensor& t, int peer, int tag);
  void finish_sends(PipelineStats& stats);

  nn::Sequential& m_stage_layers;
  comm::Communicator* m_axis = nullptr;
  Schedule m_schedule;
  int m_stages = 1;
  int m_stage = 0;
  Shape m_local_in;   // one sample of this stage's input, as this rank holds it
  Shape m_local_out;  // and of its output
  std::vector<Pending> m_sends;
  Pending m_next_input;  // the receives posted ahead (activations, gradients)
  Pending m_next_grad;
};

}  // namespace tessera::parallel
