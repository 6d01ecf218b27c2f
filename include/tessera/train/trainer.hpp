#pragma once
// The trainer: a deck in, a trained model and its metrics out. The loop in Trainer::run() reads top
// to bottom (llm.c's habit): each step reads its share of the global batch, runs forward and
// backward, reduces gradients, steps the optimizer; logging and evaluation are guarded by
// `step % every == 0 || last`.
//
// The trainer is the unit of identity (DESIGN.md): it spans every rank of its process grid (data ×
// tensor × ...). Its rank 0 alone reports progress (through the program's Reporter), writes the
// metrics file and the resolved deck; errors are agreed, stop signals and timed checkpoints
// decided, and checkpoints created and committed over all of its ranks. The data axis only decides
// which samples a rank reads and over which ranks the losses and gradients are summed.
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/nn/sequential.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/parallel/data_parallel.hpp"
#include "tessera/parallel/pipeline.hpp"
#include "tessera/train/reporter.hpp"
#include "tessera/train/run_lock.hpp"

#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tessera::train {

/// Exit code of a run stopped early by SIGINT, SIGTERM or SIGUSR1 (EX_TEMPFAIL): job scripts
/// resubmit on it. The tools' too.
inline constexpr int kExitStopped = signals::kExitStopped;

/// Where a classification loss's classes live: whole on every rank, or split over the tensor
/// axis (a vocabulary-parallel LM head: this rank holds classes [offset, offset + local)).
struct LossPlacement {
  comm::Communicator* vocab_axis = nullptr;  ///< set when split over more than one rank
  Index offset = 0;
  Index classes = 0;
};

struct Evaluation {
  std::string split;
  Index samples = 0;
  double loss = 0.0;
  double metric = 0.0;  ///< accuracy (classification) or MAE (regression)
  /// What the metric averages over: the samples, or a language model's tokens.
  double scored = 0.0;
  /// Regression: the mean over samples of each sample's loss squared (the loss's spread over
  /// samples is loss_sq - loss²); NaN for classification.
  double loss_sq = std::nan("");
  /// Regression: the coefficient of determination of each target over the split,
  /// 1 - Σ(prediction - target)² / Σ(target - mean target)².
  std::vector<double> r2;
  /// A stoppable evaluation ended early by this stop signal (agreed by every rank); 0: complete.
  int stopped_by = 0;
};

struct RunSummary {
  std::int64_t steps = 0;        ///< optimizer steps taken in total
  std::int64_t total_steps = 0;  ///< steps the deck asks for
  bool stopped = false;          ///< stopped by a signal before total_steps
  int signal = 0;
  double seconds = 0.0;
  /// The mean training loss over the global batches of the last progress window (the last
  /// progress line's loss); NaN when no step ran.
  double loss = 0.0;
  /// The gradient's global L2 norm before clipping at the last step (optimizer.clip_grad_norm
  /// > 0 only; else 0).
  double grad_norm = 0.0;
  std::optional<Evaluation> final_eval;
  /// Steps skipped in this job for non-finite values (run.nonfinite = "skip").
  std::int64_t skipped = 0;
};

/// The line a run ends with: "final: N steps in S s; test loss L, test accuracy A%" (MAE for a
/// regression), "(no data.test to evaluate)" without a test split, and the steps skipped.
std::string final_line(const RunSummary& s, deck::LossKind loss);

