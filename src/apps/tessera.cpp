// tessera — train a model described by an input deck, the way a simulation code runs.
//
//   mpiexec -n 2 tessera run inputs/fashion_mlp.toml [key=value ...]
//   tessera check inputs/fashion_cnn.toml [key=value ...]
//   tessera generate runs/kjv-gpt/ckpt/ckpt-00003000.h5 --prompt "In the beginning" --tokens 200
//
// Exit codes: 0 done; 2 bad input (deck, data, command line); 75 stopped early by SIGINT, SIGTERM
// or SIGUSR1 (job scripts resubmit); 1 anything else.
#include "app_main.hpp"
#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/deck/deck.hpp"
#include "tessera/train/generate.hpp"
#include "tessera/train/population.hpp"
#include "tessera/train/reporter.hpp"
#include "tessera/train/trainer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mpi.h>
#include <CLI/CLI.hpp>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string_view>

namespace {

using tessera::Error;

// Rank 0 reads the deck file and broadcasts its text: one file system access, one verdict.
std::string read_deck(tessera::comm::Communicator& world, const std::string& path) {
  std::string text;
  tessera::comm::agree(world, [&] {
    if (world.rank() != 0) {
      return;
    }
    text = tessera::deck::read_text(path);
  });
  return tessera::comm::broadcast_string(world, text);
}

// Every rank parses the same text with its own command-line overrides; then the ranks compare
// what they got, so a deck override given to some ranks only is an error, not a silent split.
tessera::deck::Deck load_deck(tessera::comm::Communicator& world, const std::string& path,
                              const std::vector<std::string>& overrides, std::string& text) {
  text = read_deck(world, path);
  tessera::deck::Deck deck;
  tessera::comm::agree(world, [&] { deck = tessera::deck::parse(text, path, overrides); });
  const std::string resolved = tessera::deck::to_toml(deck);
  const auto hash = static_cast<std::uint64_t>(std::hash<std::string>{}(resolved));
  std::uint64_t lo = hash;
  std::uint64_t hi = hash;
  world.allreduce(tessera::comm::Buffer(&lo, 1), {tessera::comm::ReduceOp::min})->wait();
  world.allreduce(tessera::comm::Buffer(&hi, 1), {tessera::comm::ReduceOp::max})->wait();
  tessera::comm::agree(world, [&] {
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
  // `run` takes SIGINT/SIGTERM/SIGUSR1 as a request to stop at the next step boundary. Before
  // MPI_Init and before any thread exists, so that no thread ever runs a handler (core/signals.hpp)
  // and a job script's early SIGUSR1 stops the run instead of killing it.
  if (argc > 1 && std::string_view(argv[1]) == "run") {
    tessera::signals::defer_stop_signals();
  }
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
    auto* generate = app.add_subcommand(
        "generate",
        "continue a prompt with a trained language model (its checkpoint), on one "
        "rank or on the tensor ranks it is split over");
    std::string checkpoint;
    tessera::train::GenerateOptions go;
    generate->add_option("checkpoint", checkpoint, "a checkpoint of a language model")->required();
    generate->add_option("--prompt", go.prompt, "the text to continue")->required();
    generate->add_option("--tokens", go.tokens, "bytes to generate")->capture_default_str();
    generate->add_option("--temperature", go.temperature, "0: always the most likely byte")
        ->capture_default_str();
    generate->add_option("--top-k", go.top_k, "sample among the k most likely bytes (0: all)")
        ->capture_default_str();
    generate->add_option("--seed", go.seed, "the sampling stream")
        ->check(tessera::apps::uint64_value())
        ->capture_default_str();
    if (const auto code = tessera::apps::parse_command_line(app, ac, av)) {
      return *code;
    }
    tessera::comm::MpiCommunicator world(MPI_COMM_WORLD, "world");
    tessera::train::ConsoleReporter console;
    tessera::train::SilentReporter silent;
    tessera::train::Reporter& out =
        world.rank() == 0 ? static_cast<tessera::train::Reporter&>(console) : silent;
    if (*generate) {
      const std::string text = tessera::train::generate(checkpoint, go, MPI_COMM_WORLD);
      out.info(go.prompt + text);
      return 0;
    }

    std::string text;
    const tessera::deck::Deck deck = load_deck(world, deck_path, overrides, text);
    if (*check) {
      std::string report;
      std::vector<std::string> notes;
      tessera::comm::agree(world, [&] {
        (void)tessera::train::resolve_grid(deck, world.size());  // the grid first: no file needed
        notes = tessera::train::check_data(deck, world.rank(), world.size());
        report = tessera::train::describe(deck, world.size());
        if (deck.parallel.trainers > 1) {  // each trainer's values in their keys' ranges
          (void)tessera::train::trainer_decks(text, deck_path, overrides, deck);
        }
        for (int k = 0; deck.parallel.trainers > 1 && k < deck.parallel.trainers; ++k) {
          report += fmt::format("population trainer {}: {}\n", k,
                                fmt::join(tessera::deck::trainer_overrides(deck, k), " "));
        }
      });
      for (const std::string& note : deck.notes) {
        out.warning(note);
      }
      for (const std::string& note : notes) {
        out.warning(note);
      }
      out.info(tessera::deck::to_toml(deck) + "\n" + report + "deck OK: " + deck_path);
      return 0;
    }

    out.info(fmt::format("tessera: {} on {} rank{}, output in {}/\n{}", deck.run.name, world.size(),
                         world.size() == 1 ? "" : "s", deck.run.output,
                         tessera::deck::to_toml(deck)));
    for (const std::string& note : deck.notes) {
      out.warning(note);
    }
    if (deck.parallel.trainers > 1) {
      return tessera::train::run_population(text, deck_path, overrides, deck, MPI_COMM_WORLD,
                                            console);
    }
    tessera::train::Trainer trainer(deck, MPI_COMM_WORLD, &console);
    const tessera::train::RunSummary s = trainer.run();
    if (s.final_eval || !s.stopped) {
      out.info(tessera::train::final_line(s, deck.model.loss));
    }
    return s.stopped ? tessera::train::kExitStopped : 0;
  });
}
