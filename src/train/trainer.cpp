#include "tessera/train/trainer.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/nn/loss.hpp"

#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace tessera::train {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    default:
      return "a signal";
  }
}

// "1h02m", "3m12s", "45s".
std::string duration(double seconds) {
  const auto s = static_cast<long>(std::max(0.0, seconds) + 0.5);
  if (s >= 3600) {
    return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  }
  if (s >= 60) {
    return fmt::format("{}m{:02d}s", s / 60, s % 60);
  }
  return fmt::format("{}s", s);
}

std::string rate(double samples_per_s) {
  return samples_per_s >= 1e4 ? fmt::format("{:.1f}k", samples_per_s / 1e3)
                              : fmt::format("{:.0f}", samples_per_s);
}

std::unique_ptr<optim::Optimizer> make_optimizer(const deck::OptimizerConfig& o) {
  if (o.type == deck::OptimizerKind::sgd) {
    return std::make_unique<optim::Sgd>(optim::SgdOptions{
        static_cast<float>(o.momentum), o.nesterov, static_cast<float>(o.weight_decay)});
  }
  return std::make_unique<optim::AdamW>(
      optim::AdamWOptions{static_cast<float>(o.beta1), static_cast<float>(o.beta2),
                          static_cast<float>(o.eps), static_cast<float>(o.weight_decay)});
}

std::unique_ptr<nn::Sequential> build_model(const deck::Deck& d) {
  auto model = std::make_unique<nn::Sequential>("model", d.model.input);
  for (size_t i = 0; i < d.model.layers.size(); ++i) {
    const nn::LayerSpec& spec = d.model.layers[i];
    model->add(nn::make_layer(spec, fmt::format("{}{}", spec.kind, i), model->output_shape()));
  }
  return model;
}

// The data axis: every rank of the trainer (tensor, pipeline and spatial are 1 in this version).
int data_size(const deck::Deck& d, int world) {
  return d.parallel.data == 0 ? world : d.parallel.data;
}

// The grid the deck asks for fits the job's ranks, and the global batch the data axis.
void check_grid(const deck::Deck& d, int world_size) {
  const int data = data_size(d, world_size);
  const int per_trainer = data * d.parallel.tensor * d.parallel.pipeline;
  if (per_trainer != world_size) {
    throw input_error(fmt::format("parallel.data = {} does not match the {} rank(s) of the job "
                                  "(data × tensor × pipeline × spatial must equal the ranks per "
                                  "trainer; 0 takes them all)",
                                  d.parallel.data, world_size),
                      d.where("parallel.data"));
  }
  if (d.data.batch < data) {
    throw input_error(fmt::format("data.batch = {} is smaller than the {} data-parallel rank(s)",
                                  d.data.batch, data),
                      d.where("data.batch"));
  }
  if (d.parallel.deterministic && d.parallel.sample_groups % data != 0) {
    throw input_error(fmt::format("parallel.sample_groups = {} is not a multiple of the {} "
                                  "data-parallel rank(s): each rank computes whole groups",
                                  d.parallel.sample_groups, data),
                      d.where("parallel.sample_groups"));
  }
  if (d.data.micro_batches > d.data.batch / data) {
    throw input_error(fmt::format("data.micro_batches = {} is more than the {} sample(s) of each "
                                  "data-parallel rank's share of data.batch = {}",
                                  d.data.micro_batches, d.data.batch / data, d.data.batch),
                      d.where("data.micro_batches"));
  }
}

// Samples `r` of this rank's part of `b`, as a batch of its own (a micro-batch; no copy).
io::Batch micro_batch(const io::Batch& b, const Range& r) {
  io::Batch part;
  part.cursor = b.cursor;
  part.global_size = b.global_size;
  part.offset = b.offset + r.offset;
  part.ids.assign(b.ids.begin() + r.offset, b.ids.begin() + r.offset + r.count);
  const auto rows = [&r](const Tensor& t) {
    Shape s = t.shape();
    const Index per_sample = t.numel() / s[0];
    s[0] = r.count;
    return Tensor::alias(t.label(), t.view(), r.offset * per_sample, std::move(s));
  };
  part.x = rows(b.x);
  if (b.labels.extent(0) > 0) {
    part.labels = Kokkos::subview(b.labels, std::make_pair(r.offset, r.offset + r.count));
  }
  if (b.targets.defined()) {
    part.targets = rows(b.targets);
  }
  return part;
}

