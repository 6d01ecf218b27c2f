#pragma once
// Population training (docs/population.md): `parallel.trainers = K` splits the job into K trainers,
// each a whole grid of its own with its own seed (run.seed + k), hyper-parameters
// ([population.hyper]), folder (run.output/trainer-<k>), progress lines ("[t<k>] ...") and
// metrics, in one mpiexec or sbatch job. Between steps the trainers meet:
//
// - `ltfb`: every population.every steps the trainers pair up (a permutation drawn from the
//   round), exchange model, optimizer state and hyper-parameters, score both models on their own
//   slice of population.validation, and each keeps the better (LBANN's LTFB tournament).
// - `pbt`: every population.every steps each trainer scores its model on its slice and sends the
//   score to every other; the worst `fraction` copy the weights, state and hyper-parameters of the
//   best `fraction` (exploit) and multiply each hyper-parameter by a factor of population.perturb
//   (explore).
// - population.average_every: the trainers' parameters and buffers are averaged (local SGD).
// - population.combine: at the end the trainers' final models are combined into one checkpoint in
//   run.output/combined: their uniform average, or a greedy soup (ingredients added best first,
//   each kept when the average's validation score does not fall).
//
// Exchanges between trainers never wait forever: each is a timed exchange (comm/timed.hpp) with
// population.timeout; a partner that does not answer is skipped, reported and written to
// population.jsonl. Averaging and the final combination are collective over the trainers.
#include "tessera/deck/deck.hpp"
#include "tessera/train/reporter.hpp"

#include <mpi.h>

#include <string>
#include <vector>

namespace tessera::train {

/// Runs the population `deck` describes (parsed from `text` of `file` with `overrides`) on every
/// rank of `world`, trainer by trainer; `console` receives every trainer leader's lines. Returns
/// the program's exit code (0, or kExitStopped after a stop signal). Throws tessera::Error on every
/// rank together for bad input (a population that does not fit the ranks, a bad hyper-parameter).
int run_population(const std::string& text, const std::string& file,
                   const std::vector<std::string>& overrides, const deck::Deck& deck,
                   MPI_Comm world, Reporter& console);

/// The deck of trainer `trainer`: `text` with `overrides`, then the trainer's seed and
/// hyper-parameters (`hyper`: key=value, replacing the deck's choice when given) and its folders.
deck::Deck trainer_deck(const std::string& text, const std::string& file,
                        const std::vector<std::string>& overrides, const deck::Deck& deck,
                        int trainer, const std::vector<std::string>& hyper = {});

}  // namespace tessera::train
