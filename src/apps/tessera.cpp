// tessera — train a model described by an input deck, the way a simulation code runs.
//
//   mpiexec -n 2 tessera run inputs/fashion_mlp.toml [key=value ...]
//   tessera check inputs/fashion_cnn.toml [key=value ...]
//
// Exit codes: 0 done; 2 bad input (deck, data, command line); 75 stopped early by SIGINT, SIGTERM
// or SIGUSR1 (job scripts resubmit); 1 anything else.
#include "app_main.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/train/trainer.hpp"

#include <fmt/format.h>
#include <mpi.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace {

using tessera::Error;

// Rank 0 reads the deck file and broadcasts its text: one file system access, one verdict.
std::string read_deck(const std::string& path) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::string text;
  tessera::comm::agree(MPI_COMM_WORLD, [&] {
    if (rank != 0) {
      return;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      throw tessera::input_error(fmt::format("{}: cannot read the deck (no such file?)", path));
    }
    std::ostringstream s;
    s << in.rdbuf();
    text = s.str();
  });
  long long size = static_cast<long long>(text.size());
  MPI_Bcast(&size, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  text.resize(static_cast<size_t>(size));
  MPI_Bcast(text.data(), static_cast<int>(size), MPI_CHAR, 0, MPI_COMM_WORLD);
  return text;
}

// Every rank parses the same text with its own command-line overrides; then the ranks compare
// what they got, so a deck override given to some ranks only is an error, not a silent split.
tessera::deck::Deck load_deck(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string text = read_deck(path);
  tessera::deck::Deck deck;
  tessera::comm::agree(MPI_COMM_WORLD, [&] { deck = tessera::deck::parse(text, path, overrides); });
  const std::string resolved = tessera::deck::to_toml(deck);
  const auto hash = static_cast<unsigned long long>(std::hash<std::string>{}(resolved));
  unsigned long long lo = 0;
  unsigned long long hi = 0;
  MPI_Allreduce(&hash, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&hash, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  tessera::comm::agree(MPI_COMM_WORLD, [&] {
    if (lo != hi && hash != lo) {
      throw tessera::input_error(
          "the ranks disagree on the deck: this rank's resolved deck differs from another rank's "
          "(were key=value overrides given to some ranks only?)");
    }
  });
  return deck;
}

}  // namespace

int main(int argc, char** argv) {
  // Before MPI_Init: a job script's early SIGUSR1 then stops the run instead of killing it.
  tessera::train::install_stop_handlers();
  return tessera::apps::run_main(argc, argv, [](int ac, char** av) {
    CLI::App app{"tessera: MPI-first SPMD training of neural networks from an input deck"};
    app.require_subcommand(1);
    std::string deck_path;
    std::vector<std::string> overrides;
    auto* run = app.add_subcommand("run", "train the model a deck describes");
    auto* check = app.add_subcommand("check",
                                     "validate a deck and print the resolved configuration, "
                                     "grid, model summary and memory per rank; run nothing");
    for (CLI::App* sub : {run, check}) {
      sub->add_option("deck", deck_path, "input deck (TOML)")->required();
      sub->add_option("overrides", overrides, "key=value overrides of the deck (optimizer.lr=0.1)");
    }
    int rank = 0;
    int size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (const auto code = tessera::apps::parse_command_line(app, ac, av)) {
      return *code;
    }

    const tessera::deck::Deck deck = load_deck(deck_path, overrides);
    if (*check) {
      std::string report;
      tessera::comm::agree(MPI_COMM_WORLD, [&] {
        tessera::train::check_data(deck);
        report = tessera::train::describe(deck, size);
      });
      if (rank == 0) {
        std::printf("%s\n%s", tessera::deck::to_toml(deck).c_str(), report.c_str());
        std::printf("deck OK: %s\n", deck_path.c_str());
      }
      return 0;
    }

    if (rank == 0) {
      std::printf("tessera: %s on %d rank%s, output in %s/\n%s\n", deck.run.name.c_str(), size,
                  size == 1 ? "" : "s", deck.run.output.c_str(),
                  tessera::deck::to_toml(deck).c_str());
      std::fflush(stdout);
    }
    tessera::train::Trainer trainer(deck, MPI_COMM_WORLD);
    const tessera::train::RunSummary s = trainer.run();
    if (rank == 0) {
      if (s.final_eval) {
        const auto& e = *s.final_eval;
        const bool classify = deck.model.loss == tessera::deck::LossKind::softmax_cross_entropy;
        std::printf("final: %lld steps in %.1f s; test loss %.4f, test %s %s\n",
                    static_cast<long long>(s.steps), s.seconds, e.loss,
                    classify ? "accuracy" : "MAE",
                    classify ? fmt::format("{:.2f}%", 100.0 * e.metric).c_str()
                             : fmt::format("{:.4g}", e.metric).c_str());
      } else if (!s.stopped) {
        std::printf("final: %lld steps in %.1f s (no data.test to evaluate)\n",
                    static_cast<long long>(s.steps), s.seconds);
      }
    }
    return s.stopped ? tessera::train::kExitStopped : 0;
  });
}