// Loss and metric of one batch: for classification the metric counts correct samples, for
// regression it sums absolute errors.
struct BatchLoss {
  nn::LossOutput out;
  double metric_sum = 0.0;
};

BatchLoss batch_loss(deck::LossKind kind, const Tensor& prediction, const io::Batch& b) {
  BatchLoss r;
  if (kind == deck::LossKind::softmax_cross_entropy) {
    r.out = nn::softmax_cross_entropy(prediction, b.labels, b.global_size);
    r.metric_sum = static_cast<double>(r.out.correct);
  } else {
    r.out = nn::mean_squared_error(prediction, b.targets, b.global_size);
    const std::vector<float> p = prediction.to_host();
    const std::vector<float> t = b.targets.to_host();
    const double per_sample =
        static_cast<double>(b.targets.numel() / std::max<Index>(1, b.targets.dim(0)));
    for (size_t i = 0; i < p.size(); ++i) {
      r.metric_sum += std::fabs(static_cast<double>(p[i]) - static_cast<double>(t[i])) / per_sample;
    }
  }
  return r;
}

// JSON has no NaN or infinity: a diverged loss is written as null, so every line stays JSON.
std::string json_number(double x) {
  return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null";
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

const char* metric_name(deck::LossKind kind) {
  return kind == deck::LossKind::softmax_cross_entropy ? "accuracy" : "mae";
}

// Checks that a split fits the deck's model and loss; errors name the deck keys.
void check_split(const deck::Deck& d, const io::SplitInfo& info, const std::string& key,
                 const Shape& output) {
  const bool classify = d.model.loss == deck::LossKind::softmax_cross_entropy;
  if (classify && info.task != io::Task::classification) {
    throw input_error(fmt::format("model.loss = \"softmax_cross_entropy\" needs a classification "
                                  "dataset, but {} = \"{}:{}\" is a {} split",
                                  key, info.file, info.split, io::task_name(info.task)),
                      d.where("model.loss"));
  }
  if (!classify && info.task != io::Task::regression) {
    throw input_error(
        fmt::format("model.loss = \"mse\" needs a regression dataset, but {} = \"{}:{}\" "
                    "is a {} split",
                    key, info.file, info.split, io::task_name(info.task)),
        d.where("model.loss"));
  }
  if (info.sample_shape != d.model.input) {
    throw input_error(fmt::format("model.input = {} but {} holds samples of {}",
                                  to_string(d.model.input), key, to_string(info.sample_shape)),
                      d.where("model.input"));
  }
  const Index outputs = numel(output);
  if (classify && !info.classes.empty() && outputs != static_cast<Index>(info.classes.size())) {
    throw input_error(fmt::format("the model ends in {} outputs but {} has {} classes", outputs,
                                  key, info.classes.size()),
                      d.where(fmt::format("model.layers[{}]", d.model.layers.size() - 1)));
  }
  if (!classify && outputs != info.targets) {
    throw input_error(fmt::format("the model ends in {} outputs but {} has {} regression targets",
                                  outputs, key, info.targets),
                      d.where(fmt::format("model.layers[{}]", d.model.layers.size() - 1)));
  }
}

}  // namespace

