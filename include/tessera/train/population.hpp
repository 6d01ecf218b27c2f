#pragma once
// Population training (docs/population.md): `parallel.trainers = K` splits the job into K trainers,
// each a whole grid of its own with its own seed (run.seed + k), hyper-parameters
// ([population.hyper]), folder (run.output/trainer-<k>), progress lines ("[t<k>] ...") and
// metrics, in one mpiexec or sbatch job. Between steps the trainers meet:
//
// - `ltfb`: every population.every steps the trainers pair up (a permutation drawn from the
//   round), exchange model, optimizer state and hyper-parameters, score both models on their own
//   slice of population.validation, and each keeps the better (LBANN's LTFB tournament).
// - `pbt`: every population.every steps each trainer scores its model on the whole of
//   population.validation and sends the score to every other; the worst `fraction` copy the
//   weights, state and hyper-parameters of the best `fraction` (exploit) and explore each
//   hyper-parameter (drawn anew, or multiplied by a factor of population.perturb).
// - Under both a model is taken only when its score beats the other's by population.significance
//   standard errors (PBT's t-test selection, Jaderberg et al. 2017): rankings that noise or a
//   learning rate's early lead decide do not spread.
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

#include <cstdint>
#include <map>
#include <set>
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

struct Evaluation;

/// A validation score (higher is better: accuracy, or minus the loss) and its standard error: of
/// an accuracy p over n scored samples (a language model's tokens), sqrt(p (1 - p) / n); of a
/// loss, the standard deviation of the samples' losses over sqrt(samples).
struct Score {
  double value = 0.0;
  double error = 0.0;
};
Score validation_score(const deck::Deck& deck, const Evaluation& e);

/// Whether `a` beats `b` by more than `z` standard errors of their difference,
/// sqrt(a.error² + b.error²) (z = 0: a higher score). The two are taken as independent, which two
/// models scored on the same samples are not (their difference varies less): the test errs on the
/// side of keeping a model. population.significance is `z` for LTFB and PBT.
bool beats(const Score& a, const Score& b, double z);

/// The deck of trainer `trainer`: `text` with `overrides`, then the trainer's seed and
/// hyper-parameters (`hyper`: key=value, replacing the deck's choice when given) and its folders.
deck::Deck trainer_deck(const std::string& text, const std::string& file,
                        const std::vector<std::string>& overrides, const deck::Deck& deck,
                        int trainer, const std::vector<std::string>& hyper = {});

/// Every trainer's deck (trainer_deck), an error naming the trainer ("population trainer 2: ...")
/// and, for a hyper-parameter value out of its key's range, where population.hyper chose it.
std::vector<deck::Deck> trainer_decks(const std::string& text, const std::string& file,
                                      const std::vector<std::string>& overrides,
                                      const deck::Deck& base);

/// The partner of every trainer at LTFB round `round` (-1: it sits the round out): pairs from a
/// permutation every trainer draws alike from (population.seed, round).
std::vector<int> ltfb_partners(const deck::PopulationConfig& population, int trainers,
                               std::int64_t round);

/// One trainer's saved state as a population's restart sees it: the steps of its checkpoints, each
/// with the length of the run that wrote it (0 when it could not be read), the steps of its state
/// records in population.jsonl (a trainer records its state after every round it completed; a
/// round left because of a stop signal has none, though the stop's checkpoint is at its step), and
/// of its "held" records (a checkpoint rewritten after a round held on resuming).
struct SavedTrainer {
  std::map<std::int64_t, std::int64_t> checkpoints;  ///< step → the saving run's total steps
  std::set<std::int64_t> states;
  std::set<std::int64_t> held;
};

/// checkpoint.restart = "auto" for a population: the step each trainer resumes from (-1: it starts
/// afresh, having saved nothing). Trainers meet at rounds (ltfb: in pairs; pbt: all; every
/// population.every steps) and averages (all; population.average_every); between meetings each
/// trains alone. Each trainer starts at its newest checkpoint, and one that is past a meeting a
/// fellow of that meeting is before goes back to its newest checkpoint before it, until none is:
/// the newest state of the population that is consistent, from which trainers that stopped at
/// different steps resume exactly. Independent trainers never meet: each resumes from its newest
/// checkpoint, one without any starts afresh. A checkpoint at a round's step is after the round
/// only when the trainer's state record says it completed it (else the trainer holds the round on
/// resuming); one with a "held" record and no state record is not used. Throws input_error (exit
/// code 2) when there is no such state, naming each trainer's steps and the meeting: starting
/// again would lose their progress.
std::vector<std::int64_t> resume_steps(const deck::PopulationConfig& population,
                                       const std::vector<SavedTrainer>& saved);

}  // namespace tessera::train
