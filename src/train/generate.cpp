#include "tessera/train/generate.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/io/checkpoint_reader.hpp"
#include "tessera/kernels/gemm.hpp"
#include "tessera/parallel/registry.hpp"
#include "tessera/train/trainer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace tessera::train {
namespace {

// The whole row of logits at position `at` of sample 0 of `output` (1, T, V_local), gathered over
// the tensor axis when the classes are split there (blocks padded to the largest for allgather).
std::vector<float> logits_at(const Tensor& output, Index at, const Layout& layout,
                             const comm::ProcessGrid& grid) {
  const Index local = output.dim(-1);
  const std::vector<float> all = output.to_host();
  std::vector<float> row(all.begin() + at * local, all.begin() + (at + 1) * local);
  const int last = layout.rank() - 1;
  const int parts = grid.place().size_of(GridAxis::tensor);
  if (layout.axis_of(last) != GridAxis::tensor || parts == 1) {
    return row;
  }
  const Index classes = layout.global_shape().back();
  const Index widest = block_range(classes, parts, 0).count;
  row.resize(static_cast<size_t>(widest), 0.0F);
  std::vector<float> gathered(static_cast<size_t>(widest * parts));
  grid.axis(GridAxis::tensor).allgather(row, gathered)->wait();
  std::vector<float> whole;
  for (int r = 0; r < parts; ++r) {
    const Range b = block_range(classes, parts, r);
    whole.insert(whole.end(), gathered.begin() + r * widest,
                 gathered.begin() + r * widest + b.count);
  }
  return whole;
}

// The next byte: the argmax at temperature 0, else a draw from softmax(logits / temperature) over
// the top_k most likely (all when 0), with uniform `u` in [0, 1).
std::int32_t pick(std::vector<float> logits, const GenerateOptions& o, double u) {
  const auto classes = static_cast<std::int32_t>(logits.size());
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b]; });
  if (o.temperature <= 0.0) {
    return order.front();
  }
  const std::int32_t keep =
      o.top_k > 0 ? static_cast<std::int32_t>(std::min<std::int64_t>(o.top_k, classes)) : classes;
  std::vector<double> p(static_cast<size_t>(keep));
  const auto top = static_cast<double>(logits[static_cast<size_t>(order[0])]);
  double sum = 0.0;
  for (std::int32_t i = 0; i < keep; ++i) {
    p[i] = std::exp((static_cast<double>(logits[static_cast<size_t>(order[i])]) - top) /
                    o.temperature);
    sum += p[i];
  }
  double at = u * sum;
  for (std::int32_t i = 0; i < keep; ++i) {
    at -= p[i];
    if (at < 0.0) {
      return order[i];
    }
  }
  return order[keep - 1];
}

}  // namespace

std::string generate(const std::string& file, const GenerateOptions& o, MPI_Comm world) {
  const int ranks = comm::size_of(world);
  deck::Deck d;
  comm::agree(world, [&] {
    if (o.tokens < 1 || o.tokens > 1000000) {
      throw input_error(fmt::format("generate: --tokens {} must be in [1, 1000000]", o.tokens));
    }
    if (!(o.temperature >= 0.0) || !std::isfinite(o.temperature)) {
      throw input_error(fmt::format("generate: --temperature {} must be >= 0", o.temperature));
    }
    if (o.top_k < 0) {
      throw input_error(fmt::format("generate: --top-k {} must be >= 0", o.top_k));
    }
    if (o.prompt.empty()) {
      throw input_error("generate: --prompt is empty: give at least one byte to continue");
    }
    std::string text;
    try {
      const io::File f = io::open_checkpoint(file);
      if (const std::string problem = io::format_problem(f); !problem.empty()) {
        throw input_error(fmt::format("{}: {}", file, problem));
      }
      text = f.root().attributes().get_string("deck");
    } catch (const Error& e) {
      throw input_error("generate: " + e.message());
    }
    d = deck::parse(text, file + " (its deck)");
    if (d.model.context < 1) {
      throw input_error(
          fmt::format("generate: {} holds a model of input {}, not a language model "
                      "(its deck has no model.context)",
                      file, to_string(d.model.input)));
    }
  });
  // Sequence parallelism saves activation memory in training; generation runs on any number of
  // tensor ranks (which need not divide the context) without it: the parameters are the same.
  d.parallel.sequence_parallel = false;
  kernels::set_blas_threads(d.run.blas_threads);  // as the run did: oneDNN's OpenMP threads too
  kernels::set_matmul_precision(kernels::matmul_precision_named(d.run.precision));
  comm::ProcessGrid grid(world, {1, 1, 1, ranks, {1, 1}});
  std::unique_ptr<nn::Sequential> model;
  comm::agree(grid.trainer(), [&] { model = build_model(d, nn::BuildContext(grid)); });
  const Index context = d.model.context;
  const Index vocab = model->output_shape().back();
  comm::agree(grid.trainer(), [&] {
    for (size_t i = 0; i < o.prompt.size(); ++i) {
      const auto byte = static_cast<unsigned char>(o.prompt[i]);
      if (byte >= vocab) {
        throw input_error(
            fmt::format("generate: the prompt's byte {} at position {} is outside the "
                        "model's vocabulary of {}",
                        static_cast<int>(byte), i, vocab));
      }
    }
  });
  (void)io::load_checkpoint(file, parallel::model_registry(*model, grid.place()), "",
                            grid.trainer());

  std::vector<std::int32_t> text;
  for (const char c : o.prompt) {
    text.push_back(static_cast<unsigned char>(c));
  }
  const rng::CounterRng draw(o.seed, rng::hash_name("tessera generate"));
  std::string out;
  nn::ForwardOptions fo;
  fo.training = false;
  std::vector<float> window(static_cast<size_t>(context), 0.0F);
  for (std::int64_t k = 0; k < o.tokens; ++k) {
    // The last `context` bytes, left-aligned: the causal model's output at the last of them sees
    // exactly them (what follows, zeros, does not reach it).
    const auto n = static_cast<Index>(std::min<size_t>(text.size(), static_cast<size_t>(context)));
    std::fill(window.begin(), window.end(), 0.0F);
    for (Index t = 0; t < n; ++t) {
      window[static_cast<size_t>(t)] =
          static_cast<float>(text[text.size() - static_cast<size_t>(n) + static_cast<size_t>(t)]);
    }
    const nn::ForwardResult f =
        model->forward(Tensor::from_host("prompt", {1, context}, window), fo);
    std::vector<float> logits = logits_at(f.output, n - 1, model->output_layout(), grid);
    std::int32_t next = pick(std::move(logits), o,
                             static_cast<double>(draw.uniform(static_cast<std::uint64_t>(k))));
    grid.trainer().broadcast(comm::Buffer(&next, 1))->wait();  // one text on every rank
    text.push_back(next);
    out.push_back(static_cast<char>(next));
  }
  return out;
}

}  // namespace tessera::train