optim::ScheduleOptions run_schedule(const deck::Deck& d, Index train_samples) {
  const Index b = d.data.batch;
  const Index per_epoch = d.data.drop_last ? train_samples / b : (train_samples + b - 1) / b;
  if (per_epoch == 0) {
    throw input_error(
        fmt::format("data.batch = {} with drop_last leaves no batch of the {} samples", b,
                    train_samples),
        d.where("data.batch"));
  }
  optim::ScheduleOptions s = d.optimizer.schedule;
  s.total_steps = d.run.steps > 0 ? d.run.steps : d.run.epochs * per_epoch;
  if (s.kind == optim::ScheduleKind::cosine && s.warmup_steps >= s.total_steps) {
    throw input_error(
        fmt::format("optimizer.schedule.warmup_steps = {} is not below the run's {} steps",
                    s.warmup_steps, s.total_steps),
        d.where("optimizer.schedule"));
  }
  optim::validate(s);
  return s;
}

namespace {
// Inspects the deck's splits against a model with `output` outputs (see check_data) and returns
// what the training split holds.
io::SplitInfo check_splits(const deck::Deck& d, const Shape& output) {
  io::SplitInfo train;
  for (const auto& [key, spec] : {std::pair<std::string, std::string>{"data.train", d.data.train},
                                  std::pair<std::string, std::string>{"data.test", d.data.test}}) {
    if (spec.empty()) {
      continue;
    }
    const auto [file, split] = io::split_file_spec(spec);
    io::SplitInfo info;
    try {
      info = io::inspect_split(file, split);
    } catch (const Error& e) {
      throw input_error(fmt::format("{}: {}", key, e.message()), d.where(key));
    }
    check_split(d, info, key, output);
    if (key == "data.train" && d.parallel.deterministic && !d.data.drop_last &&
        info.samples % d.data.batch != 0) {
      throw input_error(
          fmt::format("parallel.deterministic = true needs whole global batches, but the {} "
                      "samples of {} leave a last batch of {}: set data.drop_last = true or a "
                      "data.batch that divides {}",
                      info.samples, spec, info.samples % d.data.batch, info.samples),
          d.where(d.locations.count("data.drop_last") != 0 ? "data.drop_last"
                                                           : "parallel.deterministic"));
    }
    if (key == "data.train") {
      (void)run_schedule(d, info.samples);  // the run's length fits its schedule
      train = info;
    }
  }
  return train;
}
}  // namespace

void check_data(const deck::Deck& d) {
  (void)check_splits(d, build_model(d)->output_shape());
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) {
    sigaction(sig, &sa, nullptr);
  }
}

