#pragma once
// Input decks: TOML (toml11) in, a typed and validated configuration out (docs/deck-reference.md).
//
// The schema knows every key. An unknown key (with the key meant, for a misspelling), a value of
// the wrong type or out of range, or an impossible combination is a tessera::Error with exit code 2
// whose location names the deck file, the line and the dotted key. `key=value` arguments after the
// deck override it, as AMReX's ParmParse does; an error in one names "command line" and the key.
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/nn/factory.hpp"
#include "tessera/optim/schedule.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace tessera::deck {

struct RunConfig {
  std::string name;  ///< default: the deck file's stem
  std::uint64_t seed = 0;
  std::int64_t epochs = 1;      ///< training length in epochs, unless steps is set
  std::int64_t steps = 0;       ///< training length in optimizer steps (0: from epochs)
  std::int64_t log_every = 50;  ///< progress line every N steps (and at the last)
  std::int64_t eval_every = 0;  ///< evaluate every N steps (0: only at the end)
  std::string output;           ///< run folder; default "runs/<name>"
  int blas_threads = 1;         ///< BLAS threads per rank
  /// "fp32", or "bf16": matrix products with bfloat16 inputs and fp32 accumulation (the tensors,
  /// weights and optimizer state stay fp32)
  std::string precision = "fp32";
  /// "cpu" or "cuda": where the tensors live and the kernels run; default, and the only value a
  /// build accepts: the build's own (tessera::build_device)
  std::string device;
  double watchdog_s = 300;         ///< a rank blocked in communication longer ends the job (0: off)
  bool check_collectives = false;  ///< debug: compare each collective's signature across ranks
  std::string nonfinite =
      "stop";  ///< a non-finite loss or gradient: "stop" the run or "skip" the step
  /// With nonfinite = "skip": the most steps skipped in a row; one more stops the run.
  std::int64_t skip_limit = 10;
  /// Every N steps (and before each checkpoint) compare the data-parallel replicas' parameters,
  /// which must be identical; 0: never.
  std::int64_t check_replicas = 0;
  /// The most activation memory a rank may need for one micro-batch (MiB, the estimate `tessera
  /// check` prints); a deck over it is refused before anything is allocated. 0: no limit.
  double activation_limit_mb = 0.0;
  /// One rank's peak in TFLOP/s, what model FLOPs utilisation (mfu) is reported against; 0: a
  /// GEMM in the run's precision measured on every rank at the start (kernels::measure_gemm_flops).
  double peak_tflops = 0.0;
};

struct ParallelConfig {
  int trainers = 1;  ///< models trained at once, each a grid of its own ([population])
  int data = 0;      ///< data-parallel ranks; 0 = the rest of the trainer's ranks
  int tensor = 1;    ///< tensor-parallel ranks (layers with `split` are cut over them)
  int pipeline = 1;  ///< pipeline stages (parallel::Pipeline)
  /// Layers per pipeline stage (a `repeat` counts as its repetitions); empty: "auto", balanced by
  /// the layers' estimated cost.
  std::vector<int> stages;
  std::string schedule = "1f1b";  ///< "1f1b" or "gpipe"
  std::vector<int> spatial{1, 1};
  bool sequence_parallel =
      false;                    ///< Megatron-LM's: activations between split regions cut by token
  double bucket_mb = 4.0;       ///< gradient bucket size (MiB) of the data-parallel reduction
  std::string reduce = "auto";  ///< "auto", "mpi" or "shared" (parallel::Reduce)
  int zero = 0;                 ///< ZeRO stage: 0 off, 1 optimizer state sharded over the data axis
  bool deterministic = false;   ///< parameters bit-identical for every data size dividing groups
  int sample_groups = 0;        ///< deterministic mode: the global batch's fixed groups
};

struct DataConfig {
  std::string train;  ///< "file.h5:/split"
  std::string test;   ///< optional
  Index batch = 0;    ///< global batch, split over the data axis
  bool shuffle = true;
  bool drop_last = false;
  bool cache = false;
  int prefetch = 2;
  int micro_batches = 1;  ///< gradient accumulation: micro-batches per rank per optimizer step
};