class Trainer {
 public:
  /// Validates what needs the data and the world (grid size, dataset vs model) under comm::agree,
  /// builds the process grid over `world` (every rank of this trainer), the model (each rank its
  /// blocks) and the readers. `reporter` receives the progress lines on the trainer's rank 0 (none:
  /// silent); it must outlive the trainer.
  Trainer(const deck::Deck& deck, MPI_Comm world, Reporter* reporter = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Trains to the end (or to a stop signal) and evaluates.
  RunSummary run();
  /// Evaluates the model on `spec` ("file:/split"), sharded over the data ranks; only its samples
  /// `subset` when one is given.
  /// `stoppable`: every batch, the ranks agree on a stop signal (SIGTERM, SIGINT, SIGUSR1) and
  /// end early on one (Evaluation::stopped_by): a long evaluation does not outlast a scheduler's
  /// grace period.
  Evaluation evaluate(const std::string& spec, std::optional<Range> subset = std::nullopt,
                      bool stoppable = false);

  /// Called on every rank of the trainer after each optimizer step (its progress line and
  /// evaluation done), with the steps taken so far: where a population exchanges models. Its time
  /// is not counted in the step's speed.
  void set_step_hook(std::function<void(std::int64_t)> hook) { m_step_hook = std::move(hook); }
  /// Where a stop signal is decided by more than this trainer (a population that averages its
  /// trainers): called at each step boundary after the step hook, it returns the signal to stop
  /// on at that step, agreed by every rank of the job (0: none, or not a step to decide at — a
  /// signal received waits for the next). Unset, a signal stops at the next step boundary.
  void set_stop_rule(std::function<int(std::int64_t)> rule) { m_stop_rule = std::move(rule); }
  /// This rank's tensors of the model and optimizer state, in the registry's order (parameters,
  /// buffers, optimizer state; the optimizer's only with `optimizer_state`): what another trainer
  /// with the same grid holds at the same place.
  std::vector<Tensor> state_tensors(bool optimizer_state = true);
  /// This rank's buffers (BatchNorm's running statistics), in the registry's order.
  std::vector<Tensor> buffer_tensors();
  /// Re-estimates the BatchNorm running statistics of the current weights: the plain average of
  /// the statistics of the first `batches` training batches (forward passes in training mode, no
  /// update; PyTorch's swa_utils.update_bn), averaged over the data axis. What a model whose
  /// weights were averaged needs. Returns the samples seen (0: the model has no statistics).
  Index recalibrate_norms(std::int64_t batches);
  /// Takes `deck`'s optimizer keys (learning rate, schedule, momentum, ...) from the next step
  /// on, keeping the optimizer's state and step count: a population's new hyper-parameters.
  void retune(const deck::Deck& deck);
  /// Writes the model and optimizer state as they are now as a checkpoint into `dir` (the step
  /// recorded is the run's total; a population's combined model), keeping the newest `keep`.
  void save_to(const std::string& dir, const char* why, int keep = 1);
  /// Writes the model and optimizer state as they are now as the checkpoint of the step the run
  /// resumed from (replacing that file; `latest` names it), into checkpoint.dir: a population's
  /// round held on resuming (train/population.cpp). Before run().
  void save_again(const char* why);
  /// After run() failed with an error its ranks agreed on: the next run() trains on from `step`
  /// (the optimizer's step count set to it) with the state the caller has loaded into the model
  /// and optimizer — a population's failed trainer given another's model (train/population.cpp).
  void resume_at(std::int64_t step);
  /// The step a restart resumed from (0: a fresh start).
  std::int64_t start_step() const { return m_start_step; }

  nn::Sequential& model() { return *m_model; }
  parallel::DataParallel& data_parallel() { return *m_dp; }
  optim::Optimizer& optimizer() { return *m_optimizer; }
  const comm::ProcessGrid& grid() const { return *m_grid; }
  std::int64_t total_steps() const { return m_schedule.total_steps; }  // the run's length
  /// What the split under deck key `key` holds (data.train, data.test, population.validation; a
  /// token stream's samples are its windows). The key must name a split of the deck.
  const io::SplitInfo& split(const std::string& key) const;

 private:
  // A reader of `spec` beside the training one (evaluation, re-estimation): `ro` with this rank's
  // share of the data axis, its spatial box and the model's input filled in; opened on every rank
  // of the trainer together (one error on all).
  std::unique_ptr<io::DatasetReader> open_reader(const std::string& spec, io::ReaderOptions ro);
  struct StepAgreement {
    int signal = 0;         // a stop signal reached some rank
    bool save_due = false;  // rank 0's clock says a timed checkpoint is due
  };
  // Sums since the last progress line; reduced over the data axis only when a line is printed.
  struct Window {
    double loss = 0.0;
    double metric = 0.0;
    double samples = 0.0;
    double steps = 0.0;
    double compute_s = 0.0;
    double comm_s = 0.0;
    double tensor_s = 0.0;  // the tensor-parallel layers' collectives, inside forward/backward
    double halo_s = 0.0;    // the spatial layers' halo exchanges, likewise
    double data_s = 0.0;
    double paused_s = 0.0;          // checkpoint time inside the window, not counted in samples/s
    double idle_s = 0.0;            // pipeline: this stage waiting for its neighbours (the bubble)
    double schedule_s = 0.0;        // pipeline: this stage's forwards and backwards in the schedule
    double peak_saved_bytes = 0.0;  // pipeline: the most activation bytes held at once
    double grad_norm = 0.0;         // the last step's, when clipping
  };
  void build(const comm::GridSpec& spec);
  /// Every parameter, buffer and optimizer state tensor of the whole model (the other pipeline
  /// stages' held elsewhere): what checkpoints write and restarts read.
  parallel::StateRegistry state_registry();
  /// One optimizer step on `batch`; adds its sums and times to `window`. Returns the rate used.
  double train_step(std::int64_t step, const io::Batch& batch, Window& window);
  /// Pipeline: each stage's idle share of a window that 1F1B or GPipe would give stages computing
  /// `schedule_s` (seconds in their forwards and backwards over `steps` steps) beside the window's
  /// other work `working_s` — the bubble of these stages, without the transfers' cost.
  std::vector<double> predicted_idle(const std::vector<double>& schedule_s,
                                     const std::vector<double>& working_s, double steps) const;
  // After the gradients' reduction: a non-finite loss or gradient on any rank stops the run
  // (every rank, naming the step, tensor and rank) or, with run.nonfinite = "skip", returns true.
  bool nonfinite_step(std::int64_t step, double loss);
  // The data-parallel replicas' parameters after `steps` steps must be identical bit for bit:
  // compares a hash of each parameter across the data axis and stops the run (every rank, naming
  // the step, the first parameter that differs, the ranks and the largest difference) if not.
  void check_replicas(std::int64_t steps);
  /// Prints and logs the window's progress line; returns its mean loss.
  double report_progress(std::int64_t step, const io::Batch& batch, double lr, Window& window,
                         double window_seconds, double run_seconds);
  std::optional<Evaluation> eval_and_log(std::int64_t step, double run_seconds);
  /// The peak model FLOPs utilisation is reported against: the sum over the trainer's ranks of
  /// run.peak_tflops, or of a GEMM measured on each (all at once, as they will train); said and
  /// logged with the model's FLOPs per sample. Once per trainer (run() calls it at its first
  /// start, not when a population's revived trainer runs again).
  void measure_peak();
  StepAgreement agree_on_step(bool save_due);
  void restart();
  void save(std::int64_t steps_done, const char* why, const std::string& dir, int keep);
  // One record of metrics.jsonl (rank 0). A failed write is kept and agreed at the next step
  // boundary (check_writes): every rank stops with its message.
  void log_line(const std::string& json);
  void check_writes();
  /// The trainer's rank 0: the one that reports, writes metrics and speaks for the trainer.
  bool leader() const { return m_trainer->rank() == 0; }
  void say(const std::string& line) const;

  deck::Deck m_deck;  // a copy: the trainer outlives any temporary deck it is given
  std::function<void(std::int64_t)> m_step_hook;  // set_step_hook
  std::function<int(std::int64_t)> m_stop_rule;   // set_stop_rule
  SilentReporter m_silent;
  Reporter* m_reporter = nullptr;
  std::unique_ptr<comm::ProcessGrid> m_grid;
  comm::Communicator* m_trainer = nullptr;  // every rank of the trainer (owned by m_grid)
  comm::Communicator* m_data = nullptr;     // the data axis (owned by m_grid)
  std::unique_ptr<nn::Sequential> m_model;  // this rank's pipeline stage (all of it at pipeline 1)
  comm::Communicator* m_pipe = nullptr;     // the pipeline axis (owned by m_grid)
  comm::Communicator* m_sums = nullptr;     // data × pipeline: where losses and counts are summed
  std::unique_ptr<parallel::Pipeline> m_pipeline;
  std::unique_ptr<optim::Optimizer> m_optimizer;
  std::unique_ptr<io::DatasetReader> m_train;
  std::map<std::string, io::SplitInfo> m_splits;  // the deck's splits by key (check_splits)
  const io::SplitInfo& train_split() const { return split("data.train"); }
  optim::ScheduleOptions m_schedule;
  std::int64_t m_start_step = 0;  // > 0 after a restart from a checkpoint
  std::string m_resumed_from;     // the checkpoint file this run resumed from ("": none)
  std::string m_metrics_path;
  std::int64_t m_skipped = 0;            // steps skipped for non-finite values in this job
  std::int64_t m_skipped_in_row = 0;     // of them, the latest run of consecutive steps
  std::int64_t m_replicas_checked = -1;  // the step of the last replica check
  std::string m_write_failure;           // rank 0: the first write to run.output that failed
  std::unique_ptr<comm::watchdog::Scope> m_watchdog;  // this trainer's (comm/watchdog.hpp)
  std::unique_ptr<RunLock> m_lock;  // rank 0: run.output's lock (train/run_lock.hpp)
  // rank 0: checkpoint.dir's, when not run.output; released first (it may lie in run.output)
  std::unique_ptr<RunLock> m_ckpt_lock;
  std::unique_ptr<parallel::DataParallel> m_dp;  // gradient reduction, ZeRO-1, determinism
  LossPlacement m_loss_placement;
  int m_micro_batches = 1;  // per rank per step: data.micro_batches, or the deterministic groups
  double m_flops_per_sample = 0.0;  // the whole model's forward and backward (plan_stages)
  double m_peak_flops = 0.0;        // FLOP/s of all the trainer's ranks (measure_peak)
};

/// The deck's model at `context`'s place (each rank allocates its blocks; initialise() fills them).
/// Errors name the layer's deck location, a layer that cannot take its input's placement too.
std::unique_ptr<nn::Sequential> build_model(const deck::Deck& deck,
                                            const nn::BuildContext& context = {});

/// How the deck's model is cut into pipeline stages (parallel.pipeline, parallel.stages), seen
/// from `place` (its tensor coordinate gives the local shapes). The units are the model's layers,
/// a `repeat` counted as its repetitions.
struct StagePlan {
  std::vector<std::string> unit_names;   ///< "linear3", "repeat1.2"
  std::vector<std::string> unit_kinds;   ///< "linear", "repeat"
  std::vector<double> unit_flops;        ///< estimated forward + backward FLOPs per sample
  std::vector<Index> unit_params;        ///< parameters of each unit (global)
  std::vector<Index> unit_local_params;  ///< and the elements `place` holds
  /// Elements of one sample's activations each unit's layers keep for backward at `place` (their
  /// outputs, and attention's q/k/v: the estimate `tessera check` uses).
  std::vector<Index> unit_activations;
  std::vector<int> sizes;      ///< units per stage
  std::vector<size_t> first;   ///< each stage's first unit, then the number of units
  std::vector<Layout> inputs;  ///< each stage's input layout, then the model's output
};
StagePlan plan_stages(const deck::Deck& deck, const GridPlace& place);

/// The run's schedule: its length in optimizer steps (run.steps, or run.epochs over a training
/// split of `train_samples`) and the deck's schedule validated against it. Throws tessera::Error
/// (exit code 2) located in the deck.
optim::ScheduleOptions run_schedule(const deck::Deck& deck, Index train_samples);

/// Checks that the deck's datasets exist and fit its model and loss (shapes, task, classes), that
/// the run's length fits the schedule, and verifies share `share` of `shares` of their data
/// (io::verify_split: checksums, labels, finite values; the caller agrees on the verdict). Throws
/// tessera::Error (exit code 2) naming deck keys and files. Returns notes for the user: the splits
/// that have no checksums.
std::vector<std::string> check_data(const deck::Deck& deck, int share = 0, int shares = 1);

/// The grid the deck asks for on a job of `world_size` ranks, resolved (comm::resolve_grid) and
/// checked against the batch; throws tessera::Error (exit code 2) located at the deck key.
comm::GridSpec resolve_grid(const deck::Deck& deck, int world_size);

/// What `tessera check` prints: the grid, a per-layer summary (output shape, parameters), the
/// parameter count and the estimated memory per rank. Needs the world size, not the data; builds
/// the model's shapes only (ShapeOnly). Refuses (exit code 2) a deck whose estimate exceeds the
/// machine's physical memory.
std::string describe(const deck::Deck& deck, int world_size);

}  // namespace tessera::train