Trainer::Trainer(const deck::Deck& deck, MPI_Comm world) : m_deck(deck) {
  int world_size = 1;
  MPI_Comm_size(world, &world_size);
  comm::agree(world, [&] { check_grid(deck, world_size); });  // errors located in the deck
  comm::GridSpec spec;
  spec.trainers = deck.parallel.trainers;
  spec.data = deck.parallel.data;
  spec.pipeline = deck.parallel.pipeline;
  spec.tensor = deck.parallel.tensor;
  spec.spatial = deck.parallel.spatial;
  m_grid = std::make_unique<comm::ProcessGrid>(world, spec);
  comm::Communicator& data = m_grid->axis(GridAxis::data);
  m_comm = data.mpi_comm();
  m_rank = data.rank();
  m_size = data.size();
  kernels::set_blas_threads(deck.run.blas_threads);

  comm::agree(m_comm, [&] {
    m_model = build_model(deck);
    m_train_info = check_splits(deck, m_model->output_shape());
    io::ReaderOptions ro;
    ro.batch = deck.data.batch;
    ro.seed = deck.run.seed;
    ro.shuffle = deck.data.shuffle;
    ro.drop_last = deck.data.drop_last;
    ro.cache = deck.data.cache;
    ro.prefetch = deck.data.prefetch;
    ro.data_rank = m_rank;
    ro.data_size = m_size;
    ro.expect_sample_shape = deck.model.input;
    m_train = std::make_unique<io::DatasetReader>(deck.data.train, ro);
    m_schedule = run_schedule(deck, m_train_info.samples);
    m_total_steps = m_schedule.total_steps;
    if (m_rank == 0) {
      std::filesystem::create_directories(deck.run.output);
      std::ofstream(deck.run.output + "/deck.toml") << deck::to_toml(deck);
      m_metrics_path = deck.run.output + "/metrics.jsonl";
    }
  });
  m_model->initialize(deck.run.seed);
  m_model->set_needs_input_grad(false);  // the input is data
  parallel::DataParallelOptions dpo;
  dpo.bucket_mb = deck.parallel.bucket_mb;
  dpo.reduce = parallel::reduce_from_name(deck.parallel.reduce);
  dpo.zero = deck.parallel.zero == 1;
  dpo.groups_per_rank = deck.parallel.deterministic ? deck.parallel.sample_groups / m_size : 0;
  m_micro_batches = deck.parallel.deterministic ? dpo.groups_per_rank : deck.data.micro_batches;
  comm::agree(m_comm, [&] {  // also checks that every rank built the same model
    m_dp = std::make_unique<parallel::DataParallel>(*m_model, data, dpo);
  });
  if (m_rank == 0 && m_size > 1) {
    std::printf("data parallel: %d ranks, %d gradient bucket%s, summed %s%s\n", m_size,
                m_dp->bucket_count(), m_dp->bucket_count() == 1 ? "" : "s",
                deck.parallel.deterministic ? "in sample-group order (deterministic)"
                : m_dp->shared_reduction()  ? "through shared memory (one node)"
                                            : "with MPI's non-blocking allreduce",
                dpo.zero ? ", ZeRO-1" : "");
    std::fflush(stdout);
  }
  m_model->set_backward_hook([this](nn::Layer& layer) { m_dp->on_backward(layer); });
  m_optimizer = make_optimizer(deck.optimizer);
  if (deck.checkpoint.enabled && !deck.checkpoint.restart.empty()) {
    restart();
  }
  if (m_rank == 0 && m_start_step == 0) {
    std::ofstream(m_metrics_path, std::ios::trunc);  // a restarted run appends to its metrics
  }
  if (m_start_step > 0) {
    log_line(fmt::format(R"({{"kind": "restart", "step": {}}})", m_start_step));
  }
}

Trainer::~Trainer() {
  m_train.reset();
}

void Trainer::log_line(const std::string& json) const {
  if (m_rank == 0 && !m_metrics_path.empty()) {
    std::ofstream(m_metrics_path, std::ios::app) << json << '\n';
  }
}

Trainer::StepAgreement Trainer::agree_on_step(bool save_due) {
  // Signals reach the ranks at slightly different times, and rank 0's clock decides the timed
  // checkpoints: one allreduce agrees on both at the step boundary.
  int mine[2] = {g_stop_signal, m_rank == 0 && save_due ? 1 : 0};
  int any[2] = {0, 0};
  TESSERA_MPI_CHECK(MPI_Allreduce(mine, any, 2, MPI_INT, MPI_MAX, m_comm));
  if (any[0] != 0) {
    g_stop_signal = any[0];
  }
  return {any[0], any[1] != 0};
}

void Trainer::restart() {
  const deck::CheckpointConfig& c = m_deck.checkpoint;
  std::string file;
  comm::agree(m_comm, [&] { file = io::resolve_restart(c.restart, c.dir); });
  if (file.empty()) {
    if (m_rank == 0) {
      std::printf("restart: no checkpoint in %s yet: starting from step 0\n", c.dir.c_str());
    }
    return;
  }
  io::CheckpointInfo info;
  comm::agree(m_comm, [&] {
    try {
      info = io::load_checkpoint(file, *m_dp, *m_optimizer, m_comm);
    } catch (const Error& e) {  // name the deck key that led here
      throw input_error(e.message(), m_deck.where("checkpoint.restart"));
    }
  });
  m_start_step = info.step;
  m_train->seek(info.cursor);
  if (m_rank == 0) {
    std::printf("restart: from %s at step %lld (saved on %d rank%s, data %d, zero %d)%s\n",
                file.c_str(), static_cast<long long>(info.step), info.ranks,
                info.ranks == 1 ? "" : "s", info.data_size, info.zero,
                info.step >= m_total_steps
                    ? fmt::format("; the run has {} steps: nothing is left to train (another "
                                  "run.output or checkpoint.restart=\"\" starts afresh)",
                                  m_total_steps)
                          .c_str()
                    : "");
    std::fflush(stdout);
  }
}