enum class LossKind { softmax_cross_entropy, mse };
const char* loss_name(LossKind loss);

struct ModelConfig {
  Shape input;                        ///< one sample, (C, H, W), (features,) or (context,)
  Index context = 0;                  ///< language models: tokens per sample (0: not one)
  std::vector<nn::LayerSpec> layers;  ///< in order; where = the layer's line and key
  LossKind loss = LossKind::softmax_cross_entropy;
};

enum class OptimizerKind { sgd, adamw };

struct OptimizerConfig {
  OptimizerKind type = OptimizerKind::sgd;
  double lr = 0.0;
  double momentum = 0.0;            ///< sgd
  bool nesterov = false;            ///< sgd
  double weight_decay = 0.0;        ///< sgd: L2; adamw: decoupled (default 0.01)
  double beta1 = 0.9;               ///< adamw
  double beta2 = 0.999;             ///< adamw
  double eps = 1e-8;                ///< adamw
  double clip_grad_norm = 0.0;      ///< 0: no clipping
  optim::ScheduleOptions schedule;  ///< base_lr = lr; total_steps filled in by the trainer
};

/// [checkpoint]: absent, the run writes no checkpoints (not even on a stop signal).
struct CheckpointConfig {
  bool enabled = false;          ///< the deck has a [checkpoint] section
  std::string dir;               ///< default "<run.output>/ckpt"
  std::int64_t every_steps = 0;  ///< 0: no step trigger
  double every_seconds = 0.0;    ///< 0: no time trigger (wall time since the last save)
  int keep = 3;                  ///< complete checkpoints kept in dir
  bool at_end = true;            ///< save after the last step
  bool at_start = false;         ///< save the initial state (step 0) before the first step
  std::string restart;           ///< "": start fresh; "auto": from dir/latest if any; or a file
};

/// One hyper-parameter a population varies: a numeric deck key and how each trainer's value is
/// chosen (docs/population.md).
struct HyperSpec {
  std::string key;             ///< the dotted deck key ("optimizer.lr")
  std::string how;             ///< "values", "grid", "uniform" or "log_uniform"
  std::vector<double> values;  ///< values: one per trainer; grid: the axis's points
  double low = 0.0;            ///< uniform, log_uniform: the range
  double high = 0.0;
  bool integer = false;  ///< the deck key takes integers: chosen values are rounded
  DeckLocation where;
};

/// [population]: absent, a job of several trainers runs them independently with their seeds.
struct PopulationConfig {
  bool enabled = false;                   ///< the deck has a [population] section
  std::string algorithm = "independent";  ///< "independent", "ltfb" or "pbt"
  std::int64_t every = 0;                 ///< steps between tournaments (ltfb, pbt)
  double timeout = 60.0;                  ///< seconds an exchange waits for its partner
  std::string validation;                 ///< "file.h5:/split": each trainer scores on a slice
  std::int64_t average_every = 0;         ///< average the trainers' models every N steps
  std::string combine = "none";           ///< at the end: "none", "average" or "soup"
  /// combine: training batches through which a combined model re-estimates its BatchNorm running
  /// statistics (averaged weights do not fit averaged statistics); 0: keep the averages
  std::int64_t recalibrate = 0;
  /// ltfb, pbt: standard errors of the difference by which another model's validation score must
  /// beat this one's for it to be taken (0: any higher score)
  double significance = 2.0;
  /// ltfb, pbt: a round scores the average of each model's weights over the steps since the last
  /// round (population.score = "average") instead of the model as it is ("model")
  bool score_average = false;
  double fraction = 0.25;                  ///< pbt: the share that copies (and is copied)
  std::vector<double> perturb{0.8, 1.25};  ///< pbt: factors a copied value is multiplied by
  double resample = 0.25;        ///< pbt: probability a copied value is drawn anew from its range
  std::uint64_t seed = 0;        ///< samples the hyper-parameters; default run.seed
  std::vector<HyperSpec> hyper;  ///< in the deck's order
};

