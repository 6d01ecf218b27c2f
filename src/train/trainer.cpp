#include "tessera/train/trainer.hpp"

#include "records.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/check.hpp"
#include "tessera/core/device.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/checkpoint_reader.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/kernels/reduce.hpp"
#include "tessera/nn/attention.hpp"
#include "tessera/nn/loss.hpp"
#include "tessera/nn/norm.hpp"
#include "tessera/nn/spatial.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <optional>

namespace tessera::train {
namespace {

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

// "1.412 MFLOP", "581.3 GFLOP", "18.6 TFLOP" (`unit` after the prefix: "FLOP" or "FLOP/s").
std::string flops_text(double flops, const char* unit = "FLOP") {
  const char* prefixes[] = {"", "k", "M", "G", "T", "P"};
  size_t p = 0;
  while (p + 1 < std::size(prefixes) && std::abs(flops) >= 1000.0) {
    flops /= 1000.0;
    ++p;
  }
  return fmt::format("{:.4g} {}{}", flops, prefixes[p], unit);
}

// The whole model's FLOPs per sample, forward and backward, from its stage plan: what `tessera
// check` prints and the progress line's mfu counts.
double model_flops(const StagePlan& plan) {
  return std::accumulate(plan.unit_flops.begin(), plan.unit_flops.end(), 0.0);
}

// The deck's optimizer keys as each optimizer's options (at the start, and when retuned).
optim::SgdOptions sgd_options(const deck::OptimizerConfig& o) {
  return {static_cast<float>(o.momentum), o.nesterov, static_cast<float>(o.weight_decay)};
}
optim::AdamWOptions adamw_options(const deck::OptimizerConfig& o) {
  return {o.beta1, o.beta2, o.eps, o.weight_decay};
}

std::unique_ptr<optim::Optimizer> make_optimizer(const deck::OptimizerConfig& o) {
  if (o.type == deck::OptimizerKind::sgd) {
    return std::make_unique<optim::Sgd>(sgd_options(o));
  }
  return std::make_unique<optim::AdamW>(adamw_options(o));
}

comm::GridSpec grid_spec(const deck::Deck& d) {
  comm::GridSpec spec;
  spec.trainers = d.parallel.trainers;
  spec.data = d.parallel.data;
  spec.pipeline = d.parallel.pipeline;
  spec.tensor = d.parallel.tensor;
  spec.spatial = d.parallel.spatial;
  return spec;
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
    const Index per_sample = s[0] > 0 ? t.numel() / s[0] : 0;  // an empty share: no samples
    s[0] = r.count;
    return Tensor::alias(t.label(), t.view(), r.offset * per_sample, std::move(s));
  };
  part.x = rows(b.x);
  if (b.labels.extent(0) > 0) {  // a label per sample, or per token of a window
    const auto per = static_cast<Index>(b.labels.extent(0)) / static_cast<Index>(b.ids.size());
    part.labels =
        Kokkos::subview(b.labels, std::make_pair(r.offset * per, (r.offset + r.count) * per));
  }
  if (b.targets.defined()) {
    part.targets = rows(b.targets);
  }
  return part;
}

// Loss and metric of one batch: for classification the metric counts correct samples (a language
// model: the fraction of a sample's tokens predicted right), for regression it sums absolute
// errors. `scored`: what the metric averages over on this rank (samples, or a language model's
// tokens); `loss_sq_sum` (regression): the sum of each sample's loss squared, for the spread of the
// loss over samples.
struct BatchLoss {
  nn::LossOutput out;
  double metric_sum = 0.0;
  double scored = 0.0;
  double loss_sq_sum = 0.0;
};

BatchLoss batch_loss(deck::LossKind kind, const Tensor& prediction, const io::Batch& b,
                     const LossPlacement& placement) {
  BatchLoss r;
  if (kind == deck::LossKind::softmax_cross_entropy) {
    // Per token when the model's output is (N, T, V): every token a row of the cross entropy,
    // averaged over the global batch's tokens.
    const Index n = prediction.dim(0);
    const Index tokens = prediction.rank() == 3 ? prediction.dim(1) : 1;
    const Index classes = prediction.dim(-1);
    if (placement.vocab_axis != nullptr) {
      r.out = nn::vocab_parallel_cross_entropy(prediction, b.labels, b.global_size * tokens,
                                               placement.offset, placement.classes,
                                               *placement.vocab_axis);
    } else {
      r.out = nn::softmax_cross_entropy(prediction.reshaped({n * tokens, classes}), b.labels,
                                        b.global_size * tokens);
    }
    r.metric_sum = static_cast<double>(r.out.correct) / static_cast<double>(tokens);
    r.scored = static_cast<double>(n * tokens);
    if (prediction.rank() == 3) {  // (N, T, V), a context of 1 too
      r.out.grad = r.out.grad.reshaped(prediction.shape());
    }
  } else {
    r.out = nn::mean_squared_error(prediction, b.targets, b.global_size);
    const std::vector<float> p = prediction.to_host();
    const std::vector<float> t = b.targets.to_host();
    const auto per_sample =
        static_cast<size_t>(b.targets.numel() / std::max<Index>(1, b.targets.dim(0)));
    const auto count = static_cast<double>(per_sample);
    for (size_t s = 0; s * per_sample < p.size(); ++s) {
      double squares = 0.0;  // this sample's loss · per_sample
      for (size_t i = s * per_sample; i < (s + 1) * per_sample; ++i) {
        const double d = static_cast<double>(p[i]) - static_cast<double>(t[i]);
        r.metric_sum += std::fabs(d) / count;
        squares += d * d;
      }
      r.loss_sq_sum += (squares / count) * (squares / count);
    }
    r.scored = static_cast<double>(p.size() / std::max<size_t>(1, per_sample));
  }
  return r;
}

const char* metric_name(deck::LossKind kind) {
  return kind == deck::LossKind::softmax_cross_entropy ? "accuracy" : "mae";
}

// The vocab option of the model's first layer when it is an embedding (the factory refuses one
// anywhere else); nothing otherwise.
std::optional<std::int64_t> first_embedding_vocab(const deck::Deck& d) {
  if (d.model.layers.empty() || d.model.layers[0].kind != "embedding") {
    return std::nullopt;
  }
  const auto& options = d.model.layers[0].options;
  const auto it = options.find("vocab");
  const auto* vocab = it == options.end() ? nullptr : std::get_if<std::int64_t>(&it->second);
  return vocab != nullptr ? std::optional<std::int64_t>(*vocab) : std::nullopt;
}

// Checks that a split fits the deck's model and loss; errors name the deck keys.
void check_split(const deck::Deck& d, const io::SplitInfo& info, const std::string& key,
                 const Shape& output) {
  const bool classify = d.model.loss == deck::LossKind::softmax_cross_entropy;
  const bool tokens = info.task == io::Task::language_modeling;
  if (classify && info.task != io::Task::classification && !tokens) {
    throw input_error(fmt::format("model.loss = \"softmax_cross_entropy\" needs a classification "
                                  "or language-modeling dataset, but {} = \"{}:{}\" is a {} split",
                                  key, info.file, info.split, io::task_name(info.task)),
                      d.where("model.loss"));
  }
  if (tokens) {  // a token stream: the model takes context tokens and predicts each next one
    if (d.model.context < 1) {
      throw input_error(fmt::format("{} = \"{}:{}\" is a token stream: set model.context, the "
                                    "tokens of a sample",
                                    key, info.file, info.split),
                        d.where(key));
    }
    if (d.model.context + 1 > info.tokens) {
      throw input_error(fmt::format("model.context = {} needs {} tokens per window, but {} = "
                                    "\"{}:{}\" holds {}",
                                    d.model.context, d.model.context + 1, key, info.file,
                                    info.split, info.tokens),
                        d.where("model.context"));
    }
    if (const auto vocab = first_embedding_vocab(d); vocab && *vocab < info.vocab) {
      throw input_error(fmt::format("the embedding's vocab = {} is smaller than the vocabulary of "
                                    "{} = \"{}:{}\" ({} tokens): its ids would fall outside the "
                                    "table",
                                    *vocab, key, info.file, info.split, info.vocab),
                        d.model.layers[0].where);
    }
    if (output != Shape{d.model.context, info.vocab}) {
      throw input_error(
          fmt::format("the model ends in {} per sample, but a language model over "
                      "{} = \"{}:{}\" must end in (context, vocab) = ({}, {})",
                      to_string(output), key, info.file, info.split, d.model.context, info.vocab),
          d.where(fmt::format("model.layers[{}]", d.model.layers.size() - 1)));
    }
    return;
  }
  if (first_embedding_vocab(d)) {
    throw input_error(fmt::format("the model's first layer is an embedding, which looks up token "
                                  "ids, but {} = \"{}:{}\" is a {} split",
                                  key, info.file, info.split, io::task_name(info.task)),
                      d.model.layers[0].where);
  }
  if (d.model.context > 0) {
    throw input_error(
        fmt::format("model.context = {} is for token streams, but {} = \"{}:{}\" "
                    "is a {} split",
                    d.model.context, key, info.file, info.split, io::task_name(info.task)),
        d.where("model.context"));
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

// This rank's tile of every sample, when the model's input is split over the spatial axes.
std::optional<io::SubBox> sample_box(const nn::Sequential& model, const GridPlace& place) {
  const Layout& in = model.input_layout();
  const AxisSet spatial{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
  if ((in.split_axes() & spatial).empty()) {
    return std::nullopt;  // whole samples (a later pipeline stage's input may be split otherwise)
  }
  const Shape offset = in.local_offset(place);
  const Shape extent = in.local_shape(place);
  return io::SubBox{Shape(offset.begin() + 1, offset.end()),
                    Shape(extent.begin() + 1, extent.end())};
}

// The spatial split against the model and the rest of the grid (a located, agreed error).
void check_spatial(const deck::Deck& d, const GridPlace& place) {
  const AxisSet spatial{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
  if ((place.nontrivial() & spatial).empty()) {
    return;
  }
  const std::string split =
      fmt::format("parallel.spatial = [{}]", fmt::join(d.parallel.spatial, ", "));
  for (const GridAxis axis : {GridAxis::pipeline, GridAxis::tensor}) {
    if (place.size_of(axis) > 1) {
      throw input_error(fmt::format("{} with parallel.{} = {}: spatial decomposition combines "
                                    "with data parallelism only in this version",
                                    split, axis_name(axis), place.size_of(axis)),
                        d.where("parallel.spatial"));
    }
  }
  if (d.model.context > 0) {
    throw input_error(fmt::format("{} splits samples in space, but the model reads token windows "
                                  "(model.context = {})",
                                  split, d.model.context),
                      d.where("parallel.spatial"));
  }
  try {
    (void)nn::spatial_input_layout(d.model.input, place);
  } catch (const Error& e) {
    throw input_error(fmt::format("{}: {}", split, e.message()), d.where("parallel.spatial"));
  }
}

}  // namespace

std::unique_ptr<nn::Sequential> build_model(const deck::Deck& d,
                                            const nn::BuildContext& grid_context) {
  nn::BuildContext context = grid_context;  // shares its tensor-communication clock
  context.with_sequence_parallel(d.parallel.sequence_parallel);
  check_spatial(d, context.place());
  auto model = nn::make_model(d.model.layers, d.model.input, context, [&](size_t i) {
    return fmt::format("{}{}", d.model.layers[i].kind, i);
  });
  return model;  // the deck's parser checked that it ends whole (the loss's need)
}

std::string final_line(const RunSummary& s, deck::LossKind loss) {
  std::string line = fmt::format("final: {} steps in {:.1f} s", s.steps, s.seconds);
  if (s.final_eval) {
    const Evaluation& e = *s.final_eval;
    const bool classify = loss == deck::LossKind::softmax_cross_entropy;
    line += fmt::format(
        "; test loss {:.4f}, test {} {}", e.loss, classify ? "accuracy" : "MAE",
        classify ? fmt::format("{:.2f}%", 100.0 * e.metric) : fmt::format("{:.4g}", e.metric));
  } else {
    line += " (no data.test to evaluate)";
  }
  if (s.skipped > 0) {
    line += fmt::format("; {} step{} skipped (run.nonfinite = \"skip\")", s.skipped,
                        s.skipped == 1 ? "" : "s");
  }
  return line;
}

namespace {
// Elements of one sample's activations that `layer` keeps for its backward at `place`, its input
// placed as `in`: every leaf's output (composites: their leaves', a residual its sum too), and what
// attention keeps beside it (q/k/v, the heads' output, each row's log-sum-exp, and the whole input
// it gathered from token slices); `out` receives its output's placement.
Index activation_elements(nn::Layer& layer, const Layout& in, const GridPlace& place, Layout& out) {
  const std::string kind = layer.kind();
  if (kind == "sequential" || kind == "repeat") {
    Index sum = 0;
    Layout at = in;
    for (nn::Layer* child : layer.children()) {
      Layout next;
      sum += activation_elements(*child, at, place, next);
      at = next;
    }
    out = layer.place_input(in);
    return sum;
  }
  if (kind == "residual") {
    Layout body;
    const Index sum = activation_elements(*layer.children().at(0), in, place, body);
    out = layer.place_input(in);
    return sum + numel(out.local_shape(place));
  }
  out = layer.place_input(in);
  Index sum = numel(out.local_shape(place));
  if (const auto* a = dynamic_cast<const nn::CausalSelfAttention*>(&layer)) {
    const Index local_features = a->local_heads() * a->head_dim();
    sum += a->tokens() * (4 * local_features + a->local_heads());
    if (a->split() && numel(in.local_shape(place)) < a->tokens() * a->features()) {
      sum += a->tokens() * a->features();  // the input gathered from its token slices
    }
  }
  return sum;
}
}  // namespace

StagePlan plan_stages(const deck::Deck& d, const GridPlace& place) {
  StagePlan plan;
  const ShapeOnly shapes;  // the whole model's shapes and placements, no storage
  const auto model = build_model(d, nn::BuildContext(place));
  const std::vector<nn::PipelineUnit> units = nn::pipeline_units(d.model.layers);
  Layout at = model->input_layout();  // spatial tiles: rank 0's, the largest
  std::vector<Layout> boundary{at};   // before each unit, then after the last
  for (const nn::PipelineUnit& u : units) {
    nn::Layer* layer = &(*model)[u.layer];
    if (u.repetition >= 0) {
      layer = layer->children().at(static_cast<size_t>(u.repetition));
    }
    plan.unit_names.push_back(layer->name());
    plan.unit_kinds.push_back((*model)[u.layer].kind());
    plan.unit_flops.push_back(3.0 * nn::forward_flops(*layer, at.global_shape()));
    Index params = 0;
    Index local = 0;
    for (const nn::Parameter* p : layer->all_parameters()) {
      params += numel(p->layout.global_shape());
      local += p->value.numel();
    }
    plan.unit_params.push_back(params);
    plan.unit_local_params.push_back(local);
    Layout out;
    plan.unit_activations.push_back(activation_elements(*layer, at, place, out));
    at = out;
    boundary.push_back(at);
  }
  const int p = d.parallel.pipeline;
  if (!d.parallel.stages.empty()) {
    plan.sizes = d.parallel.stages;  // the deck's parser checked them against the units
  } else {
    try {
      plan.sizes = parallel::balance_stages(plan.unit_flops, p);
    } catch (const Error& e) {
      throw input_error(e.message(), d.where("parallel.pipeline"));
    }
  }
  size_t first = 0;
  for (const int n : plan.sizes) {
    plan.first.push_back(first);
    plan.inputs.push_back(boundary[first]);
    first += static_cast<size_t>(n);
  }
  plan.first.push_back(first);
  plan.inputs.push_back(boundary.back());
  return plan;
}

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
  if (d.run.steps > 0) {
    s.total_steps = d.run.steps;
  } else if (__builtin_mul_overflow(d.run.epochs, per_epoch, &s.total_steps)) {
    throw input_error(fmt::format("run.epochs = {} of {} steps each is more steps than a 64-bit "
                                  "count holds",
                                  d.run.epochs, per_epoch),
                      d.where("run.epochs"));
  }
  if (s.warmup_steps >= s.total_steps) {  // it would never reach optimizer.lr
    throw input_error(
        fmt::format("optimizer.schedule.warmup_steps = {} is not below the run's {} steps",
                    s.warmup_steps, s.total_steps),
        d.where("optimizer.schedule"));
  }
  optim::validate(s);
  return s;
}

namespace {
// Inspects the deck's splits against a model with `output` outputs (see check_data), verifies
// share `share` of `shares` of their data (io::verify_split: the caller agrees on the verdict),
// adds a note to `notes` for each split without checksums, and returns what each split holds, by
// its deck key (a token stream's samples are its windows of model.context).
std::map<std::string, io::SplitInfo> check_splits(const deck::Deck& d, const Shape& output,
                                                  int share, int shares,
                                                  std::vector<std::string>& notes) {
  std::map<std::string, io::SplitInfo> splits;
  for (const auto& [key, spec] :
       {std::pair<std::string, std::string>{"data.train", d.data.train},
        std::pair<std::string, std::string>{"data.test", d.data.test},
        std::pair<std::string, std::string>{"population.validation",
                                            d.population.enabled ? d.population.validation : ""}}) {
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
    try {
      const bool classify = info.task == io::Task::classification;
      (void)io::verify_split(info, {classify ? numel(output) : 0, share, shares});
    } catch (const Error& e) {
      throw input_error(fmt::format("{}: {}", key, e.message()), d.where(key));
    }
    if (const std::string name = info.lone_unchecked(); !name.empty()) {
      notes.push_back(fmt::format(
          "note: {} = \"{}\": its {} has no checksums while its {} has (was {} rewritten by "
          "another tool?), so {}'s bytes are not verified: `tessera-data checksum {}` adds them",
          key, spec, name, name == "x" ? "y" : "x", name, name, info.file));
    } else if (!info.checksummed()) {
      notes.push_back(
          fmt::format("note: {} = \"{}\" has no checksums (written by an older tessera-data), "
                      "so its bytes are not verified: `tessera-data checksum {}` adds them",
                      key, spec, info.file));
    }
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
    if (info.task == io::Task::language_modeling) {
      info.samples = io::token_windows(info.tokens, d.model.context);  // an epoch's windows
    }
    if (key == "data.train") {
      (void)run_schedule(d, info.samples);  // the run's length fits its schedule
    }
    if (key == "population.validation" && info.samples < d.parallel.trainers) {
      throw input_error(fmt::format("population.validation = \"{}\" holds {} samples: fewer "
                                    "than the {} trainers (each scores on its slice)",
                                    spec, info.samples, d.parallel.trainers),
                        d.where(key));
    }
    splits[key] = std::move(info);
  }
  return splits;
}
}  // namespace

namespace {

// The first non-finite value among the loss and this rank's parameter gradients ("" when all are
// finite).
std::string first_nonfinite(double loss, nn::Sequential& model) {
  if (!std::isfinite(loss)) {
    return fmt::format("the loss ({})", loss);
  }
  for (const nn::Parameter* p : model.all_parameters()) {
    if (p->grad.defined()) {
      if (const Index i = kernels::first_nonfinite(p->grad); i >= 0) {
        return fmt::format("the gradient of {} (element {}: {})", p->name, i, p->grad.at(i));
      }
    }
  }
  return "";
}

// The lowest rank of `comm` whose `found` is not empty speaks for all: its rank and its text on
// every rank ({-1, ""} when no rank found anything).
std::pair<int, std::string> lowest_finding(comm::Communicator& comm, const std::string& found) {
  int speaker = found.empty() ? comm.size() : comm.rank();
  comm.allreduce(comm::Buffer(&speaker, 1), {comm::ReduceOp::min})->wait();
  if (speaker == comm.size()) {
    return {-1, ""};
  }
  return {speaker, comm::broadcast_string(comm, found, speaker)};
}

}  // namespace

namespace {
// parallel.zero = 1 does not shard a weight tied across pipeline stages (an embedding on the first
// stage and a tied_head on a later one; parallel::DataParallel refuses it too, unlocated).
void check_zero_ties(const deck::Deck& d, const StagePlan& plan) {
  if (d.parallel.zero == 0 || plan.first.size() < 3) {
    return;  // no sharding, or one stage
  }
  for (size_t u = plan.first[1]; u < plan.unit_kinds.size(); ++u) {
    if (plan.unit_kinds[u] == "tied_head") {
      throw input_error(
          fmt::format("parallel.zero = 1 with a weight tied across pipeline stages ({}.wte, "
                      "which {} reuses on a later stage) is not available: use parallel.zero = 0, "
                      "or put the tied layers on one stage (parallel.stages)",
                      plan.unit_names[0], plan.unit_names[u]),
          d.where("parallel.zero"));
    }
  }
}

// The resolved deck a run saves in its folder. A population's trainer saves the deck that trains
// it alone (its hyper-parameters and seed, no [population], one trainer), into a folder of its own
// so that a run of it leaves the trainer's files as they are.
std::string standalone_deck_text(const deck::Deck& d) {
  if (d.parallel.trainers <= 1) {
    return deck::to_toml(d);
  }
  deck::Deck alone = d;
  alone.parallel.trainers = 1;
  alone.population = deck::PopulationConfig{};
  alone.run.output = d.run.output + "/alone";
  if (d.checkpoint.dir == d.run.output + "/ckpt") {
    alone.checkpoint.dir = alone.run.output + "/ckpt";
  }
  alone.checkpoint.restart.clear();
  return fmt::format(
      "# A trainer of the population in {}: this deck trains it alone, with its hyper-parameters\n"
      "# and seed (what it does with the tournament off), on as many ranks as it had; its run\n"
      "# goes to {}.\n{}",
      std::filesystem::path(d.run.output).parent_path().string(), alone.run.output,
      deck::to_toml(alone));
}

// tessera check's look at checkpoint.restart: the file a run would restart from is a checkpoint
// of this format whose metadata is sound (the root attributes, each tensor's type, checksum
// attribute and kind: the checks tessera-ckpt verify and a restart make, worded the same), of the
// deck's optimizer, holding every parameter of the model at its global shape. A run's restart
// then reads the data: checksums, non-finite values, the optimizer's and buffers' tensors.
void check_restart(const deck::Deck& d, nn::Layer& model) {
  const deck::CheckpointConfig& c = d.checkpoint;
  if (!c.enabled || c.restart.empty() || d.parallel.trainers > 1) {
    return;  // a population's trainers restart from their own folders, each checked by its run
  }
  try {
    const std::string file = io::resolve_restart(c.restart, c.dir);
    if (file.empty()) {
      return;  // restart = "auto" and nothing saved yet: the run starts at step 0
    }
    const io::File f = io::open_checkpoint(file);
    io::require_checkpoint(f);
    const std::vector<io::TensorEntry> tensors = io::checkpoint_tensors(f);
    std::vector<std::string> problems =
        io::read_header(f, tensors, make_optimizer(d.optimizer)->kind()).problems;
    std::map<std::string, std::vector<hsize_t>> stored;
    for (const io::TensorEntry& e : tensors) {
      std::optional<std::uint64_t> checksum;
      for (std::string& p : io::tensor_problems(e, checksum)) {
        problems.push_back(std::move(p));
      }
      if (io::is_model_tensor(e)) {
        stored[e.parameter_name()] = e.shape;
      }
    }
    for (const nn::Parameter* p : model.all_parameters()) {
      const Shape& shape = p->layout.global_shape();
      const auto it = stored.find(p->name);
      if (it == stored.end()) {
        problems.push_back(fmt::format("it has no parameter {}", p->name));
      } else if (const Shape theirs(it->second.begin(), it->second.end()); theirs != shape) {
        problems.push_back(fmt::format("its {} is {}, the model's is {}", p->name,
                                       to_string(theirs), to_string(shape)));
      }
    }
    if (!problems.empty()) {
      throw input_error(
          fmt::format("checkpoint {} does not fit this deck: {}", file, fmt::join(problems, "; ")));
    }
  } catch (const Error& e) {
    throw input_error(e.message(), d.where("checkpoint.restart"));
  }
}

int parts_per_rank(const deck::Deck& d, int data);  // below

// Every BatchNorm of `layer` (its children's too), in model order.
void batch_norms(nn::Layer& layer, std::vector<const nn::BatchNormNd*>& out) {
  if (const auto* bn = dynamic_cast<const nn::BatchNormNd*>(&layer)) {
    out.push_back(bn);
  }
  for (nn::Layer* child : layer.children()) {
    batch_norms(*child, out);
  }
}

// A BatchNorm in training takes its statistics over the values of each channel in a micro-batch
// (sample group) of a data rank's share (of every data rank's micro-batch i, with sync), and needs
// more than one: a batch that leaves some micro-batch a single sample of a 1 x 1 map fails in the
// middle of the run. Refused here, for every batch of an epoch of `samples` samples on `data` data
// ranks, before anything trains.
void check_batch_norms(const deck::Deck& d, nn::Layer& model, Index samples, int data) {
  std::vector<const nn::BatchNormNd*> norms;
  batch_norms(model, norms);
  if (norms.empty() || samples <= 0) {
    return;
  }
  const int parts = std::max(1, parts_per_rank(d, data));
  const Index full = samples >= d.data.batch ? d.data.batch : 0;     // 0: no whole batch
  const Index last = d.data.drop_last ? 0 : samples % d.data.batch;  // 0: no short one
  for (const bool sync : {false, true}) {
    // The fewest samples (> 0) the statistics of one normalisation span, over the epoch's batches.
    Index fewest = 0;
    Index in_batch = 0;
    for (const Index b : {full, last}) {
      for (int i = 0; i < parts && b > 0; ++i) {
        Index across = 0;  // micro-batch i over the data ranks
        for (int r = 0; r < data; ++r) {
          const Index n = block_range(block_range(b, data, r).count, parts, i).count;
          across += n;
          if (!sync && n > 0 && (fewest == 0 || n < fewest)) {
            fewest = n;
            in_batch = b;
          }
        }
        if (sync && across > 0 && (fewest == 0 || across < fewest)) {
          fewest = across;
          in_batch = b;
        }
      }
    }
    for (const nn::BatchNormNd* bn : norms) {
      const Shape& in = bn->input_sample();
      const Index per_sample = in.empty() ? 0 : numel(in) / in[0];
      if (bn->options().sync != sync || fewest == 0 || fewest * per_sample > 1) {
        continue;
      }
      const bool short_last = in_batch == last && last != full;
      const char* holder = parts > 1
                               ? (d.parallel.deterministic ? "a sample group" : "a micro-batch")
                           : data > 1 && !sync ? "a data rank's share"
                                               : "the batch";
      throw input_error(
          fmt::format("{} '{}' (input {}) would take its batch statistics over 1 value per "
                      "channel: {} leaves {} 1 sample{}; training needs more than one ({})",
                      bn->kind(), bn->name(), to_string(in),
                      short_last ? fmt::format("the short last batch of each epoch ({} of {} "
                                               "samples at data.batch = {})",
                                               last, samples, d.data.batch)
                                 : fmt::format("data.batch = {}", d.data.batch),
                      holder, data > 1 ? fmt::format(" on {} data ranks", data) : "",
                      short_last ? "data.drop_last = true or another data.batch avoids it"
                                 : "a larger data.batch, or fewer data ranks or micro-batches, "
                                   "avoids it"),
          d.where("data.batch"));
    }
  }
}
}  // namespace

std::vector<std::string> check_data(const deck::Deck& d, int share, int shares) {
  deck::check_folders(d);
  // The model at tensor rank 0's place of a one-data-rank grid: shapes and splits as any rank's.
  comm::GridSpec spec = grid_spec(d);
  spec.data = 1;
  spec.trainers = 1;
  const ShapeOnly shapes;  // sizes only: a deck too large for this machine is refused, not built
  std::vector<std::string> notes;
  const auto model = build_model(d, nn::BuildContext(comm::grid_place(spec, 0)));
  const auto splits = check_splits(d, model->output_shape(), share, shares, notes);
  check_batch_norms(d, *model, splits.at("data.train").samples, resolve_grid(d, shares).data);
  check_restart(d, *model);
  if (d.parallel.zero > 0 && spec.pipeline > 1) {
    check_zero_ties(d, plan_stages(d, comm::grid_place(spec, 0)));
  }
  return notes;
}

namespace {

// The deck key a grid that does not fit is blamed on: the first grid size the deck sets.
std::string grid_key(const deck::Deck& d) {
  for (const char* k : {"parallel.data", "parallel.tensor", "parallel.pipeline", "parallel.spatial",
                        "parallel.trainers"}) {
    if (d.locations.count(k) != 0) {
      return k;
    }
  }
  return "parallel";
}

// The micro-batches (or, in deterministic mode, sample groups) a data rank's share of the batch is
// cut into, on `data` data-parallel ranks.
int parts_per_rank(const deck::Deck& d, int data) {
  return d.parallel.deterministic ? d.parallel.sample_groups / data : d.data.micro_batches;
}

// Samples of one micro-batch (or sample group) of a data rank's share of the batch.
Index d_micro_size(const deck::Deck& d, const comm::GridSpec& spec) {
  const Index share = d.data.batch / spec.data;
  return share / std::max(1, parts_per_rank(d, spec.data));
}

// The grid's error (comm::resolve_grid's words), located in the deck.
Error located_grid_error(const deck::Deck& d, const Error& e) {
  Error located = input_error(e.message(), d.where(grid_key(d)));
  located.with_exit_code(e.exit_code());
  if (e.on_all_ranks()) {
    located.mark_on_all_ranks();
  }
  return located;
}

// The global batch against the resolved grid's data axis.
void check_batch(const deck::Deck& d, const comm::GridSpec& spec) {
  const int data = spec.data;
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
  const Index share = d.data.batch / data;
  const int parts = parts_per_rank(d, data);
  if (spec.pipeline > 1 && d.data.batch % data != 0) {
    throw input_error(
        fmt::format("data.batch = {} is not a multiple of the {} data-parallel ranks (shares of {} "
                    "and {} samples): the micro-batches of a pipeline must be equal on every rank",
                    d.data.batch, data, share + 1, share),
        d.where("data.batch"));
  }
  if (spec.pipeline > 1 && share % parts != 0) {
    const bool groups = d.parallel.deterministic;
    throw input_error(
        fmt::format("{} = {} does not divide the {} sample(s) of each data-parallel rank's share "
                    "of data.batch = {} ({} data rank(s)): the micro-batches of a pipeline must "
                    "be equal",
                    groups ? "parallel.sample_groups per data rank" : "data.micro_batches", parts,
                    share, d.data.batch, data),
        d.where(groups ? "parallel.sample_groups" : "data.micro_batches"));
  }
  if (d.data.micro_batches > d.data.batch / data) {
    throw input_error(fmt::format("data.micro_batches = {} is more than the {} sample(s) of each "
                                  "data-parallel rank's share of data.batch = {}",
                                  d.data.micro_batches, d.data.batch / data, d.data.batch),
                      d.where("data.micro_batches"));
  }
}

}  // namespace

comm::GridSpec resolve_grid(const deck::Deck& d, int world_size) {
  if (d.parallel.trainers > world_size) {
    throw input_error(
        fmt::format("parallel.trainers = {}: a population of {} trainers needs {} "
                    "ranks at least (one per trainer), but the job has {}",
                    d.parallel.trainers, d.parallel.trainers, d.parallel.trainers, world_size),
        d.where("parallel.trainers"));
  }
  comm::GridSpec spec;
  try {
    spec = comm::resolve_grid(grid_spec(d), world_size);
  } catch (const Error& e) {
    throw located_grid_error(d, e);
  }
  check_batch(d, spec);
  return spec;
}

Trainer::Trainer(const deck::Deck& deck, MPI_Comm world, Reporter* reporter)
    : m_deck(deck), m_reporter(reporter != nullptr ? reporter : &m_silent) {
  try {
    m_grid = std::make_unique<comm::ProcessGrid>(world, grid_spec(deck));
  } catch (const Error& e) {
    if (!e.on_all_ranks()) {
      throw;  // this rank's own failure: main() aborts the job
    }
    throw located_grid_error(deck, e);  // agreed by every rank: located in the deck
  }
  m_trainer = &m_grid->trainer();
  m_data = &m_grid->axis(GridAxis::data);
  comm::watchdog::set_check_signatures(deck.run.check_collectives);
  m_watchdog = std::make_unique<comm::watchdog::Scope>(m_trainer->mpi_comm(), deck.run.watchdog_s);
  comm::agree(*m_trainer, [&] {
    check_batch(deck, m_grid->spec());
    // refuses a model too large for the machine
    (void)describe(deck, m_trainer->size() * m_grid->trainers());
  });
  kernels::set_blas_threads(deck.run.blas_threads);
  kernels::set_matmul_precision(kernels::matmul_precision_named(deck.run.precision));
  build(m_grid->spec());
}

void Trainer::build(const comm::GridSpec& spec) {
  const deck::Deck& deck = m_deck;
  StagePlan plan;  // pipeline > 1: the cut, built once for the stage and the stage line
  comm::agree(*m_trainer, [&] {
    if (leader()) {
      deck::check_folders(deck);  // the deck's own mistakes before the data's
    }
    Shape output;
    if (spec.pipeline > 1) {  // this rank's stage only: it never allocates another's weights
      plan = plan_stages(deck, m_grid->place());
      check_zero_ties(deck, plan);
      const auto s = static_cast<size_t>(m_grid->place().coord_of(GridAxis::pipeline));
      nn::BuildContext context(*m_grid);
      context.with_sequence_parallel(deck.parallel.sequence_parallel);
      m_model = nn::make_stage(
          deck.model.layers, deck.model.input, plan.inputs[s].global_shape(), plan.inputs[s],
          plan.first[s], plan.first[s + 1], context,
          [&](size_t i) { return fmt::format("{}{}", deck.model.layers[i].kind, i); });
      output = plan.inputs.back().global_shape();
    } else {
      m_model = build_model(deck, nn::BuildContext(*m_grid));
      output = m_model->output_shape();
    }
    std::vector<std::string> notes;
    m_splits = check_splits(deck, output, m_trainer->rank(), m_trainer->size(), notes);
    check_batch_norms(deck, *m_model, train_split().samples, m_data->size());
    for (size_t i = 0; leader() && i < notes.size(); ++i) {
      m_reporter->warning(notes[i]);
    }
    io::ReaderOptions ro;
    ro.batch = deck.data.batch;
    ro.seed = deck.run.seed;
    ro.shuffle = deck.data.shuffle;
    ro.drop_last = deck.data.drop_last;
    ro.cache = deck.data.cache;
    ro.prefetch = deck.data.prefetch;
    ro.data_rank = m_data->rank();  // the ranks of one data coordinate read the same samples
    ro.data_size = m_data->size();
    ro.context = deck.model.context;
    ro.expect_sample_shape = deck.model.input;
    ro.box = sample_box(*m_model, m_grid->place());  // a spatial tile: read only it (hyperslab)
    m_train = std::make_unique<io::DatasetReader>(deck.data.train, ro);
    m_schedule = run_schedule(deck, train_split().samples);
    if (leader()) {
      // A folder this run writes: made, and locked to this run (a warning when it takes over the
      // lock of a run that is gone). Folders made here and still empty when the trainer ends (a
      // refused restart) are removed again.
      const auto lock_folder = [&](const std::string& folder, const std::string& key) {
        std::string note;
        auto lock = std::make_unique<RunLock>(folder, key, &note, deck.where(key));
        if (!note.empty()) {
          m_reporter->warning(note);
        }
        return lock;
      };
      m_lock = lock_folder(deck.run.output, "run.output");  // one run per folder
      // A checkpoint folder elsewhere is locked too: two runs sharing one would prune and
      // overwrite each other's checkpoints.
      std::error_code ec;
      const std::string& dir = deck.checkpoint.dir;
      if (deck.checkpoint.enabled && std::filesystem::weakly_canonical(dir, ec) !=
                                         std::filesystem::weakly_canonical(deck.run.output, ec)) {
        m_ckpt_lock = lock_folder(dir, "checkpoint.dir");
      }
      m_metrics_path = deck.run.output + "/metrics.jsonl";
    }
  });
  m_model->initialize(deck.run.seed);
  if (spec.pipeline == 1) {
    plan = plan_stages(deck, m_grid->place());
  }
  m_flops_per_sample = model_flops(plan);
  m_pipe = &m_grid->axis(GridAxis::pipeline);
  m_sums = &m_grid->axes(AxisSet{GridAxis::data, GridAxis::pipeline});
  m_pipeline = std::make_unique<parallel::Pipeline>(
      *m_model, m_pipe, m_grid->place(), parallel::schedule_from_name(deck.parallel.schedule));
  m_model->set_needs_input_grad(!m_pipeline->first());  // the first stage's input is data
  if (spec.pipeline > 1) {  // between layers, the transfers to and from the neighbours move on
    m_model->context().set_poll([this] { m_pipeline->progress(); });
  }
  // A model ending split over the tensor axis (a vocabulary-parallel head): its loss is summed
  // over the tensor ranks, which never gather the logits.
  const Layout& out = m_model->output_layout();
  const int last = out.rank() - 1;
  if (m_pipeline->last() && last >= 0 && out.axis_of(last) == GridAxis::tensor &&
      m_grid->place().size_of(GridAxis::tensor) > 1) {
    m_loss_placement.vocab_axis = &m_grid->axis(GridAxis::tensor);
    m_loss_placement.offset = out.local_offset(m_grid->place())[static_cast<size_t>(last)];
    m_loss_placement.classes = out.global_shape().back();
  }
  parallel::DataParallelOptions dpo;
  dpo.bucket_mb = deck.parallel.bucket_mb;
  dpo.reduce = parallel::reduce_from_name(deck.parallel.reduce);
  dpo.zero = deck.parallel.zero == 1;
  dpo.groups_per_rank = deck.parallel.deterministic ? deck.parallel.sample_groups / spec.data : 0;
  m_micro_batches = deck.parallel.deterministic ? dpo.groups_per_rank : deck.data.micro_batches;
  comm::agree(*m_trainer, [&] {  // also checks that every rank built the same model
    m_dp = std::make_unique<parallel::DataParallel>(*m_model, *m_grid, dpo);
  });
  if (leader()) {
    for (const std::string& w : m_dp->warnings()) {
      m_reporter->warning(w);
    }
  }
  if (m_trainer->size() > 1) {
    say(fmt::format("grid: {} ranks = {}", m_trainer->size(), comm::to_string(spec)));
  }
  if (spec.pipeline > 1) {
    std::vector<std::string> cut;
    for (size_t k = 0; k < plan.sizes.size(); ++k) {
      cut.push_back(fmt::format("{}..{}", plan.unit_names[plan.first[k]],
                                plan.unit_names[plan.first[k + 1] - 1]));
    }
    say(
        fmt::format("pipeline: {} stages ({}), {}, {} micro-batches of {} per step; bubble {:.0f}% "
                    "in theory",
                    spec.pipeline, fmt::join(cut, " | "), deck.parallel.schedule, m_micro_batches,
                    d_micro_size(deck, spec),
                    100.0 * parallel::bubble_fraction(spec.pipeline, m_micro_batches)));
  }
  if (m_data->size() > 1) {
    std::string how = "with MPI's non-blocking allreduce";
    if (deck.parallel.deterministic) {
      how = "in sample-group order (deterministic)";
    } else if (m_dp->shared_nodes() > 1) {
      how = fmt::format(
          "through shared memory within each of {} nodes and MPI between them (hierarchical)",
          m_dp->shared_nodes());
    } else if (m_dp->shared_reduction()) {
      how = "through shared memory (one node)";
    }
    say(fmt::format("data parallel: {} ranks, {} gradient bucket{}, summed {}{}", m_data->size(),
                    m_dp->bucket_count(), m_dp->bucket_count() == 1 ? "" : "s", how,
                    dpo.zero ? ", ZeRO-1" : ""));
  }
  m_model->set_backward_hook([this](nn::Layer& layer) { m_dp->on_backward(layer); });
  m_optimizer = make_optimizer(deck.optimizer);
  if (deck.checkpoint.enabled && !deck.checkpoint.restart.empty()) {
    restart();
  }
  // The folder's deck and metrics once a restart is accepted: a refused one leaves those of the run
  // it would have resumed as they were.
  comm::agree(*m_trainer, [&] {
    if (leader()) {
      write_text(deck.run.output + "/deck.toml", standalone_deck_text(deck), std::ios::trunc);
      if (m_start_step == 0) {
        write_text(m_metrics_path, "", std::ios::trunc);  // a restarted run appends to its metrics
      }
    }
  });
  if (m_start_step > 0) {
    log_line(fmt::format(R"({{"kind": "restart", "step": {}}})", m_start_step));
  }
}

Trainer::~Trainer() {
  m_train.reset();
}

void Trainer::say(const std::string& line) const {
  if (leader()) {
    m_reporter->info(line);
  }
}

void Trainer::log_line(const std::string& json) {
  if (leader() && !m_metrics_path.empty() && m_write_failure.empty()) {
    try {
      write_text(m_metrics_path, json + "\n", std::ios::app);
    } catch (const Error& e) {
      m_write_failure = e.message();  // agreed at the next step boundary (agree_on_step)
    }
  }
}

void Trainer::check_writes() {
  comm::agree(*m_trainer, [&] {
    if (!m_write_failure.empty()) {
      throw write_error(m_write_failure +
                        "; the run stops (resume it with checkpoint.restart = "
                        "\"auto\" once there is room)");
    }
  });
}

Trainer::StepAgreement Trainer::agree_on_step(bool save_due) {
  // Signals reach the ranks at slightly different times, and rank 0's clock decides the timed
  // checkpoints: one allreduce over the whole trainer agrees on both at the step boundary.
  if (m_ckpt_lock) {
    m_ckpt_lock->heartbeat();
  }
  if (m_lock) {
    m_lock->heartbeat();
  }
  int flags[3] = {signals::stop_signal(), leader() && save_due ? 1 : 0,
                  m_write_failure.empty() ? 0 : 1};
  m_trainer->allreduce(comm::Buffer(flags, 3), {comm::ReduceOp::max})->wait();
  if (flags[2] != 0) {
    check_writes();  // the metrics could not be written: every rank stops with rank 0's words
  }
  if (flags[0] != 0) {
    signals::note_stop_signal(flags[0]);
  }
  return {flags[0], flags[1] != 0};
}

void Trainer::restart() {
  const deck::CheckpointConfig& c = m_deck.checkpoint;
  std::string file;
  std::string note;
  comm::agree(*m_trainer, [&] { file = io::resolve_restart(c.restart, c.dir, &note); });
  if (file.empty()) {
    say(fmt::format("restart: no checkpoint in {} yet: starting from step 0", c.dir));
    return;
  }
  // With `latest` lost, the newest checkpoint of the folder that loads; older ones in turn.
  std::vector<std::string> candidates{file};
  if (!note.empty()) {
    if (leader()) {
      m_reporter->warning("restart: " + note);
    }
    candidates = io::checkpoints_in(c.dir);
  }
  io::CheckpointInfo info;
  for (size_t k = 0; k < candidates.size(); ++k) {
    file = candidates[k];
    try {
      comm::agree(*m_trainer, [&] {
        try {
          info = io::load_checkpoint(file, state_registry(), m_optimizer->kind(), *m_trainer);
        } catch (const Error& e) {  // name the deck key that led here
          throw input_error(e.message(), m_deck.where("checkpoint.restart"));
        }
      });
      break;
    } catch (const Error& e) {
      if (k + 1 == candidates.size() || !e.on_all_ranks()) {
        throw;
      }
      if (leader()) {
        m_reporter->warning(fmt::format("restart: {}; trying the next older checkpoint, {}",
                                        e.message(), candidates[k + 1]));
      }
    }
  }
  m_resumed_from = file;
  const deck::DeckText saved_deck(info.deck);  // the checkpoint's run's deck
  // Another data.batch than the checkpoint's run: its cursor counts batches of the old size. The
  // epoch's position in samples (the permutation does not depend on the batch) goes on in
  // batches of the new size, from the batch that holds it. (A cursor beyond the old epoch is
  // left as it is, for the check below to refuse.)
  if (const std::optional<std::int64_t> saved = saved_deck.integer("data.batch");
      saved && *saved > 0 && *saved != m_deck.data.batch && info.cursor.batch > 0 &&
      info.cursor.batch <= train_split().samples / *saved) {
    const std::int64_t position = info.cursor.batch * *saved;  // <= the epoch's samples
    const io::Cursor moved{info.cursor.epoch, position / m_deck.data.batch};
    const std::int64_t again = position % m_deck.data.batch;
    info.cursor =
        moved.batch < m_train->batches_per_epoch() ? moved : io::Cursor{moved.epoch + 1, 0};
    if (leader()) {
      m_reporter->warning(fmt::format(
          "restart: data.batch = {}, the checkpoint's run used {}: its epoch was {} samples in; "
          "training goes on from batch {} of {}{}",
          m_deck.data.batch, *saved, position, info.cursor.batch, m_deck.data.batch,
          again > 0 && info.cursor.batch == moved.batch
              ? fmt::format(" ({} sample{} of the epoch read again)", again, again == 1 ? "" : "s")
              : ""));
    }
  }
  // Another seed or training split than the checkpoint's run: allowed (fine-tuning, a new order),
  // but the run is no longer the one the checkpoint's would have been: said.
  if (leader() && info.seed != m_deck.run.seed) {
    m_reporter->warning(fmt::format(
        "restart: run.seed = {}, the checkpoint's run used {}: the order of the samples, the "
        "dropout masks and all else drawn from here on follow the new seed",
        m_deck.run.seed, info.seed));
  }
  if (const std::optional<std::string> saved = saved_deck.string("data.train");
      leader() && saved && *saved != m_deck.data.train) {
    m_reporter->warning(fmt::format(
        "restart: data.train = \"{}\", the checkpoint's run trained on \"{}\": its data cursor "
        "(epoch {}, batch {}) goes on in the new split",
        m_deck.data.train, *saved, info.cursor.epoch, info.cursor.batch));
  }
  // Other optimizer, schedule or model settings (a new learning rate, warm-up, dropout): allowed
  // (fine-tuning), and said in one line. (A population's trainers restart with the hyper-parameters
  // of their lineage, which their own restart replays.)
  if (leader() && m_deck.parallel.trainers == 1) {
    const std::vector<std::string> changed = saved_deck.changed(
        deck::DeckText(deck::to_toml(m_deck)), {"optimizer", "model", "data.shuffle"});
    if (!changed.empty()) {
      m_reporter->warning(
          fmt::format("restart: the deck changes what the checkpoint's run "
                      "trained with: {}; training goes on with the deck's values",
                      fmt::join(changed, ", ")));
    }
  }
  const std::int64_t batches = m_train->batches_per_epoch();
  // data.drop_last = true where the checkpoint's run kept the short last batch: a cursor at that
  // batch, which this run drops, goes on at the next epoch.
  const std::optional<bool> saved_drop = saved_deck.boolean("data.drop_last");
  const bool drop_changed = saved_drop && *saved_drop != m_deck.data.drop_last;
  if (drop_changed && m_deck.data.drop_last && info.cursor.batch == batches) {
    info.cursor = io::Cursor{info.cursor.epoch + 1, 0};
    if (leader()) {
      m_reporter->warning(
          fmt::format("restart: data.drop_last = true, the checkpoint's run kept the short last "
                      "batch, where its cursor was: training goes on from epoch {}",
                      info.cursor.epoch + 1));
    }
  }
  comm::agree(*m_trainer, [&] {
    if (info.cursor.batch >= batches) {
      throw input_error(
          fmt::format("checkpoint: {}: its data cursor (epoch {}, batch {}) is outside an epoch of "
                      "data.train, which has {} batches of {}{} (was it written with another "
                      "dataset, batch or drop_last?)",
                      file, info.cursor.epoch, info.cursor.batch, batches, m_deck.data.batch,
                      m_deck.data.drop_last ? ", the short last one dropped" : ""),
          m_deck.where("checkpoint.restart"));
    }
  });
  // run.epochs counts epochs, not steps: the run ends where the data cursor ends its last epoch.
  // With another batch (or drop_last) than the checkpoint's run, the steps left are not the
  // difference of the two runs' step counts.
  if (m_deck.run.steps <= 0) {
    const std::int64_t epochs_left =
        std::max<std::int64_t>(0, m_deck.run.epochs - info.cursor.epoch);
    m_schedule.total_steps =
        info.step + std::max<std::int64_t>(0, epochs_left * batches - info.cursor.batch);
  }
  // Another length than the checkpoint's run's (run.steps changed, or run.epochs of other
  // batches): a cosine schedule decays over the new length from here on.
  if (leader() && info.total_steps != total_steps() &&
      m_schedule.kind == optim::ScheduleKind::cosine && info.step < total_steps()) {
    optim::ScheduleOptions theirs = m_schedule;
    theirs.total_steps = info.total_steps;
    const bool comparable = info.total_steps > theirs.warmup_steps && info.step < info.total_steps;
    m_reporter->warning(fmt::format(
        "restart: the run has {} steps, the checkpoint's run {}: the cosine learning-rate "
        "schedule decays over the new length from here on (step {}: lr {:.4g}{})",
        total_steps(), info.total_steps, info.step + 1, optim::learning_rate(m_schedule, info.step),
        comparable ? fmt::format(", where the checkpoint's run had {:.4g}",
                                 optim::learning_rate(theirs, info.step))
                   : ""));
  }
  m_optimizer->set_steps(info.optimizer_steps);
  m_start_step = info.step;
  m_train->seek(info.cursor);
  say(fmt::format(
      "restart: from {} at step {} (saved on {} rank{}: {}, zero {}){}", file, info.step,
      info.ranks, info.ranks == 1 ? "" : "s", printable(info.grid), info.zero,
      info.step > total_steps()
          ? fmt::format("; it is past the run's {} step{}: nothing is left to train "
                        "(the model stays at step {}; a run.steps above {} trains on "
                        "from it, another run.output or checkpoint.restart=\"\" "
                        "starts afresh)",
                        total_steps(), total_steps() == 1 ? "" : "s", info.step, info.step)
      : info.step == total_steps()
          ? fmt::format("; the run has {} steps: nothing is left to train (another "
                        "run.output or checkpoint.restart=\"\" starts afresh)",
                        total_steps())
          : ""));
}

const io::SplitInfo& Trainer::split(const std::string& key) const {
  const auto it = m_splits.find(key);
  TESSERA_CHECK(it != m_splits.end(), "split: the deck names no split under {}", key);
  return it->second;
}

void Trainer::resume_at(std::int64_t step) {
  TESSERA_CHECK(step >= 0 && step < total_steps(), "resume_at: step {} outside the run's {} steps",
                step, total_steps());
  m_start_step = step;
  m_optimizer->set_steps(step);
}

void Trainer::measure_peak() {
  const bool measured = m_deck.run.peak_tflops <= 0.0;
  double peak = m_deck.run.peak_tflops * 1e12;
  if (measured) {
    m_trainer->barrier()->wait();  // every rank's at once: the cores shared as in training
    peak = kernels::measure_gemm_flops();
  }
  m_trainer->allreduce(comm::Buffer(&peak, 1))->wait();
  m_peak_flops = peak;
  const int ranks = m_trainer->size();
  const std::string device = device_description();  // rank 0's: a GPU per rank has its own index
  say(fmt::format(
      "device: {}{}", device,
      ranks == 1 ? std::string()
      : std::string(build_device()) == "cuda"
          ? fmt::format(" on rank 0; a GPU per rank, by node-local rank ({} ranks)", ranks)
          : fmt::format(", on each of {} ranks", ranks)));
  say(fmt::format(
      "model: {} per sample (forward and backward); peak {} for {} rank{} ({})",
      flops_text(m_flops_per_sample), flops_text(peak, "FLOP/s"), ranks, ranks == 1 ? "" : "s",
      measured ? fmt::format("a {} GEMM of 1024³ measured on each; run.peak_tflops sets it",
                             m_deck.run.precision)
               : "run.peak_tflops per rank"));
  log_line(fmt::format(
      R"({{"kind": "flops", "per_sample": {:.6g}, "peak": {:.6g}, "ranks": {}, "how": "{}", )"
      R"("device": {}}})",
      m_flops_per_sample, peak, ranks, measured ? "measured" : "run.peak_tflops",
      json_string(device)));
}

parallel::StateRegistry Trainer::state_registry() {
  return parallel::gather_stages(m_dp->registry(*m_optimizer), *m_pipe);
}

void Trainer::save(std::int64_t steps_done, const char* why, const std::string& dir, int keep) {
  if (m_deck.run.check_replicas > 0) {
    check_replicas(steps_done);  // never a checkpoint of one replica among several that differ
  }
  // Never a checkpoint of non-finite weights marked good: refused before anything is written
  // (the previous checkpoint and `latest` stay as they are).
  comm::agree(*m_trainer, [&] {
    for (const nn::Parameter* p : m_model->all_parameters()) {
      if (const Index i = kernels::first_nonfinite(p->value); i >= 0) {
        throw input_error(fmt::format(
            "step {}: parameter {} holds a non-finite value (element {}: {}) on rank {}: the "
            "checkpoint is not written, {}",
            steps_done, p->name, i, p->value.at(i), m_trainer->rank(),
            io::describe_last_good(dir)));
      }
    }
  });
  io::CheckpointInfo info;
  info.step = steps_done;
  info.total_steps = total_steps();
  info.cursor = m_train->cursor();
  info.seed = m_deck.run.seed;
  info.deck = deck::to_toml(m_deck);
  info.grid = comm::to_string(m_grid->spec());
  info.ranks = m_trainer->size();
  info.data_size = m_data->size();
  info.zero = m_deck.parallel.zero;
  info.optimizer = m_optimizer->kind();
  info.optimizer_steps = m_optimizer->steps();
  const io::SaveReport r = io::save_checkpoint(dir, info, state_registry(), *m_trainer, keep);
  say(fmt::format("checkpoint: step {} -> {} ({:.1f} MiB in {:.2f} s, {:.0f} MB/s; {})", steps_done,
                  r.file, r.bytes / 1048576.0, r.seconds, r.bytes / std::max(r.seconds, 1e-9) / 1e6,
                  why));
  log_line(fmt::format(
      R"({{"kind": "checkpoint", "step": {}, "file": {}, "bytes": {:.0f}, "seconds": {:.4f}, "why": "{}"}})",
      steps_done, json_string(r.file), r.bytes, r.seconds, why));
}

std::vector<Tensor> Trainer::state_tensors(bool optimizer_state) {
  m_dp->sync_parameters();
  std::vector<Tensor> out;
  const parallel::StateRegistry registry = m_dp->registry(*m_optimizer);
  for (const parallel::StateEntry& e : registry.entries()) {
    if (optimizer_state || e.kind != parallel::StateKind::optimizer_state) {
      out.push_back(e.local);
    }
  }
  return out;
}

std::vector<Tensor> Trainer::buffer_tensors() {
  std::vector<Tensor> out;
  const parallel::StateRegistry registry = m_dp->registry(*m_optimizer);
  for (const parallel::StateEntry& e : registry.entries()) {
    if (e.kind == parallel::StateKind::buffer) {
      out.push_back(e.local);
    }
  }
  return out;
}

std::unique_ptr<io::DatasetReader> Trainer::open_reader(const std::string& spec,
                                                        io::ReaderOptions ro) {
  ro.prefetch = 2;
  ro.data_rank = m_data->rank();  // the ranks of one data coordinate read the same samples
  ro.data_size = m_data->size();
  ro.context = m_deck.model.context;
  ro.expect_sample_shape = m_deck.model.input;
  ro.box = sample_box(*m_model, m_grid->place());  // a spatial tile: read only it (hyperslab)
  std::unique_ptr<io::DatasetReader> reader;
  comm::agree(*m_trainer, [&] { reader = std::make_unique<io::DatasetReader>(spec, ro); });
  return reader;
}

Index Trainer::recalibrate_norms(std::int64_t batches) {
  if (!m_dp->has_buffers() || batches <= 0) {
    return 0;
  }
  m_dp->sync_parameters();
  io::ReaderOptions ro;
  ro.batch = m_deck.data.batch;
  ro.seed = m_deck.run.seed;  // a shuffled sample of the training split, the same every call
  ro.shuffle = true;
  const std::unique_ptr<io::DatasetReader> reader = open_reader(m_deck.data.train, ro);
  const std::int64_t n = std::min<std::int64_t>(batches, reader->batches_per_epoch());
  nn::ForwardOptions fo;
  fo.training = true;
  fo.seed = m_deck.run.seed;
  Index samples = 0;
  for (std::int64_t b = 0; b < n; ++b) {
    const io::Batch batch = reader->next();
    fo.sample_offset = batch.offset;
    fo.step = static_cast<std::uint64_t>(b);
    fo.stats_momentum = 1.0F / static_cast<float>(b + 1);
    (void)m_pipeline->forward(batch.x, static_cast<Index>(batch.ids.size()), fo);
    samples += batch.global_size;
  }
  m_dp->average_buffers();
  return samples;
}

void Trainer::save_to(const std::string& dir, const char* why, int keep) {
  save(total_steps(), why, dir, keep);
}

void Trainer::save_again(const char* why) {
  TESSERA_CHECK(m_start_step > 0 && m_deck.checkpoint.enabled,
                "save_again: the run did not resume from a checkpoint");
  save(m_start_step, why, m_deck.checkpoint.dir, m_deck.checkpoint.keep);
}

void Trainer::retune(const deck::Deck& deck) {
  m_deck.optimizer = deck.optimizer;
  m_deck.locations = deck.locations;
  const std::int64_t total = m_schedule.total_steps;  // a restart may have set it (run.epochs)
  m_schedule = run_schedule(m_deck, train_split().samples);
  m_schedule.total_steps = total;
  if (auto* sgd = dynamic_cast<optim::Sgd*>(m_optimizer.get())) {
    sgd->set_options(sgd_options(m_deck.optimizer));
  } else if (auto* adamw = dynamic_cast<optim::AdamW*>(m_optimizer.get())) {
    adamw->set_options(adamw_options(m_deck.optimizer));
  }
}

Evaluation Trainer::evaluate(const std::string& spec, std::optional<Range> subset, bool stoppable) {
  m_dp->sync_parameters();
  io::ReaderOptions ro;
  ro.subset = subset;
  // In batches of the training's micro-batch on every data rank: the layers' buffers of that shape
  // serve the evaluation too, and its activations take no more memory than training's (a larger
  // batch multiplied a language model's by up to 256 / batch: 13 GB for a GPT-2 small window).
  const int data = m_data->size();
  const Index share = std::max<Index>(1, m_deck.data.batch / data);
  ro.batch = std::max<Index>(1, share / std::max(1, parts_per_rank(m_deck, data))) * data;
  ro.shuffle = false;
  const std::unique_ptr<io::DatasetReader> reader = open_reader(spec, ro);
  // loss · global batch, metric sum, samples, what the metric averages over, Σ of each sample's
  // loss squared (regression); then for regression per target Σt, Σt², Σ(p - t)².
  constexpr size_t kFixed = 5;
  std::vector<double> sums(kFixed, 0.0);
  nn::ForwardOptions fo;
  fo.training = false;
  for (std::int64_t b = 0; b < reader->batches_per_epoch(); ++b) {
    if (stoppable) {
      int signal = signals::stop_signal();
      m_trainer->allreduce(comm::Buffer(&signal, 1), {comm::ReduceOp::max})->wait();
      if (signal != 0) {
        signals::note_stop_signal(signal);
        Evaluation stopped;
        stopped.split = spec;
        stopped.stopped_by = signal;
        return stopped;
      }
    }
    const io::Batch batch = reader->next();
    fo.sample_offset = batch.offset;
    const Tensor output =
        m_pipeline->forward(batch.x, static_cast<Index>(batch.ids.size()), fo);  // every stage
    if (!m_pipeline->last() || batch.ids.empty()) {
      continue;  // (a data rank's share of the last batch may be empty)
    }
    const BatchLoss l = batch_loss(m_deck.model.loss, output, batch, m_loss_placement);
    sums[0] += l.out.loss * static_cast<double>(batch.global_size);
    sums[1] += l.metric_sum;
    sums[2] += static_cast<double>(batch.ids.size());
    sums[3] += l.scored;
    sums[4] += l.loss_sq_sum;
    if (m_deck.model.loss == deck::LossKind::mse) {
      const Index targets = batch.targets.numel() / std::max<Index>(1, batch.targets.dim(0));
      sums.resize(kFixed + 3 * static_cast<size_t>(targets), 0.0);
      const std::vector<float> p = output.to_host();
      const std::vector<float> t = batch.targets.to_host();
      for (size_t i = 0; i < t.size(); ++i) {
        const size_t j = kFixed + 3 * (i % static_cast<size_t>(targets));
        const auto ti = static_cast<double>(t[i]);
        const double err = static_cast<double>(p[i]) - ti;
        sums[j] += ti;
        sums[j + 1] += ti * ti;
        sums[j + 2] += err * err;
      }
    }
  }
  if (m_deck.model.loss == deck::LossKind::mse) {
    // The same length on every rank (a rank without a batch, or not the last stage, has zeros).
    sums.resize(kFixed + 3 * static_cast<size_t>(train_split().targets), 0.0);
  }
  // Over the data axis (the ranks of one data coordinate computed the same samples) and the
  // pipeline's (the last stage's sums; the others' are zero).
  m_sums->allreduce(comm::Buffer(sums))->wait();
  Evaluation e;
  e.split = spec;
  e.samples = static_cast<Index>(sums[2]);
  e.loss = sums[0] / sums[2];
  e.metric = sums[1] / sums[2];
  e.scored = sums[3];
  if (m_deck.model.loss == deck::LossKind::mse) {
    e.loss_sq = sums[4] / sums[2];
  }
  for (size_t j = kFixed; j + 2 < sums.size(); j += 3) {
    const double spread = sums[j + 1] - sums[j] * sums[j] / sums[2];
    e.r2.push_back(spread > 0.0 ? 1.0 - sums[j + 2] / spread : std::nan(""));
  }
  return e;
}

std::optional<Evaluation> Trainer::eval_and_log(std::int64_t step, double run_seconds) {
  const deck::Deck& d = m_deck;
  if (d.data.test.empty()) {
    return std::nullopt;
  }
  const Evaluation e = evaluate(d.data.test, std::nullopt, /*stoppable=*/true);
  if (e.stopped_by != 0) {
    return e;  // nothing to report: the caller stops the run
  }
  const bool classify = d.model.loss == deck::LossKind::softmax_cross_entropy;
  std::vector<std::string> r2;
  std::vector<std::string> r2_json;
  for (double v : e.r2) {
    r2.push_back(fmt::format("{:.3f}", v));
    r2_json.push_back(json_number(v));
  }
  say(fmt::format(
      "eval  step {}: {} loss {:.4f}, {} {}{} ({} samples)", step, d.data.test, e.loss,
      metric_name(d.model.loss),
      classify ? fmt::format("{:.2f}%", 100.0 * e.metric) : fmt::format("{:.4g}", e.metric),
      r2.empty() ? "" : fmt::format(", R² {}", fmt::join(r2, " ")), e.samples));
  log_line(fmt::format(
      R"({{"kind": "eval", "step": {}, "split": {}, "loss": {}, "{}": {}{}, "samples": {}, "time": {:.3f}}})",
      step, json_string(d.data.test), json_number(e.loss), metric_name(d.model.loss),
      json_number(e.metric),
      r2_json.empty() ? "" : fmt::format(R"(, "r2": [{}])", fmt::join(r2_json, ", ")), e.samples,
      run_seconds));
  return e;
}

std::vector<double> Trainer::predicted_idle(const std::vector<double>& schedule_s,
                                            const std::vector<double>& working_s,
                                            double steps) const {
  // Stage s spent schedule_s[s] in its forwards and backwards over `steps` steps of m
  // micro-batches: t_s per micro-batch, taken as a forward of t_s / 3 and a backward of 2 t_s / 3.
  // The schedule's simulation on those costs gives each stage's idle time per step; it replaces
  // the measured idle beside the same work (working_s: the window without its idle time).
  const int m = m_micro_batches;
  const size_t p = schedule_s.size();
  std::vector<double> forward(p);
  std::vector<double> backward(p);
  size_t slowest = 0;
  for (size_t s = 0; s < p; ++s) {
    const double t = schedule_s[s] / std::max(1.0, steps) / m;
    forward[s] = t / 3.0;
    backward[s] = 2.0 * t / 3.0;
    slowest = schedule_s[s] > schedule_s[slowest] ? s : slowest;
  }
  std::vector<double> shares(p, 0.0);
  if (schedule_s[slowest] <= 0.0) {
    return shares;
  }
  const std::vector<double> idle =
      parallel::idle_fractions(m_pipeline->schedule(), forward, backward, m);
  // The step's length, from the slowest stage (busy m t of it).
  const double step = m * (forward[slowest] + backward[slowest]) / (1.0 - idle[slowest]);
  for (size_t s = 0; s < p; ++s) {
    const double waits = steps * (step - m * (forward[s] + backward[s]));
    shares[s] = waits / std::max(1e-12, working_s[s] + waits);
  }
  return shares;
}

double Trainer::train_step(std::int64_t step, const io::Batch& batch, Window& w) {
  const deck::Deck& d = m_deck;
  // --- forward, loss, backward ------------------------------------------------------------
  // Micro-batches (or the deterministic mode's sample groups) accumulate their gradients; the
  // last one's backward starts the reduction over the data axis, bucket by bucket.
  const Stopwatch sync_clock;
  m_dp->begin_step();  // waits for the previous update's parameters, zeroes the gradients
  w.comm_s += sync_clock.seconds();
  const Stopwatch compute_clock;
  const nn::TensorCommClock& tensor_clock = m_model->context().tensor_clock();
  const nn::TensorCommClock& halo_clock = m_model->context().halo_clock();
  double step_loss = 0.0;
  const double tensor_before = tensor_clock.seconds;
  const double halo_before = halo_clock.seconds;
  // Micro-batch i of this rank's share; through the pipeline's stages (one stage: forward and
  // backward of each in turn). Only the last stage computes the loss.
  const int count = m_micro_batches;
  std::vector<io::Batch> parts(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const Range r = block_range(static_cast<Index>(batch.ids.size()), count, i);
    parts[static_cast<size_t>(i)] = count == 1 ? batch : micro_batch(batch, r);
  }
  parallel::MicroBatches mb;
  mb.count = count;
  mb.size = [&](int i) { return static_cast<Index>(parts[static_cast<size_t>(i)].ids.size()); };
  mb.options = [&](int i) {
    nn::ForwardOptions fo;
    fo.training = true;
    fo.seed = d.run.seed;
    fo.step = static_cast<std::uint64_t>(step);
    fo.sample_offset = parts[static_cast<size_t>(i)].offset;
    fo.defer_stats = d.parallel.deterministic;  // committed in group order by m_dp->step()
    return fo;
  };
  mb.input = [&](int i) { return parts[static_cast<size_t>(i)].x; };
  mb.loss = [&](int i, const Tensor& output) {
    const BatchLoss l =
        batch_loss(d.model.loss, output, parts[static_cast<size_t>(i)], m_loss_placement);
    step_loss += l.out.loss;
    w.metric += l.metric_sum;
    return l.out.grad;
  };
  mb.before_backward = [&](int i) { m_dp->set_last_micro_batch(i + 1 == count); };
  if (d.parallel.deterministic) {
    mb.after_backward = [&](int i) { m_dp->end_group(i); };
  }
  const parallel::PipelineStats ps = m_pipeline->train(mb);
  w.idle_s += ps.idle_s;
  w.peak_saved_bytes = std::max(w.peak_saved_bytes, ps.peak_saved_bytes);
  const double tensor_s = tensor_clock.seconds - tensor_before;
  const double halo_s = halo_clock.seconds - halo_before;
  w.tensor_s += tensor_s;
  w.halo_s += halo_s;
  const double in_schedule = compute_clock.seconds() - ps.idle_s;  // forwards and backwards
  w.schedule_s += in_schedule;
  w.compute_s += in_schedule - tensor_s - halo_s;

  // --- gradient reduction (started during backward: what is left is exposed) ---------------
  const Stopwatch comm_clock;
  m_dp->finish_reduction();
  w.comm_s += comm_clock.seconds();
  // The verdict on non-finite values is the step's first agreement over the trainer: with
  // pipeline stages, where a stage that finished first waits for the pipeline to drain — the end
  // of its bubble, counted as idle.
  const Stopwatch drain_clock;
  const bool skip = nonfinite_step(step, step_loss);
  if (m_pipe->size() > 1) {
    w.idle_s += drain_clock.seconds();
  }
  if (!skip) {
    w.loss += step_loss;
  }

  // --- update -----------------------------------------------------------------------------
  const Stopwatch update_clock;
  if (d.optimizer.clip_grad_norm > 0.0) {
    w.grad_norm = m_dp->clip_grad_norm(d.optimizer.clip_grad_norm);
  }
  // A skipped step (run.nonfinite = "skip") applies no update: zero gradients at learning rate 0.
  const double lr = skip ? 0.0 : optim::learning_rate(m_schedule, step);
  if (skip) {
    m_dp->zero_grads();
  }
  // (Running statistics averaged by the samples each rank normalised: an empty share has no say.)
  m_dp->step(*m_optimizer, lr, static_cast<double>(batch.ids.size()));
  w.compute_s += update_clock.seconds();
  // The last stage counts the samples (the others' sums carry no loss).
  w.samples += m_pipeline->last() ? static_cast<double>(batch.ids.size()) : 0.0;
  w.steps += skip ? 0.0 : 1.0;
  return lr;
}

bool Trainer::nonfinite_step(std::int64_t step, double loss) {
  const auto [speaker, found] = lowest_finding(*m_trainer, first_nonfinite(loss, *m_model));
  if (speaker < 0) {
    m_skipped_in_row = 0;
    return false;
  }
  const std::string what =
      fmt::format("step {}: {} on rank {} is not finite", step + 1, found, speaker);
  // An update that left the weights themselves non-finite (this step's loss and gradients follow
  // from them): skipping steps cannot mend it, and a stop names the weight, not the loss. The
  // lowest rank holding one names it.
  std::string weight;
  for (const nn::Parameter* p : m_model->all_parameters()) {
    if (const Index i = kernels::first_nonfinite(p->value); i >= 0) {
      weight = fmt::format("parameter {} (element {}: {})", p->name, i, p->value.at(i));
      break;
    }
  }
  // (Not a structured binding: the lambda below uses it, which C++17 does not allow.)
  const std::pair<int, std::string> holder = lowest_finding(*m_trainer, weight);
  if (holder.first >= 0) {
    const bool skipping = m_deck.run.nonfinite == "skip";
    comm::agree(*m_trainer, [&] {
      throw input_error(
          what + fmt::format("; {} on rank {} is not finite either, left so by {} update: {}the "
                             "run stops (a lower optimizer.lr or gradient clipping may help)",
                             holder.second, holder.first,
                             skipping ? "an earlier" : fmt::format("step {}'s", step),
                             skipping ? "skipping steps cannot mend it, " : ""),
          m_deck.where("run.nonfinite"));
    });
  }
  if (m_deck.run.nonfinite == "skip" && m_skipped_in_row >= m_deck.run.skip_limit) {
    // Every step skipped for a while: the run is not recovering, and would end "successfully"
    // having trained nothing since.
    comm::agree(*m_trainer, [&] {
      throw input_error(what + fmt::format("; the {} steps before it were skipped too "
                                           "(run.skip_limit = {}): the run is not recovering and "
                                           "stops (a lower optimizer.lr or gradient clipping may "
                                           "help)",
                                           m_skipped_in_row, m_deck.run.skip_limit),
                        m_deck.where("run.nonfinite"));
    });
  }
  if (m_deck.run.nonfinite == "skip") {
    if (leader()) {
      m_reporter->warning(what + ": the step is skipped (run.nonfinite = \"skip\")");
    }
    log_line(
        fmt::format(R"({{"kind": "skip", "step": {}, "why": {}}})", step + 1, json_string(what)));
    ++m_skipped;
    ++m_skipped_in_row;
    return true;
  }
  comm::agree(*m_trainer, [&] {
    throw input_error(what +
                          "; the run stops before applying it (run.nonfinite = \"skip\" "
                          "skips such steps; a lower optimizer.lr or gradient clipping may help)",
                      m_deck.where("run.nonfinite"));
  });
  return true;
}

void Trainer::check_replicas(std::int64_t steps) {
  comm::Communicator& data = *m_data;
  if (data.size() == 1 || steps == m_replicas_checked) {
    return;
  }
  m_replicas_checked = steps;
  m_dp->sync_parameters();
  const std::vector<nn::Parameter*> params = m_model->all_parameters();
  std::vector<std::uint64_t> low(params.size()), high(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    low[i] = io::checksum_partial(params[i]->value.host_view().data(), 0, params[i]->value.numel());
  }
  high = low;
  data.allreduce(comm::Buffer(low), {comm::ReduceOp::min})->wait();
  data.allreduce(comm::Buffer(high), {comm::ReduceOp::max})->wait();
  size_t bad = 0;
  while (bad < params.size() && low[bad] == high[bad]) {
    ++bad;
  }
  if (bad == params.size()) {
    return;
  }
  // The first parameter that differs: which ranks hold another value than data rank 0's, and by
  // how much (rank 0's copy broadcast over the data axis, compared element by element).
  const Tensor& mine = params[bad]->value;
  Tensor first = mine.clone("replica check");
  data.broadcast(comm::Buffer(first), {0})->wait();
  const Tensor::HostView a = mine.host_view();
  const Tensor::HostView b = first.host_view();
  double largest = 0.0;
  for (Index i = 0; i < mine.numel(); ++i) {
    largest = std::max(largest, std::fabs(double(a(i)) - double(b(i))));
  }
  data.allreduce(comm::Buffer(&largest, 1), {comm::ReduceOp::max})->wait();
  const std::int64_t same =
      std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<size_t>(mine.numel())) == 0 ? 1
                                                                                              : 0;
  std::vector<std::int64_t> mark(static_cast<size_t>(data.size()));
  const std::int64_t me = same ? -1 : m_trainer->rank();
  data.allgather(comm::ConstBuffer(&me, 1), comm::Buffer(mark))->wait();
  std::string others;
  for (const std::int64_t r : mark) {
    if (r >= 0) {
      others += fmt::format("{}{}", others.empty() ? "" : ", ", r);
    }
  }
  std::vector<std::int64_t> reference(1, m_trainer->rank());
  data.broadcast(comm::Buffer(reference), {0})->wait();
  comm::agree(*m_trainer, [&] {
    throw input_error(
        fmt::format("step {}: the data-parallel replicas' parameters differ: {} on rank{} {} is "
                    "not rank {}'s (largest difference {:.3g}); they must be identical bit for "
                    "bit (a fault of the machine or a bug: please report it)",
                    steps, params[bad]->name, others.find(',') == std::string::npos ? "" : "s",
                    others, reference[0], largest),
        m_deck.where("run.check_replicas"));
  });
}

double Trainer::report_progress(std::int64_t step, const io::Batch& batch, double lr, Window& w,
                                double window_seconds, double run_seconds) {
  const deck::Deck& d = m_deck;
  const bool classify = d.model.loss == deck::LossKind::softmax_cross_entropy;
  // Losses and samples summed over the data axis (the tensor ranks of one data coordinate
  // computed the same ones).
  double sums[3] = {w.loss, w.metric, w.samples};
  m_sums->allreduce(comm::Buffer(sums, 3))->wait();  // the last pipeline stage's, over data
  const double elapsed = std::max(1e-9, window_seconds - w.paused_s);
  const double loss = sums[0] / w.steps;
  const double metric = sums[1] / sums[2];
  const double samples_s = sums[2] / elapsed;
  // Model FLOPs utilisation: the model's FLOPs at this rate over the ranks' peak (PaLM's MFU).
  const double model_flops_s = samples_s * m_flops_per_sample;
  const double mfu = model_flops_s / std::max(m_peak_flops, 1e-30);
  const double busy =
      std::max(1e-12, w.compute_s + w.tensor_s + w.halo_s + w.idle_s + w.comm_s + w.data_s);
  const double eta = run_seconds / static_cast<double>(step + 1 - m_start_step) *
                     static_cast<double>(total_steps() - step - 1);
  // With tensor parallelism, the share of the split layers' own collectives ("tensor").
  std::string tensor = m_grid->place().size_of(GridAxis::tensor) > 1
                           ? fmt::format("tensor {:2.0f}% ", 100.0 * w.tensor_s / busy)
                           : std::string();
  // With spatial tiles, the share of the halo exchanges and the most activation memory held.
  const AxisSet spatial_axes{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
  const bool tiled = !(m_grid->place().nontrivial() & spatial_axes).empty();
  if (tiled) {
    tensor += fmt::format("halo {:2.0f}% ", 100.0 * w.halo_s / busy);
  }
  // With pipeline stages, each stage's idle share of the window (the measured bubble) and the
  // most activation memory its micro-batches held at once.
  std::string idle;
  std::string idle_json;
  if (m_pipe->size() > 1) {
    constexpr size_t kFields = 5;
    const double mine[kFields] = {w.idle_s / std::max(1e-12, busy), w.peak_saved_bytes, w.compute_s,
                                  w.schedule_s, busy - w.idle_s};
    std::vector<double> stages(kFields * static_cast<size_t>(m_pipe->size()));
    m_pipe->allgather(comm::ConstBuffer(mine, kFields), comm::Buffer(stages))->wait();
    std::vector<double> schedule_s;
    std::vector<double> working_s;
    std::vector<std::string> shares;
    std::vector<std::string> fractions;
    std::vector<std::string> bytes;
    std::vector<std::string> compute;
    std::vector<std::string> in_schedule;
    for (size_t k = 0; k < stages.size(); k += kFields) {
      shares.push_back(fmt::format("{:.0f}%", 100.0 * stages[k]));
      fractions.push_back(fmt::format("{:.4f}", stages[k]));
      bytes.push_back(fmt::format("{:.0f}", stages[k + 1]));
      compute.push_back(fmt::format("{:.4f}", stages[k + 2]));
      schedule_s.push_back(stages[k + 3]);
      in_schedule.push_back(fmt::format("{:.4f}", stages[k + 3]));
      working_s.push_back(stages[k + 4]);
    }
    // What the schedule itself makes each stage wait, given how long the stages computed.
    std::vector<std::string> predicted_shares;
    std::vector<std::string> predicted_fractions;
    for (const double share : predicted_idle(schedule_s, working_s, w.steps)) {
      predicted_shares.push_back(fmt::format("{:.0f}%", 100.0 * share));
      predicted_fractions.push_back(fmt::format("{:.4f}", share));
    }
    idle = fmt::format("idle {} (schedule {}) ", fmt::join(shares, "/"),
                       fmt::join(predicted_shares, "/"));
    idle_json = fmt::format(
        R"(, "idle": [{}], "idle_predicted": [{}], "peak_activation_bytes": [{}], "stage_compute_s": [{}], "stage_schedule_s": [{}])",
        fmt::join(fractions, ", "), fmt::join(predicted_fractions, ", "), fmt::join(bytes, ", "),
        fmt::join(compute, ", "), fmt::join(in_schedule, ", "));
  }
  if (m_pipe->size() == 1) {
    // The most activation bytes any rank held at once (what a spatial split divides).
    double largest = w.peak_saved_bytes;
    m_trainer->allreduce(comm::Buffer(&largest, 1), {comm::ReduceOp::max})->wait();
    idle_json += fmt::format(R"(, "peak_activation_bytes_max": {:.0f})", largest);
  }
  if (tiled) {
    idle_json += fmt::format(R"(, "halo_s": {:.4f})", w.halo_s);
  }
  say(fmt::format(
      "step {:6d}/{}  epoch {}  loss {:.4f}  {} {}  {} samples/s  mfu {:2.0f}%  compute {:2.0f}% "
      "{}{}comm {:2.0f}% data {:2.0f}%  lr {:.3g}  ETA {}",
      step + 1, total_steps(), batch.cursor.epoch + 1, loss, classify ? "acc" : "mae",
      classify ? fmt::format("{:5.1f}%", 100.0 * metric) : fmt::format("{:.4g}", metric),
      rate(samples_s), 100.0 * mfu, 100.0 * w.compute_s / busy, tensor, idle,
      100.0 * w.comm_s / busy, 100.0 * w.data_s / busy, lr, duration(eta)));
  const auto per_epoch = static_cast<double>(m_train->batches_per_epoch());
  const std::string norm = d.optimizer.clip_grad_norm > 0.0
                               ? fmt::format(R"(, "grad_norm": {})", json_number(w.grad_norm))
                               : "";
  log_line(fmt::format(
      R"({{"kind": "train", "step": {}, "epoch": {}, "loss": {}, "{}": {}{}, "samples_per_s": {:.1f}, "model_flops_per_s": {:.6g}, "mfu": {:.6g}, "lr": {:.6g}, "compute_s": {:.4f}, "tensor_s": {:.4f}, "comm_s": {:.4f}, "data_s": {:.4f}{}, "time": {:.3f}}})",
      step + 1,
      // Where the data cursor is after this batch (a restart with another data.batch moved it).
      static_cast<double>(batch.cursor.epoch) +
          static_cast<double>(batch.cursor.batch + 1) / per_epoch,
      json_number(loss), metric_name(d.model.loss), json_number(metric), norm, samples_s,
      model_flops_s, mfu, lr, w.compute_s, w.tensor_s, w.comm_s, w.data_s, idle_json, run_seconds));
  w = Window();
  return loss;
}

RunSummary Trainer::run() {
  const deck::Deck& d = m_deck;
  const deck::CheckpointConfig& ck = d.checkpoint;
  RunSummary summary;
  summary.total_steps = total_steps();
  summary.loss = std::nan("");
  Window window;
  Stopwatch window_clock;
  const Stopwatch run_clock;
  Stopwatch since_save;
  std::int64_t step = m_start_step;
  std::int64_t saved_at = -1;
  if (ck.enabled && ck.at_start && step == 0 && total_steps() > 0) {
    // The initial weights, for post-processing and oracles.
    save(0, "checkpoint.at_start", ck.dir, ck.keep);
    since_save.restart();
    window_clock.restart();
  }
  if (step < total_steps() && m_peak_flops <= 0.0) {  // once: a revived trainer runs again
    measure_peak();
    window_clock.restart();
  }
  for (; step < total_steps(); ++step) {
    const bool last = step + 1 == total_steps();
    comm::watchdog::set_step(step);
    // --- data, then one optimizer step ------------------------------------------------------
    const double waited_before = m_train->wait_seconds();
    const io::Batch batch = m_train->next();
    window.data_s += m_train->wait_seconds() - waited_before;
    const double lr = train_step(step, batch, window);
    summary.grad_norm = window.grad_norm;
    if (step == m_start_step) {
      comm::watchdog::first_step_done();
    }

    // --- progress line, metrics and evaluation ------------------------------------------------
    if ((step + 1) % d.run.log_every == 0 || last || step == 0) {
      summary.loss =
          report_progress(step, batch, lr, window, window_clock.seconds(), run_clock.seconds());
      window_clock.restart();
    }
    if (!last && d.run.eval_every > 0 && (step + 1) % d.run.eval_every == 0) {
      eval_and_log(step + 1, run_clock.seconds());  // a signal during it: the boundary below stops
    }
    if (m_step_hook) {
      const Stopwatch hook_clock;
      m_step_hook(step + 1);
      window.paused_s += hook_clock.seconds();
    }
    // --- checkpoints and stop signals, agreed at this step boundary ------------------------
    if (d.run.check_replicas > 0 && (step + 1) % d.run.check_replicas == 0) {
      check_replicas(step + 1);
    }
    const bool timed =
        ck.enabled && ck.every_seconds > 0.0 && since_save.seconds() >= ck.every_seconds;
    StepAgreement agreed = last ? StepAgreement{0, false} : agree_on_step(timed);
    if (m_stop_rule && !last) {
      agreed.signal = m_stop_rule(step + 1);  // the population's decision, the same everywhere
    }
    const bool periodic = ck.enabled && ck.every_steps > 0 && (step + 1) % ck.every_steps == 0;
    if (ck.enabled && (periodic || agreed.save_due || agreed.signal != 0 || (last && ck.at_end))) {
      const Stopwatch save_clock;
      save(step + 1,
           agreed.signal != 0 ? signals::name(agreed.signal)
           : periodic         ? "checkpoint.every_steps"
           : agreed.save_due  ? "checkpoint.every_seconds"
                              : "end of run",
           ck.dir, ck.keep);
      saved_at = step + 1;
      since_save.restart();
      window.paused_s += save_clock.seconds();
    }
    if (agreed.signal != 0) {
      summary.stopped = true;
      summary.signal = agreed.signal;
      ++step;
      say(fmt::format("stopped by {} at step {} of {} (a step boundary on every rank){}",
                      signals::name(summary.signal), step, total_steps(),
                      saved_at == step ? "; restart with checkpoint.restart = \"auto\"" : ""));
      log_line(fmt::format(R"({{"kind": "stop", "step": {}, "signal": "{}", "time": {:.3f}}})",
                           step, signals::name(summary.signal), run_clock.seconds()));
      break;
    }
  }
  m_dp->sync_parameters();
  if (!summary.stopped) {
    summary.final_eval = eval_and_log(step, run_clock.seconds());
    if (summary.final_eval && summary.final_eval->stopped_by != 0) {
      summary.stopped = true;
      summary.signal = summary.final_eval->stopped_by;
      summary.final_eval.reset();
      say(fmt::format("stopped by {} during the final evaluation, after step {} of {}{}",
                      signals::name(summary.signal), step, total_steps(),
                      saved_at == step ? " (its checkpoint is saved: restart with "
                                         "checkpoint.restart = \"auto\" to evaluate)"
                                       : ""));
      log_line(fmt::format(R"({{"kind": "stop", "step": {}, "signal": "{}", "time": {:.3f}}})",
                           step, signals::name(summary.signal), run_clock.seconds()));
    }
  }
  check_writes();  // the last records too
  summary.steps = step;
  summary.seconds = run_clock.seconds();
  summary.skipped = m_skipped;
  return summary;
}

namespace {
// Activation bytes a rank holds at most for units [first, end) of the plan: what their layers keep
// for backward for each of `live` micro-batches of `micro_batch` samples, and the gradients of one
// micro-batch's backward (each layer holds its own gradient buffers, as its output buffers).
struct ActivationBytes {
  double kept = 0.0;
  double gradients = 0.0;
  double total() const { return kept + gradients; }
};
ActivationBytes activation_bytes(const StagePlan& plan, size_t first, size_t end, int live,
                                 Index micro_batch) {
  Index kept = 0;
  for (size_t u = first; u < end; ++u) {
    kept += plan.unit_activations[u];
  }
  const double bytes = static_cast<double>(kept) * static_cast<double>(micro_batch) * 4.0;
  return {bytes * live, bytes};
}

// A pipeline stage's share of the memory: the parameter elements its rank holds, and the most
// activation bytes its micro-batches in flight hold at once under the schedule.
struct StageMemory {
  Index params = 0;
  int live = 0;
  ActivationBytes peak;
};
std::vector<StageMemory> stage_memory(const deck::Deck& d, const StagePlan& plan, int stages,
                                      int micro_batches, Index micro_batch) {
  const parallel::Schedule schedule = parallel::schedule_from_name(d.parallel.schedule);
  std::vector<StageMemory> memory;
  for (size_t k = 0; k < plan.sizes.size(); ++k) {
    StageMemory m;
    for (size_t u = plan.first[k]; u < plan.first[k + 1]; ++u) {
      m.params += plan.unit_local_params[u];
    }
    m.live = parallel::peak_in_flight(schedule, stages, static_cast<int>(k), micro_batches);
    m.peak = activation_bytes(plan, plan.first[k], plan.first[k + 1], m.live, micro_batch);
    memory.push_back(m);
  }
  return memory;
}

// `tessera check`'s pipeline section: each unit's cost, the stages, each stage's weights and peak
// activations under the schedule, the bubble.
std::string describe_stages(const deck::Deck& d, const comm::GridSpec& spec, const StagePlan& plan,
                            int micro_batches, Index micro_batch) {
  const parallel::Schedule schedule = parallel::schedule_from_name(d.parallel.schedule);
  const double mib = 1.0 / (1024.0 * 1024.0);
  std::string out = fmt::format(
      "\npipeline: {} stages, schedule {}, {} micro-batches of {}; stages = {} ({})\n",
      spec.pipeline, d.parallel.schedule, micro_batches, micro_batch,
      d.parallel.stages.empty() ? "\"auto\"" : fmt::format("[{}]", fmt::join(plan.sizes, ", ")),
      d.parallel.stages.empty() ? "balanced by the estimated cost" : "as the deck cuts it");
  out += fmt::format("{:<6} {:<5} {:<20} {:<10} {:>14} {:>12}\n", "stage", "unit", "layer", "type",
                     "MFLOP/sample", "parameters");
  for (size_t k = 0; k < plan.sizes.size(); ++k) {
    for (size_t u = plan.first[k]; u < plan.first[k + 1]; ++u) {
      out += fmt::format("{:<6} {:<5} {:<20} {:<10} {:>14.2f} {:>12}\n", k, u, plan.unit_names[u],
                         plan.unit_kinds[u], plan.unit_flops[u] / 1e6, plan.unit_params[u]);
    }
  }
  out += fmt::format("{:<6} {:>14} {:>8} {:>14} {:>10} {:>22} {:>12}\n", "stage", "MFLOP/sample",
                     "share", "weights MiB", "in flight", "peak activations MiB", "idle (est.)");
  double total = 0.0;
  for (const double f : plan.unit_flops) {
    total += f;
  }
  // The schedule simulated on the stages' estimated costs (a backward twice its forward).
  std::vector<double> forward(plan.sizes.size(), 0.0);
  for (size_t k = 0; k < plan.sizes.size(); ++k) {
    for (size_t u = plan.first[k]; u < plan.first[k + 1]; ++u) {
      forward[k] += plan.unit_flops[u];
    }
  }
  std::vector<double> backward;
  for (const double f : forward) {
    backward.push_back(2.0 * f);
  }
  const std::vector<double> idle =
      parallel::idle_fractions(schedule, forward, backward, micro_batches);
  const std::vector<StageMemory> memory =
      stage_memory(d, plan, spec.pipeline, micro_batches, micro_batch);
  for (size_t k = 0; k < plan.sizes.size(); ++k) {
    const double flops = forward[k];
    out += fmt::format("{:<6} {:>14.2f} {:>7.0f}% {:>14.2f} {:>10} {:>22.2f} {:>11.1f}%\n", k,
                       flops / 1e6, 100.0 * flops / std::max(total, 1e-30),
                       static_cast<double>(memory[k].params) * 4.0 * mib, memory[k].live,
                       memory[k].peak.total() * mib, 100.0 * idle[k]);
  }
  out += fmt::format(
      "bubble (balanced stages, in theory): (p - 1) / (m + p - 1) = {:.1f}% of each "
      "step idle on every stage; \"idle (est.)\": the schedule on these stages' estimated costs "
      "(a faster stage also waits for the slowest, every micro-batch)\n",
      100.0 * parallel::bubble_fraction(spec.pipeline, micro_batches));
  return out;
}
}  // namespace

std::string describe(const deck::Deck& d, int world_size) {
  // `tessera check` at N ranks refuses what `tessera run` would.
  const comm::GridSpec spec = resolve_grid(d, world_size);
  std::string out;
  const int data = spec.data;
  const Index local_batch = (d.data.batch + data - 1) / data;
  out += fmt::format("grid: {} ranks = {}\n", world_size, comm::to_string(spec));
  const Index parts = parts_per_rank(d, data);
  const Index micro_batch = (local_batch + parts - 1) / parts;
  out += fmt::format("batch: global {}, per data rank {}", d.data.batch, local_batch);
  if (parts > 1) {
    out += fmt::format(", {} {} of {} accumulated per step", parts,
                       d.parallel.deterministic ? "sample groups" : "micro-batches", micro_batch);
  }
  out += "\n\n";
  // The model as the trainer's rank 0 holds it (the first blocks of an uneven split are the
  // largest): its parameters and activations per rank.
  const GridPlace place = comm::grid_place(spec, 0);
  const AxisSet spatial_axes{GridAxis::spatial0, GridAxis::spatial1, GridAxis::spatial2};
  const bool tiled = !(place.nontrivial() & spatial_axes).empty();
  const bool split = spec.tensor > 1 || tiled;
  out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}{}\n", "#", "layer", "type", "output",
                     "parameters", split ? fmt::format(" {:>14}", "on rank 0") : "");
  const ShapeOnly shapes;  // sizes only: nothing is allocated
  const auto model = build_model(d, nn::BuildContext(place));
  Index params = 0;
  Index local_params = 0;
  out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}\n", "", "input", "",
                     to_string(d.model.input), "");
  Layout at = model->input_layout();  // spatial tiles: rank 0's, the largest
  if (tiled) {
    out += fmt::format("spatial tiles: rank 0 holds {} of every sample {}\n",
                       to_string(at.local_shape(place)), to_string(d.model.input));
  }
  for (size_t i = 0; i < model->size(); ++i) {
    nn::Layer& l = (*model)[i];
    Index n = 0;
    Index local = 0;
    for (const nn::Parameter* p : l.all_parameters()) {
      n += numel(p->layout.global_shape());
      local += p->value.numel();
    }
    params += n;
    local_params += local;
    at = l.place_input(at);
    out += fmt::format("{:<4} {:<16} {:<14} {:>18} {:>12}{}\n", i, l.name(), l.kind(),
                       to_string(at.global_shape()), n, split ? fmt::format(" {:>14}", local) : "");
  }
  const double mib = 1.0 / (1024.0 * 1024.0);
  const StagePlan plan = plan_stages(d, place);
  // What every layer (nested ones too) keeps for backward for a micro-batch, and its gradients: on
  // a pipeline, the largest stage's parameters and the most its micro-batches in flight hold.
  double weights = static_cast<double>(local_params) * 4.0;
  ActivationBytes activations =
      activation_bytes(plan, 0, plan.unit_activations.size(), 1, micro_batch);
  if (spec.pipeline > 1) {
    out += describe_stages(d, spec, plan, static_cast<int>(parts), micro_batch);
    weights = 0.0;
    activations = {};
    for (const StageMemory& m :
         stage_memory(d, plan, spec.pipeline, static_cast<int>(parts), micro_batch)) {
      weights = std::max(weights, static_cast<double>(m.params) * 4.0);
      if (m.peak.total() > activations.total()) {
        activations = m.peak;
      }
    }
  }
  const double acts = activations.total();
  const int states =
      d.optimizer.type == deck::OptimizerKind::adamw ? 2 : (d.optimizer.momentum > 0.0 ? 1 : 0);
  // The input batches in flight.
  const double batches = static_cast<double>(d.data.prefetch + 1) *
                         static_cast<double>(numel(model->input_layout().local_shape(place))) *
                         static_cast<double>(local_batch) * 4.0;
  if (d.run.activation_limit_mb > 0.0 && acts * mib > d.run.activation_limit_mb) {
    throw input_error(
        fmt::format("the activations of a micro-batch of {} samples {} need {:.1f} MiB per rank "
                    "(estimate: what every layer keeps for its backward, and its gradients), over "
                    "run.activation_limit_mb = {}; split the samples over more ranks "
                    "(parallel.spatial) or lower the batch",
                    micro_batch, to_string(d.model.input), acts * mib, d.run.activation_limit_mb),
        d.where("run.activation_limit_mb"));
  }
  out += fmt::format("\nparameters: {} ({:.2f} MiB as float32)", params,
                     static_cast<double>(params) * 4.0 * mib);
  out += split ? fmt::format("; on rank 0: {} ({:.2f} MiB)\n", local_params, weights * mib) : "\n";
  const double flops = model_flops(plan);
  out += fmt::format("model FLOPs: {} per sample, forward and backward ({} per step of {})\n",
                     flops_text(flops), flops_text(flops * static_cast<double>(d.data.batch)),
                     d.data.batch);
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
    return line + fmt::format(
                      " + activations {:.1f} ({:.1f} kept for backward, {:.1f} gradients) + input "
                      "batches {:.1f}",
                      acts * mib, activations.kept * mib, activations.gradients * mib,
                      batches * mib);
  };
  const int zero = d.parallel.zero;
  out += fmt::format("memory per rank (estimate), parallel.zero = {} (this deck): {}\n", zero,
                     estimate(zero));
  out += fmt::format("memory per rank (estimate), parallel.zero = {}: {}\n", 1 - zero,
                     estimate(1 - zero));
  // A run that cannot fit in the whole machine would end in an allocation failure or the OOM
  // killer: refuse it here, with the estimate.
  const double total =
      weights * 2 + weights * states / (zero == 1 ? data : 1) + groups + acts + batches;
  const double machine = physical_memory_bytes();
  if (total > machine) {
    throw input_error(
        fmt::format("the model needs about {:.1f} GiB per rank ({}), more than this machine's "
                    "{:.1f} GiB of memory: a smaller model or batch, or more ranks to split it",
                    total / (1024.0 * 1024.0 * 1024.0), estimate(zero),
                    machine / (1024.0 * 1024.0 * 1024.0)),
        d.model.layers.empty() ? DeckLocation{} : d.where("model.layers"));
  }
  return out;
}

}  // namespace tessera::train