void Trainer::save(std::int64_t steps_done, const char* why) {
  const deck::CheckpointConfig& c = m_deck.checkpoint;
  io::CheckpointInfo info;
  info.step = steps_done;
  info.total_steps = m_total_steps;
  info.cursor = m_train->cursor();
  info.seed = m_deck.run.seed;
  info.deck = deck::to_toml(m_deck);
  info.grid = fmt::format("trainers {} × data {} × pipeline {} × tensor {} × spatial [{}]",
                          m_deck.parallel.trainers, m_size, m_deck.parallel.pipeline,
                          m_deck.parallel.tensor, fmt::join(m_deck.parallel.spatial, ", "));
  info.ranks = m_size;
  info.data_size = m_size;
  info.zero = m_deck.parallel.zero;
  const io::SaveReport r = io::save_checkpoint(c.dir, info, *m_dp, *m_optimizer, m_comm, c.keep);
  if (m_rank == 0) {
    std::printf("checkpoint: step %lld -> %s (%.1f MiB in %.2f s, %.0f MB/s; %s)\n",
                static_cast<long long>(steps_done), r.file.c_str(), r.bytes / 1048576.0, r.seconds,
                r.bytes / std::max(r.seconds, 1e-9) / 1e6, why);
    std::fflush(stdout);
  }
  log_line(fmt::format(
      R"({{"kind": "checkpoint", "step": {}, "file": {}, "bytes": {:.0f}, "seconds": {:.4f}, "why": "{}"}})",
      steps_done, json_string(r.file), r.bytes, r.seconds, why));
}

Evaluation Trainer::evaluate(const std::string& spec) {
  m_dp->sync_parameters();
  io::ReaderOptions ro;
  ro.batch = std::max<Index>(m_deck.data.batch, 256);
  ro.shuffle = false;
  ro.prefetch = 2;
  ro.data_rank = m_rank;
  ro.data_size = m_size;
  ro.expect_sample_shape = m_deck.model.input;
  std::unique_ptr<io::DatasetReader> reader;
  comm::agree(m_comm, [&] { reader = std::make_unique<io::DatasetReader>(spec, ro); });
  double sums[3] = {0.0, 0.0, 0.0};  // loss · global batch, metric sum, samples
  nn::ForwardOptions fo;
  fo.training = false;
  for (std::int64_t b = 0; b < reader->batches_per_epoch(); ++b) {
    const io::Batch batch = reader->next();
    fo.sample_offset = batch.offset;
    const nn::ForwardResult f = m_model->forward(batch.x, fo);
    const BatchLoss l = batch_loss(m_deck.model.loss, f.output, batch);
    sums[0] += l.out.loss * static_cast<double>(batch.global_size);
    sums[1] += l.metric_sum;
    sums[2] += static_cast<double>(batch.ids.size());
  }
  TESSERA_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, m_comm));
  Evaluation e;
  e.split = spec;
  e.samples = static_cast<Index>(sums[2]);
  e.loss = sums[0] / sums[2];
  e.metric = sums[1] / sums[2];
  return e;
}