struct Deck {
  std::string file;  ///< as given on the command line
  RunConfig run;
  ParallelConfig parallel;
  DataConfig data;
  ModelConfig model;
  OptimizerConfig optimizer;
  CheckpointConfig checkpoint;
  PopulationConfig population;
  /// Where each dotted key was written ("run.epochs" → file:line), for later, cross-checking
  /// errors (a dataset that does not fit the model names model.input).
  std::map<std::string, DeckLocation> locations;
  /// Warnings of the parse, each with its location: keys given that this deck does not use
  /// (population.fraction under LTFB). `tessera check` and `tessera run` print them.
  std::vector<std::string> notes;

  DeckLocation where(const std::string& key) const;
};

/// Parses deck `text` (read from `file`) with `overrides` ("optimizer.lr=0.1") applied, and
/// validates everything that does not need the data or the world (layer shapes chain, options are
/// known and in range). Throws tessera::Error (exit code 2) with the location.
Deck parse(const std::string& text, const std::string& file,
           const std::vector<std::string>& overrides = {});

/// Refuses run.output and checkpoint.dir where the run could not create or write them: a part of
/// the path that is a file, a name too long, no permission (input errors naming the key). Reads
/// the file system only; `tessera check` and `tessera run` call it before anything is written.
void check_folders(const Deck& d);

/// The text of the deck `file`; refuses a missing, unreadable or folder path (input errors).
std::string read_text(const std::string& file);

/// Reads `file` and parses it (see parse()).
Deck load(const std::string& file, const std::vector<std::string>& overrides = {});

/// Trainer `trainer`'s hyper-parameters, as `key=value` overrides of the deck (value text that
/// parses back to the same number), in the order of population.hyper; then its seed
/// (run.seed + trainer, unless a hyper-parameter sets run.seed).
std::vector<std::string> trainer_overrides(const Deck& deck, int trainer);

/// The value a hyper-parameter takes for trainer `trainer` of `trainers` (before rounding):
/// values[trainer]; the grid's point; for uniform and log_uniform a Latin hypercube draw (trainer
/// k draws within its own of `trainers` equal parts of the range, the parts dealt per key).
double hyper_value(const PopulationConfig& population, const HyperSpec& spec, int trainer,
                   int trainers);

/// PBT's explore step for a value copied from a better trainer: with probability
/// population.resample a fresh draw from `spec`'s range (uniform, log-uniform in log space, or one
/// of its values), else `value` times one of population.perturb, clamped to the range; rounded for
/// an integer key. `bits`: four random words (the first picks, the next two draw).
double explore_value(const PopulationConfig& population, const HyperSpec& spec, double value,
                     const std::uint32_t (&bits)[4]);

/// `value` as deck text for `spec`'s key: an integer for an integer key, else a real that parses
/// back to the same double.
std::string hyper_text(const HyperSpec& spec, double value);

/// The fully resolved deck (defaults included) as TOML: echoed at the start of a run, saved in
/// the run folder, and a valid deck itself.
std::string to_toml(const Deck& deck);

/// A deck's text parsed once (a checkpoint's embedded deck), to read values at dotted keys
/// ("data.batch"). Each reader gives nothing when the text does not parse or holds no value of
/// that type there.
class DeckText {
 public:
  explicit DeckText(const std::string& text);
  ~DeckText();
  DeckText(const DeckText&) = delete;
  DeckText& operator=(const DeckText&) = delete;

  std::optional<std::int64_t> integer(const std::string& key) const;
  std::optional<std::string> string(const std::string& key) const;
  std::optional<bool> boolean(const std::string& key) const;

  /// The keys at or under any of `under` ("optimizer", "data.shuffle") whose values differ
  /// between this deck and `now`, each as "key = old → new" (a value missing from one side is
  /// "(none)", a list or table longer than 40 characters "(another list)"), in key order.
  /// Nothing when either text is not TOML.
  std::vector<std::string> changed(const DeckText& now,
                                   const std::vector<std::string>& under) const;

 private:
  struct Root;
  std::unique_ptr<Root> m_root;
};

}  // namespace tessera::deck