RunSummary Trainer::run() {
  const deck::Deck& d = m_deck;
  const bool classify = d.model.loss == deck::LossKind::softmax_cross_entropy;
  const std::int64_t per_epoch = m_train->batches_per_epoch();
  RunSummary summary;
  summary.total_steps = m_total_steps;

  // Log window: local sums, reduced only when a line is printed.
  double window[4] = {0.0, 0.0, 0.0, 0.0};  // loss, metric sum, samples, steps
  double compute_s = 0.0;
  double comm_s = 0.0;
  double data_s = 0.0;
  Stopwatch window_clock;
  const Stopwatch run_clock;
  auto eval_and_log = [&](std::int64_t step) {
    if (d.data.test.empty()) {
      return std::optional<Evaluation>();
    }
    const Evaluation e = evaluate(d.data.test);
    if (m_rank == 0) {
      std::printf("eval  step %lld: %s loss %.4f, %s %s (%lld samples)\n",
                  static_cast<long long>(step), d.data.test.c_str(), e.loss,
                  metric_name(d.model.loss),
                  classify ? fmt::format("{:.2f}%", 100.0 * e.metric).c_str()
                           : fmt::format("{:.4g}", e.metric).c_str(),
                  static_cast<long long>(e.samples));
      std::fflush(stdout);
    }
    log_line(fmt::format(
        R"({{"kind": "eval", "step": {}, "split": {}, "loss": {}, "{}": {}, "samples": {}, "time": {:.3f}}})",
        step, json_string(d.data.test), json_number(e.loss), metric_name(d.model.loss),
        json_number(e.metric), e.samples, run_clock.seconds()));
    return std::optional<Evaluation>(e);
  };

  const deck::CheckpointConfig& ck = d.checkpoint;
  Stopwatch since_save;
  double window_paused = 0.0;  // checkpoint time inside the log window, not counted in samples/s
  std::int64_t step = m_start_step;
  std::int64_t saved_at = -1;
  for (; step < m_total_steps; ++step) {
    const bool last = step + 1 == m_total_steps;
    // --- data ---------------------------------------------------------------------------
    const double waited_before = m_train->wait_seconds();
    const io::Batch batch = m_train->next();
    data_s += m_train->wait_seconds() - waited_before;

    // --- forward, loss, backward ----------------------------------------------------------
    // Micro-batches (or the deterministic mode's sample groups) accumulate their gradients; the
    // last one's backward starts the reduction over the data axis, bucket by bucket.
    const Stopwatch sync_clock;
    m_dp->begin_step();  // waits for the previous update's parameters, zeroes the gradients
    comm_s += sync_clock.seconds();
    const Stopwatch compute_clock;
    nn::ForwardOptions fo;
    fo.training = true;
    fo.seed = d.run.seed;
    fo.step = static_cast<std::uint64_t>(step);
    double step_loss = 0.0;
    double step_metric = 0.0;
    for (int m = 0; m < m_micro_batches; ++m) {
      const Range r = block_range(static_cast<Index>(batch.ids.size()), m_micro_batches, m);
      m_dp->set_last_micro_batch(m + 1 == m_micro_batches);
      if (r.count > 0) {
        io::Batch slice;  // a micro-batch's view; the whole batch needs no copy
        if (m_micro_batches > 1) {
          slice = micro_batch(batch, r);
        }
        const io::Batch& part = m_micro_batches == 1 ? batch : slice;
        fo.sample_offset = part.offset;
        nn::ForwardResult f = m_model->forward(part.x, fo);
        const BatchLoss l = batch_loss(d.model.loss, f.output, part);
        m_model->backward(l.out.grad, std::move(f.ctx));
        step_loss += l.out.loss;
        step_metric += l.metric_sum;
      }
      if (d.parallel.deterministic) {
        m_dp->end_group(m);
      }
    }
    compute_s += compute_clock.seconds();

    // --- gradient reduction over the data axis --------------------------------------------
    // (started during backward; what is left to wait for here is the exposed communication)
    const Stopwatch comm_clock;
    m_dp->finish_reduction();
    comm_s += comm_clock.seconds();

    // --- update ---------------------------------------------------------------------------
    const Stopwatch update_clock;
    if (d.optimizer.clip_grad_norm > 0.0) {
      m_dp->clip_grad_norm(d.optimizer.clip_grad_norm);
    }
    const double lr = optim::learning_rate(m_schedule, step);
    m_dp->step(*m_optimizer, lr);
    compute_s += update_clock.seconds();

    window[0] += step_loss;
    window[1] += step_metric;
    window[2] += static_cast<double>(batch.ids.size());
    window[3] += 1.0;

    // --- progress line and metrics --------------------------------------------------------
    if ((step + 1) % d.run.log_every == 0 || last || step == 0) {
      double sums[4];
      TESSERA_MPI_CHECK(MPI_Allreduce(window, sums, 4, MPI_DOUBLE, MPI_SUM, m_comm));
      const double elapsed = std::max(1e-9, window_clock.seconds() - window_paused);
      const double steps = window[3];
      const double loss = sums[0] / steps;
      const double metric = sums[1] / sums[2];
      const double samples_s = sums[2] / elapsed;
      const double busy = std::max(1e-12, compute_s + comm_s + data_s);
      const double eta = run_clock.seconds() / static_cast<double>(step + 1 - m_start_step) *
                         static_cast<double>(m_total_steps - step - 1);
      if (m_rank == 0) {
        std::printf(
            "step %6lld/%lld  epoch %lld  loss %.4f  %s %s  %s samples/s  compute %2.0f%% comm "
            "%2.0f%% "
            "data %2.0f%%  lr %.3g  ETA %s\n",
            static_cast<long long>(step + 1), static_cast<long long>(m_total_steps),
            static_cast<long long>(batch.cursor.epoch + 1), loss, classify ? "acc" : "mae",
            classify ? fmt::format("{:5.1f}%", 100.0 * metric).c_str()
                     : fmt::format("{:.4g}", metric).c_str(),
            rate(samples_s).c_str(), 100.0 * compute_s / busy, 100.0 * comm_s / busy,
            100.0 * data_s / busy, lr, duration(eta).c_str());
        std::fflush(stdout);
      }
      log_line(fmt::format(
          R"({{"kind": "train", "step": {}, "epoch": {}, "loss": {}, "{}": {}, "samples_per_s": {:.1f}, "lr": {:.6g}, "compute_s": {:.4f}, "comm_s": {:.4f}, "data_s": {:.4f}, "time": {:.3f}}})",
          step + 1, static_cast<double>(step + 1) / static_cast<double>(per_epoch),
          json_number(loss), metric_name(d.model.loss), json_number(metric), samples_s, lr,
          compute_s, comm_s, data_s, run_clock.seconds()));
      std::fill(std::begin(window), std::end(window), 0.0);
      compute_s = comm_s = data_s = window_paused = 0.0;
      window_clock.restart();
    }
    if (!last && d.run.eval_every > 0 && (step + 1) % d.run.eval_every == 0) {
      eval_and_log(step + 1);
    }
    // --- checkpoints and stop signals, agreed at this step boundary ----------------------
    const bool timed =
        ck.enabled && ck.every_seconds > 0.0 && since_save.seconds() >= ck.every_seconds;
    const StepAgreement agreed = last ? StepAgreement{0, false} : agree_on_step(timed);
    const bool periodic = ck.enabled && ck.every_steps > 0 && (step + 1) % ck.every_steps == 0;
    if (ck.enabled && (periodic || agreed.save_due || agreed.signal != 0 || (last && ck.at_end))) {
      const Stopwatch save_clock;
      save(step + 1, agreed.signal != 0 ? signal_name(agreed.signal)
                     : periodic         ? "checkpoint.every_steps"
                     : agreed.save_due  ? "checkpoint.every_seconds"
                                        : "end of run");
      saved_at = step + 1;
      since_save.restart();
      window_paused += save_clock.seconds();
    }
    if (agreed.signal != 0) {
      summary.stopped = true;
      summary.signal = agreed.signal;
      ++step;
      if (m_rank == 0) {
        std::printf("stopped by %s at step %lld of %lld (a step boundary on every rank)%s\n",
                    signal_name(summary.signal), static_cast<long long>(step),
                    static_cast<long long>(m_total_steps),
                    saved_at == step ? "; restart with checkpoint.restart = \"auto\"" : "");
      }
      log_line(fmt::format(R"({{"kind": "stop", "step": {}, "signal": "{}", "time": {:.3f}}})",
                           step, signal_name(summary.signal), run_clock.seconds()));
      break;
    }
  }
  m_dp->sync_parameters();
  if (!summary.stopped) {
    summary.final_eval = eval_and_log(step);
  }
  summary.steps = step;
  summary.seconds = run_clock.seconds();
  return summary;
}

std::string describe(const deck::Deck& d, int world_size) {
  check_grid(d, world_size);  // `tessera check` at N ranks refuses what `tessera run` would
  std::string out;
  const int data = data_size(d, world_size);
  const Index local_batch = (d.data.batch + data - 1) / data;
  out += fmt::format(
      "grid: {} ranks = trainers {} × data {} × pipeline {} × tensor {} × spatial [{}]\n",
      world_size, d.parallel.trainers, data, d.parallel.pipeline, d.parallel.tensor,
      fmt::format("{}", fmt::join(d.parallel.spatial, ", ")));
  const Index parts = d.parallel.deterministic ? d.parallel.sample_groups / data
                                               : static_cast<Index>(d.data.micro_batches);
  const Index micro_batch = (local_batch + parts - 1) / parts;
  out += fmt::format("batch: global {}, per data rank {}", d.data.batch, local_batch);
  if (parts > 1) {
    out += fmt::format(", {} {} of {} accumulated per step", parts,
                       d.parallel.deterministic ? "sample groups" : "micro-batches", micro_batch);
  }
  out += "\n\n";
  out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}\n", "#", "layer", "type", "output",
                     "parameters");
  const auto model = build_model(d);
  Index params = 0;
  Index activations = 0;
  out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}\n", "", "input", "",
                     to_string(d.model.input), "");
  for (size_t i = 0; i < model->size(); ++i) {
    nn::Layer& l = (*model)[i];
    Index n = 0;
    for (const nn::Parameter* p : l.all_parameters()) {
      n += numel(p->layout.global_shape());
    }
    params += n;
    Shape in = d.model.input;
    for (size_t j = 0; j < i; ++j) {
      in = (*model)[j].output_shape(in);
    }
    const Shape shape = l.output_shape(in);
    activations += numel(shape);
    out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}\n", i, l.name(), l.kind(),
                       to_string(shape), n);
  }
  const double mib = 1.0 / (1024.0 * 1024.0);
  const double weights = static_cast<double>(params) * 4.0;
  const int states =
      d.optimizer.type == deck::OptimizerKind::adamw ? 2 : (d.optimizer.momentum > 0.0 ? 1 : 0);
  // Every layer's output and its gradient for a micro-batch, plus the input batches in flight.
  const double acts =
      2.0 * static_cast<double>(activations) * static_cast<double>(micro_batch) * 4.0;
  const double batches = static_cast<double>(d.data.prefetch + 1) *
                         static_cast<double>(numel(d.model.input)) *
                         static_cast<double>(local_batch) * 4.0;
  out += fmt::format("\nparameters: {} ({:.2f} MiB as float32)\n", params, weights * mib);
  // Deterministic mode keeps each of its groups' gradients, and every group's while summing.
  double groups = 0.0;
  if (d.parallel.deterministic) {
    groups = weights * static_cast<double>(d.parallel.sample_groups / data +
                                           (data > 1 ? d.parallel.sample_groups : 0));
  }
  auto estimate = [&](int zero) {
    const double state = weights * states / (zero == 1 ? data : 1);
    const double total = weights * 2 + state + groups + acts + batches;
    std::string line =
        fmt::format("{:.1f} MiB = parameters {:.1f} + gradients {:.1f} + optimizer state {:.1f}",
                    total * mib, weights * mib, weights * mib, state * mib);
    if (groups > 0.0) {
      line += fmt::format(" + group gradients {:.1f}", groups * mib);
    }
    return line +
           fmt::format(" + activations {:.1f} + input batches {:.1f}", acts * mib, batches * mib);
  };
  const int zero = d.parallel.zero;
  out += fmt::format("memory per rank (estimate), parallel.zero = {} (this deck): {}\n", zero,
                     estimate(zero));
  out += fmt::format("memory per rank (estimate), parallel.zero = {}: {}\n", 1 - zero,
                     estimate(1 - zero));
  return out;
}

}  // namespace tessera::train
