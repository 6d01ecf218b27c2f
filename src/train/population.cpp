#include "tessera/train/population.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/timed.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/signals.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/timer.hpp"
#include "tessera/io/checkpoint.hpp"
#include "tessera/io/checkpoint_format.hpp"
#include "tessera/io/dataset.hpp"
#include "tessera/io/hdf5.hpp"
#include "tessera/kernels/reduce.hpp"
#include "tessera/nn/factory.hpp"
#include "tessera/parallel/registry.hpp"
#include "tessera/train/trainer.hpp"

#include "records.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>

namespace tessera::train {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// memcpy that takes an empty range (no hyper-parameters: a null data()) as nothing to do.
void copy_bytes(void* to, const void* from, size_t bytes) {
  if (bytes > 0) {
    std::memcpy(to, from, bytes);
  }
}

std::string trainer_folder(const std::string& folder, int trainer) {
  return fmt::format("{}/trainer-{}", folder, trainer);
}

// Lines of one trainer, prefixed with its name.
class PrefixReporter final : public Reporter {
 public:
  PrefixReporter(Reporter& out, std::string prefix) : m_out(out), m_prefix(std::move(prefix)) {}
  void info(const std::string& line) override { m_out.info(m_prefix + line); }
  void warning(const std::string& line) override { m_out.warning(m_prefix + line); }

 private:
  Reporter& m_out;
  std::string m_prefix;
};

// Higher is better: accuracy for classification (and language models), minus the loss else.
double score_of(const deck::Deck& d, const Evaluation& e) {
  return d.model.loss == deck::LossKind::softmax_cross_entropy ? e.metric : -e.loss;
}

std::string score_text(const deck::Deck& d, double score) {
  return d.model.loss == deck::LossKind::softmax_cross_entropy
             ? fmt::format("accuracy {:.2f}%", 100.0 * score)
             : fmt::format("loss {:.4g}", -score);
}

// Appends one JSON line (one write: lines of several trainers never interleave).
void append_line(const std::string& path, const std::string& line) {
  write_text(path, line + "\n", std::ios::app);
}

// The population as one trainer sees it: its hyper-parameters, lineage and exchanges.
class Population {
 public:
  Population(const std::string& text, const std::string& file,
             const std::vector<std::string>& overrides, const deck::Deck& base, int trainer,
             int per_trainer, MPI_Comm world, Trainer& t, Reporter& out, Reporter& console)
      : m_text(text),
        m_file(file),
        m_overrides(overrides),
        m_base(base),
        m_pop(base.population),
        m_k(trainer),
        m_trainers(base.parallel.trainers),
        m_per(per_trainer),
        m_t(t),
        m_out(out),
        m_console(console),
        m_channel(world),
        m_path(base.run.output + "/population.jsonl") {
    m_across = comm::MpiCommunicator::split(world, m_t.grid().trainer().rank(), m_k, "trainers");
    // With averages a stop waits for the next one (set_stop_rule): until then the partner of a
    // round trains on and comes to it, so a round is not left for a stop signal.
    m_channel.set_leave_on_stop(m_pop.average_every == 0);
    for (const deck::HyperSpec& h : m_pop.hyper) {
      m_hyper.push_back(deck::hyper_value(m_pop, h, m_k, m_trainers));
      if (h.integer) {
        m_hyper.back() = std::round(m_hyper.back());
      }
    }
    if (!m_pop.validation.empty()) {
      m_validation_samples = m_t.split("population.validation").samples;  // >= the trainers
    }
  }

  // Where a restarted population stands: this trainer's hyper-parameters, lineage, best score
  // and missed exchanges, from population.jsonl (the restart dropped the records after its step).
  void resume() {
    std::ifstream in(m_path);
    std::string line;
    const std::string me = fmt::format("\"trainer\": {},", m_k);
    while (std::getline(in, line)) {
      if (!whole_record(line) || line.find(me) == std::string::npos) {
        continue;
      }
      if (line.find("\"kind\": \"missed\"") != std::string::npos) {
        const std::optional<double> partner = record_number(line, "partner");
        const std::optional<double> step = record_number(line, "step");
        if (partner && step) {
          m_missed.push_back(fmt::format("step {}: trainer {}", static_cast<std::int64_t>(*step),
                                         static_cast<int>(*partner)));
        }
        continue;
      }
      if (line.find("\"kind\": \"state\"") == std::string::npos) {
        continue;
      }
      const size_t v = line.find("\"values\": [");
      const size_t l = line.find("\"lineage\": [");
      if (v == std::string::npos || l == std::string::npos) {
        continue;
      }
      std::vector<double> values;
      bool numbers = true;
      std::istringstream vs(line.substr(v + 11, line.find(']', v) - v - 11));
      for (std::string x; std::getline(vs, x, ',');) {
        char* end = nullptr;
        values.push_back(std::strtod(x.c_str(), &end));
        numbers = numbers && end != x.c_str();
      }
      if (!numbers) {
        continue;  // a damaged record: the one before stands
      }
      if (values.size() == m_hyper.size()) {
        m_hyper = values;
      }
      m_lineage.clear();
      const std::string body = line.substr(l + 12, line.rfind(']') - l - 12);
      for (size_t p = body.find('"'); p != std::string::npos; p = body.find('"', p)) {
        const size_t e = body.find('"', p + 1);
        if (e == std::string::npos) {
          break;
        }
        m_lineage.push_back(body.substr(p + 1, e - p - 1));
        p = e + 1;
      }
      if (const std::optional<double> best = record_number(line, "best")) {
        m_best = *best;
      }
      if (const std::optional<double> step = record_number(line, "step")) {
        m_state_step = static_cast<std::int64_t>(*step);
      }
    }
    retune();
  }

  // Records this trainer's state (hyper-parameters, lineage, best score) at `step`.
  void record_state(std::int64_t step) {
    if (!leader()) {
      return;
    }
    std::vector<std::string> lineage;
    for (const std::string& l : m_lineage) {
      lineage.push_back(json_string(l));
    }
    std::vector<std::string> values;
    for (double x : m_hyper) {
      values.push_back(fmt::format("{:.17g}", x));
    }
    append_line(
        m_path,
        fmt::format(
            R"({{"kind": "state", "trainer": {}, "step": {}, "values": [{}], "best": {}, "lineage": [{}]}})",
            m_k, step, fmt::join(values, ", "),
            std::isfinite(m_best) ? fmt::format("{:.9g}", m_best) : "null",
            fmt::join(lineage, ", ")));
  }

  std::string hyper_text() const { return hyper_text(m_hyper); }
  std::string hyper_text(const std::vector<double>& values) const {
    std::vector<std::string> parts;
    for (size_t i = 0; i < values.size(); ++i) {
      parts.push_back(fmt::format("{} {:.4g}", m_pop.hyper[i].key, values[i]));
    }
    return parts.empty() ? std::string("(deck)") : join(parts, ", ");
  }

  void on_step(std::int64_t step, std::int64_t total) {
    m_last_step = step;
    if (m_pop.average_every > 0 && (step % m_pop.average_every == 0 || step == total)) {
      average();  // and after the last step: the trainers end with one model
    }
    if (m_pop.score_average && m_pop.algorithm != "independent" && !m_failed) {
      accumulate();  // the rounds' averages
    }
    if (m_pop.every > 0 && step % m_pop.every == 0 && step < total) {
      if (hold_round(step)) {
        record_state(step);
      }
      m_window_steps = 0;  // the next round scores the weights of the steps after this one
    }
  }

  // The LTFB or PBT round at `step` (a multiple of population.every). False when this trainer
  // left it for a stop signal (the same on all its ranks): the round is not complete.
  bool hold_round(std::int64_t step) {
    m_left = false;
    if (m_pop.algorithm == "ltfb") {
      ltfb(step, step / m_pop.every);
    } else if (m_pop.algorithm == "pbt") {
      pbt(step, step / m_pop.every);
    }
    int left = m_left ? 1 : 0;  // PBT's scores: only the leader exchanges them
    m_t.grid().trainer().allreduce(comm::Buffer(&left, 1), {comm::ReduceOp::max})->wait();
    return left == 0;
  }

  // A restart from the checkpoint a stop signal wrote at a round's step after this trainer had
  // left the round (no state record at the step): the round is held now, before training on —
  // its partners resume before the round (resume_steps) and meet it there. The checkpoint is
  // then written again with the round's outcome, between a "held" record and the state record
  // that marks it as after the round. False when a stop signal leaves the round again: the
  // trainer trains no further.
  bool finish_left_round(std::int64_t total) {
    const std::int64_t step = m_last_step;
    const bool rounds = m_pop.algorithm == "ltfb" || m_pop.algorithm == "pbt";
    if (!rounds || m_pop.every <= 0 || step <= 0 || step % m_pop.every != 0 || step >= total ||
        m_state_step >= step) {
      return true;
    }
    say(
        fmt::format("{} step {}: this trainer's checkpoint was saved as it left the round for a "
                    "stop signal: the round is held now",
                    m_pop.algorithm, step));
    if (!hold_round(step)) {
      return false;
    }
    // While the checkpoint is rewritten it is of no known side of the round: a "held" record
    // first, so that a restart after a kill in between takes neither (resume_steps).
    if (leader()) {
      append_line(m_path,
                  fmt::format(R"({{"kind": "held", "trainer": {}, "step": {}}})", m_k, step));
    }
    m_t.save_again("the round held on resuming");
    record_state(step);
    return true;
  }

  // Messages of exchanges a trainer left or gave up on, still in flight: taken and discarded, so
  // that none is left unmatched at the job's end. Collective over the world.
  void drain() { (void)m_channel.drain(10.0); }

  // The stop signal the population agreed on at `step`'s average; 0 at a step without one.
  int stop_at(std::int64_t step) const { return m_stop_at.first == step ? m_stop_at.second : 0; }

  // Local SGD starts every trainer from trainer 0's initial model (each keeps its own data order).
  void common_start() {
    for (Tensor& t : m_t.state_tensors(false)) {
      m_across->broadcast(comm::Buffer(t), {0})->wait();
    }
  }

  // Averages the parameters and buffers of the trainers that have not failed (local SGD),
  // collective over all of them.
  void average() {
    float alive = m_failed ? 0.0F : 1.0F;
    m_across->allreduce(comm::Buffer(&alive, 1))->wait();
    // A stop signal any rank has received by now stops every trainer after this average, at the
    // same step (its counterparts in the other trainers, then its own trainer's ranks, agree).
    int stop = signals::stop_signal();
    m_across->allreduce(comm::Buffer(&stop, 1), {comm::ReduceOp::max})->wait();
    m_t.grid().trainer().allreduce(comm::Buffer(&stop, 1), {comm::ReduceOp::max})->wait();
    if (stop != 0) {
      signals::note_stop_signal(stop);
    }
    m_stop_at = {m_last_step, stop};
    for (Tensor& t : m_t.state_tensors(false)) {
      if (m_failed) {
        t.zero();
      }
      m_across->allreduce(comm::Buffer(t))->wait();
      kernels::scale(1.0F / std::max(alive, 1.0F), t);
    }
  }

  // After this trainer failed (`failure`, agreed by its ranks) at the step after the last one
  // seen: it takes part in the population's rounds without training (its score the worst, its
  // model never taken), so that no partner waits for it in vain, until a round hands it a
  // healthy trainer's model — LTFB: its partner's; PBT: a donor's, the failed being the worst —
  // with that model's optimizer state and hyper-parameters (PBT explores them as for any copy).
  // Returns the step it was so revived at, from which the caller trains it on, or `total` when no
  // round came (local SGD's averages never revive: they hold no optimizer state).
  std::int64_t serve_after_failure(std::int64_t total, const std::string& failure) {
    m_failed = true;
    m_failure = failure;
    for (std::int64_t step = m_last_step + 1; step <= total; ++step) {
      on_step(step, total);
      if (!m_failed) {
        return step;
      }
      if (stop_at(step) != 0) {
        return total;  // the population stops here (averages): it serves no further
      }
    }
    return total;
  }
  void set_start(std::int64_t step) { m_last_step = step; }

  // population.score = "average": adds this step's weights and buffers to the window's sums.
  void accumulate() {
    const std::vector<Tensor> w = m_t.state_tensors(false);
    if (m_window.empty()) {
      for (const Tensor& t : w) {
        m_window.push_back(Tensor::uninitialized("population::window", t.shape()));
      }
    }
    for (size_t i = 0; i < w.size(); ++i) {
      if (m_window_steps == 0) {
        m_window[i].copy_from(w[i]);
      } else {
        kernels::axpy(1.0F, w[i], m_window[i]);
      }
    }
    ++m_window_steps;
  }

  // The window's sums divided by its steps: the window then holds the average (of one step).
  // Without a step in it (a failed trainer), the model as it is.
  void window_average() {
    if (m_window_steps == 1) {
      return;
    }
    if (m_window_steps == 0) {
      accumulate();
      return;
    }
    for (Tensor& t : m_window) {
      kernels::scale(1.0F / static_cast<float>(m_window_steps), t);
    }
    m_window_steps = 1;
  }

  // `score`, run on the average of the weights (and buffers) since the last round when
  // population.score = "average", else on the model as it is.
  template <class Scorer>
  Score round_score(Scorer score) {
    if (!m_pop.score_average) {
      return score();
    }
    window_average();
    std::vector<Tensor> w = m_t.state_tensors(false);
    std::vector<Tensor> kept;
    for (size_t i = 0; i < w.size(); ++i) {
      kept.push_back(w[i].clone("population::kept"));
      w[i].copy_from(m_window[i]);
    }
    const Score s = score();
    for (size_t i = 0; i < w.size(); ++i) {
      w[i].copy_from(kept[i]);
    }
    return s;
  }

  // The score of the model as it is on this trainer's slice of population.validation (LTFB: both
  // models of a pair are scored on the same slice, so the comparison is fair).
  Score score_slice() {
    const Range slice = block_range(m_validation_samples, m_trainers, m_k);
    return validation_score(m_base, m_t.evaluate(m_pop.validation, slice));
  }

  // The score of the model as it is on the whole of population.validation (PBT ranks trainers by
  // their scores: on slices of their own, an easier slice would outrank a better model).
  Score score_whole() {
    return validation_score(m_base, m_t.evaluate(m_pop.validation, Range{0, m_validation_samples}));
  }

  // The score a trainer is ranked by, in rounds and on the leaderboard: on its slice under LTFB
  // (where a pair compares two models on one slice), on the whole split otherwise.
  Score score_own() { return m_pop.algorithm == "ltfb" ? score_slice() : score_whole(); }

  // The combination of the trainers' final models, then the leaderboard. Collective over the world.
  // `failure`: this trainer's error ("" when it trained to the end); `stopped`: a stop signal
  // reached some trainer (no combination then: the population resumes later).
  void finish(const RunSummary& summary, comm::Communicator& world, bool stopped,
              const std::string& failure) {
    double final_test = std::nan("");
    if (summary.final_eval) {
      final_test = score_of(m_base, *summary.final_eval);
    }
    std::vector<int> failed(static_cast<size_t>(m_trainers), 0);
    failed[static_cast<size_t>(m_k)] = failure.empty() ? 0 : 1;
    m_across->allreduce(comm::Buffer(failed), {comm::ReduceOp::max})->wait();
    if (!m_pop.validation.empty() && !summary.stopped && failure.empty()) {
      raise_best(score_own().value);
    }
    std::string combined;
    if (m_pop.combine != "none" && !stopped && std::count(failed.begin(), failed.end(), 0) > 0) {
      combined = combine(final_test, failed);
    }
    if (!summary.stopped && failure.empty()) {
      record_state(summary.steps);
    }
    // The leaderboard: every trainer leader's line, gathered over the world.
    std::string mine;
    if (leader()) {
      mine = fmt::format("{}\t{}\t{}\t{}\t{}\t{}", m_k, hyper_text(),
                         std::isfinite(m_best) ? score_text(m_base, m_best) : std::string("-"),
                         !failure.empty()            ? "failed: " + failure
                         : std::isfinite(final_test) ? score_text(m_base, final_test)
                                                     : std::string("-"),
                         m_lineage.empty() ? std::string("own weights") : join(m_lineage, "; "),
                         m_missed.empty() ? std::string("-") : join(m_missed, "; "));
    }
    const std::vector<std::string> rows = comm::allgather_text(world, mine);
    if (world.rank() != 0) {
      return;
    }
    std::string table = fmt::format(
        "population: {} trainers, {}{}\n  trainer | hyper-parameters | best validation | test | "
        "lineage | missed exchanges\n",
        m_trainers, m_pop.algorithm,
        m_pop.average_every > 0 ? fmt::format(", averaged every {} steps", m_pop.average_every)
                                : std::string());
    for (const std::string& row : rows) {
      if (row.empty()) {
        continue;
      }
      std::vector<std::string> cells;
      std::istringstream in(row);
      for (std::string c; std::getline(in, c, '\t');) {
        cells.push_back(c);
      }
      table += "  " + fmt::format("{}", fmt::join(cells, " | ")) + "\n";
      append_line(
          m_path,
          fmt::format(
              R"({{"kind": "leaderboard", "trainer": {}, "hyper": {}, "best": {}, "test": {}, "lineage": {}, "missed": {}}})",
              cells.at(0), json_string(cells.at(1)), json_string(cells.at(2)),
              json_string(cells.at(3)), json_string(cells.at(4)), json_string(cells.at(5))));
    }
    m_console.info(table + combined);
  }

 private:
  bool leader() const { return m_t.grid().trainer().rank() == 0; }
  // The world rank of this rank's counterpart in trainer `j`.
  int counterpart(int j) const { return j * m_per + m_t.grid().trainer().rank(); }
  int leader_of(int j) const { return j * m_per; }

  // All ranks of the trainer agree: true only when `ok` holds on every one.
  bool all(bool ok) {
    int v = ok ? 1 : 0;
    m_t.grid().trainer().allreduce(comm::Buffer(&v, 1), {comm::ReduceOp::min})->wait();
    return v == 1;
  }
  template <class T>
  void bcast(T* values, Index n) {
    m_t.grid().trainer().broadcast(comm::Buffer(values, n), {0})->wait();
  }

  // This rank's state as bytes: the hyper-parameters, whether this trainer has failed (1.0) or
  // not (0.0), then every tensor (with population.score = "average", the window's average last).
  std::vector<Tensor> packed_tensors() {
    std::vector<Tensor> tensors = m_t.state_tensors();
    if (m_pop.score_average) {
      window_average();
      tensors.insert(tensors.end(), m_window.begin(), m_window.end());
    }
    return tensors;
  }
  std::vector<char> pack() {
    std::vector<Tensor> tensors = packed_tensors();
    size_t bytes = (m_hyper.size() + 1) * sizeof(double);
    for (const Tensor& t : tensors) {
      bytes += static_cast<size_t>(t.numel()) * sizeof(float);
    }
    std::vector<char> out(bytes);
    char* p = out.data();
    copy_bytes(p, m_hyper.data(), m_hyper.size() * sizeof(double));
    p += m_hyper.size() * sizeof(double);
    const double failed = m_failed ? 1.0 : 0.0;
    copy_bytes(p, &failed, sizeof failed);
    p += sizeof failed;
    for (const Tensor& t : tensors) {
      copy_bytes(p, t.host_view().data(), static_cast<size_t>(t.numel()) * sizeof(float));
      p += t.numel() * static_cast<Index>(sizeof(float));
    }
    return out;
  }
  // Whether the trainer that packed `bytes` had failed.
  bool packed_failed(const std::vector<char>& bytes) const {
    double failed = 0.0;
    copy_bytes(&failed, bytes.data() + m_hyper.size() * sizeof(double), sizeof failed);
    return failed != 0.0;
  }
  // Loads `bytes` (pack()'s layout) into the model and optimizer; returns its hyper-parameters.
  std::vector<double> unpack(const std::vector<char>& bytes) {
    std::vector<Tensor> tensors = packed_tensors();
    std::vector<double> hyper(m_hyper.size());
    const char* p = bytes.data();
    copy_bytes(hyper.data(), p, hyper.size() * sizeof(double));
    p += (hyper.size() + 1) * sizeof(double);
    for (Tensor& t : tensors) {
      const Tensor::HostView h = t.host_staging();
      copy_bytes(h.data(), p, static_cast<size_t>(t.numel()) * sizeof(float));
      t.store(h);
      p += t.numel() * static_cast<Index>(sizeof(float));
    }
    return hyper;
  }

  // The trainer's optimizer takes m_hyper's values from the next step on.
  void retune() {
    std::vector<std::string> hyper;
    for (size_t i = 0; i < m_hyper.size(); ++i) {
      hyper.push_back(m_pop.hyper[i].key + "=" + deck::hyper_text(m_pop.hyper[i], m_hyper[i]));
    }
    deck::Deck d;
    comm::agree(m_t.grid().trainer(),
                [&] { d = trainer_deck(m_text, m_file, m_overrides, m_base, m_k, hyper); });
    m_t.retune(d);
  }

  // How long an exchange waits: population.timeout; a failed trainer, which no longer trains,
  // waits as long as its partner takes to reach the round.
  double wait_s() const { return m_failed ? 1e9 : m_pop.timeout; }

  int tag(std::int64_t round, int kind) const {
    return static_cast<int>((round % 100000) * 8 + kind);
  }

  void ltfb(std::int64_t step, std::int64_t round) {
    const int partner = ltfb_partners(m_pop, m_trainers, round)[static_cast<size_t>(m_k)];
    if (partner < 0) {
      return;  // the odd one out sits this round out
    }
    const Score own = m_failed ? Score{-kInf, 0.0} : round_score([&] { return score_slice(); });
    std::vector<char> mine = pack();
    std::vector<char> theirs(mine.size());
    const bool ok =
        all(m_channel.exchange(counterpart(partner), mine.data(), mine.size(), counterpart(partner),
                               theirs.data(), theirs.size(), tag(round, 1), wait_s()));
    if (!ok) {
      missed(step, partner, "tournament");
      return;
    }
    const bool partner_failed = packed_failed(theirs);  // the same on all its ranks
    if (m_failed) {
      if (!partner_failed) {  // the partner's model, healthy, whatever it scores
        revive(step, partner, unpack(theirs), {});
      }
      return;
    }
    if (partner_failed) {
      say(fmt::format("ltfb step {}: kept this model (trainer {} has failed)", step, partner));
      raise_best(own.value);
      return;
    }
    const std::vector<double> hyper = unpack(theirs);
    const Score other = round_score([&] { return score_slice(); });
    const bool take = beats(other, own, m_pop.significance);
    if (take) {
      m_lineage.push_back(fmt::format("step {}: took trainer {}'s model ({}; {} vs {})", step,
                                      partner, hyper_text(hyper), score_text(m_base, other.value),
                                      score_text(m_base, own.value)));
      m_hyper = hyper;
      retune();
      say(
          fmt::format("ltfb step {}: trainer {}'s model scores {} against this one's {}: taken, "
                      "with {}",
                      step, partner, score_text(m_base, other.value), score_text(m_base, own.value),
                      hyper_text()));
    } else {
      (void)unpack(mine);
      say(fmt::format("ltfb step {}: kept this model ({} against trainer {}'s {}{})", step,
                      score_text(m_base, own.value), partner, score_text(m_base, other.value),
                      not_significant(other, own)));
    }
    raise_best(take ? other.value : own.value);  // the model it holds
  }

  // The best validation score this trainer has seen (the leaderboard's), raised to `score`.
  void raise_best(double score) {
    m_best = std::isfinite(m_best) ? std::max(m_best, score) : score;
  }

  // When `better` scored higher than `kept` but not by population.significance standard errors:
  // ": N standard errors above it, population.significance = z" for the line of a kept model.
  std::string not_significant(const Score& better, const Score& kept) const {
    if (!(better.value > kept.value)) {
      return std::string();
    }
    return fmt::format(": {:.1f} standard errors above it, population.significance = {:g}",
                       (better.value - kept.value) / std::hypot(better.error, kept.error),
                       m_pop.significance);
  }

  void pbt(std::int64_t step, std::int64_t round) {
    const Score own = m_failed ? Score{-kInf, 0.0} : round_score([&] { return score_whole(); });
    if (!m_failed) {
      raise_best(own.value);
    }
    // Every leader sends its score and its standard error to every other, each exchange timed.
    std::vector<double> scores(static_cast<size_t>(m_trainers), std::nan(""));
    std::vector<double> errors(static_cast<size_t>(m_trainers), 0.0);
    scores[static_cast<size_t>(m_k)] = own.value;
    errors[static_cast<size_t>(m_k)] = own.error;
    if (leader()) {
      for (int j = 0; j < m_trainers; ++j) {
        if (j == m_k) {
          continue;
        }
        const double mine[2] = {own.value, own.error};
        double theirs[2] = {0.0, 0.0};
        if (m_channel.exchange(leader_of(j), mine, sizeof mine, leader_of(j), theirs, sizeof theirs,
                               tag(round, 2), wait_s())) {
          scores[static_cast<size_t>(j)] = theirs[0];
          errors[static_cast<size_t>(j)] = theirs[1];
        } else {
          missed(step, j, "score exchange");
        }
      }
    }
    bcast(scores.data(), static_cast<Index>(scores.size()));
    bcast(errors.data(), static_cast<Index>(errors.size()));
    const auto score = [&](int j) {
      return Score{scores[static_cast<size_t>(j)], errors[static_cast<size_t>(j)]};
    };
    // Ranked best first among the scores heard (ties: the lower trainer first).
    std::vector<int> ranked;
    for (int j = 0; j < m_trainers; ++j) {
      if (!std::isnan(scores[static_cast<size_t>(j)])) {
        ranked.push_back(j);
      }
    }
    std::stable_sort(ranked.begin(), ranked.end(), [&](int a, int b) {
      return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
    });
    const auto n = static_cast<size_t>(
        std::max(1.0, std::floor(m_pop.fraction * static_cast<double>(ranked.size()))));
    if (ranked.size() < 2) {
      return;
    }
    const auto at =
        static_cast<size_t>(std::find(ranked.begin(), ranked.end(), m_k) - ranked.begin());
    // The donor ranked i-th from the top copies to the trainer i-th from the bottom when its score
    // is population.significance standard errors above that trainer's: both sides decide alike (a
    // failed trainer scores -inf: every healthy one beats it, no failed one does).
    if (at < n) {  // a donor: to the trainer as far from the bottom as this one is from the top
      const int to = ranked[ranked.size() - n + at];
      if (!beats(score(m_k), score(to), m_pop.significance)) {
        return;
      }
      std::vector<char> mine = pack();
      if (!all(m_channel.exchange(counterpart(to), mine.data(), mine.size(), -1, nullptr, 0,
                                  tag(round, 3), wait_s()))) {
        missed(step, to, "copy to it");
      }
    } else if (at >= ranked.size() - n) {
      const int from = ranked[at - (ranked.size() - n)];
      if (!beats(score(from), score(m_k), m_pop.significance)) {
        if (!m_failed) {
          say(fmt::format("pbt step {}: kept this model ({} against trainer {}'s {}{})", step,
                          score_text(m_base, own.value), from,
                          score_text(m_base, scores[static_cast<size_t>(from)]),
                          not_significant(score(from), own)));
        }
        return;
      }
      std::vector<char> theirs = pack();  // the size of the donor's
      if (!all(m_channel.exchange(-1, nullptr, 0, counterpart(from), theirs.data(), theirs.size(),
                                  tag(round, 3), wait_s()))) {
        missed(step, from, "copy from it");
        return;
      }
      // Exploit: the donor's weights, state and hyper-parameters; explore: each drawn anew from
      // its range with probability population.resample, else multiplied by one of
      // population.perturb and kept in its range (Ray Tune's PBT); random numbers from
      // (population.seed, round, trainer, key).
      std::vector<double> hyper = unpack(theirs);
      const std::vector<double> inherited = hyper;
      const rng::CounterRng gen(m_pop.seed,
                                rng::hash_name("pbt") + static_cast<std::uint64_t>(round));
      for (size_t i = 0; i < hyper.size(); ++i) {
        const rng::Philox4x32 r =
            gen.bits(static_cast<std::uint64_t>(m_k) * 1024 + static_cast<std::uint64_t>(i));
        hyper[i] = deck::explore_value(m_pop, m_pop.hyper[i], hyper[i], r.v);
      }
      if (m_failed) {
        revive(step, from, hyper, inherited);
        return;
      }
      m_lineage.push_back(fmt::format("step {}: copied trainer {} ({}; {} vs {}), explored to {}",
                                      step, from, hyper_text(inherited),
                                      score_text(m_base, scores[static_cast<size_t>(from)]),
                                      score_text(m_base, own.value), hyper_text(hyper)));
      m_hyper = hyper;
      retune();
      say(fmt::format("pbt step {}: {} — copied trainer {} ({}), now {}", step,
                      score_text(m_base, own.value), from,
                      score_text(m_base, scores[static_cast<size_t>(from)]), hyper_text()));
    }
  }

  // A failed trainer takes `hyper` with the model and optimizer state just unpacked from trainer
  // `from` (`inherited`: the donor's hyper-parameters before PBT explored; empty under LTFB) and
  // trains again from `step` on.
  void revive(std::int64_t step, int from, const std::vector<double>& hyper,
              const std::vector<double>& inherited) {
    const std::string explored = inherited.empty()
                                     ? std::string()
                                     : fmt::format(" ({}), explored to", hyper_text(inherited));
    m_lineage.push_back(
        fmt::format("step {}: revived with trainer {}'s model{} {} (this trainer "
                    "had failed: {})",
                    step, from, explored, hyper_text(hyper), m_failure));
    m_hyper = hyper;
    m_failed = false;
    m_failure.clear();
    retune();
    say(fmt::format("{} step {}: revived with trainer {}'s model{} {}; trains on", m_pop.algorithm,
                    step, from, explored, hyper_text()));
  }

  void missed(std::int64_t step, int partner, const char* what) {
    if (signals::stop_signal() != 0 && m_pop.average_every == 0) {
      // The job is stopping, no fault of the partner's. The round is not complete: no state
      // record at its step, so that a restart does not take the stop's checkpoint as after it.
      m_left = true;
      say(
          fmt::format("population step {}: the exchange with trainer {} ({}) is left: {} stops "
                      "the job",
                      step, partner, what, signals::name(signals::stop_signal())));
      return;
    }
    m_missed.push_back(fmt::format("step {}: trainer {}", step, partner));
    if (leader()) {
      m_out.warning(
          fmt::format("population step {}: trainer {} did not answer within {} s "
                      "({}): skipped",
                      step, partner, m_pop.timeout, what));
      append_line(
          m_path,
          fmt::format(
              R"({{"kind": "missed", "trainer": {}, "partner": {}, "step": {}, "what": "{}", "timeout": {}}})",
              m_k, partner, step, what, m_pop.timeout));
    }
  }

  void say(const std::string& line) {
    if (leader()) {
      m_out.info(line);
    }
  }

  // The score of the model every trainer holds now (the same on all), on the whole split `spec` of
  // `samples` samples: each trainer scores its slice and the slices are summed.
  double shared_score(const std::string& spec, Index samples) {
    const Range slice = block_range(samples, m_trainers, m_k);
    const Evaluation e = m_t.evaluate(spec, slice);
    std::vector<double> sums{e.metric * static_cast<double>(e.samples),
                             e.loss * static_cast<double>(e.samples),
                             static_cast<double>(e.samples)};
    m_across->allreduce(comm::Buffer(sums))->wait();
    Evaluation all;
    all.metric = sums[0] / sums[2];
    all.loss = sums[1] / sums[2];
    return score_of(m_base, all);
  }

  // Loads into every trainer the average of the final models of the trainers in `members`.
  void load_average(const std::vector<std::vector<float>>& finals,
                    const std::vector<int>& members) {
    std::vector<Tensor> tensors = m_t.state_tensors(false);
    const bool in = std::find(members.begin(), members.end(), m_k) != members.end();
    for (size_t i = 0; i < tensors.size(); ++i) {
      Tensor& t = tensors[i];
      if (in) {
        t.copy_from_host(finals[i]);
      } else {
        t.zero();
      }
      m_across->allreduce(comm::Buffer(t))->wait();
      kernels::scale(1.0F / static_cast<float>(members.size()), t);
    }
  }

  // load_average, then (population.recalibrate) the BatchNorm statistics re-estimated for the
  // averaged weights: what every combined model, and every candidate of the soup, is scored as.
  // The trainers in `ok` (those that trained to the end) estimate, each on its own sample of the
  // training split (its seed), and their estimates are averaged; a failed trainer only takes the
  // average. Returns the training samples the statistics were re-estimated on (0: none).
  Index load_combination(const std::vector<std::vector<float>>& finals,
                         const std::vector<int>& members, const std::vector<int>& ok) {
    load_average(finals, members);
    if (m_pop.recalibrate <= 0) {
      return 0;
    }
    const bool estimates = std::find(ok.begin(), ok.end(), m_k) != ok.end();
    std::vector<double> samples{
        estimates ? static_cast<double>(m_t.recalibrate_norms(m_pop.recalibrate)) : 0.0};
    m_across->allreduce(comm::Buffer(samples))->wait();
    if (samples[0] == 0.0) {
      return 0;  // no BatchNorm in the model
    }
    const float inv = 1.0F / static_cast<float>(ok.size());
    for (Tensor& t : m_t.buffer_tensors()) {
      if (!estimates) {
        t.zero();
      }
      m_across->allreduce(comm::Buffer(t))->wait();
      kernels::scale(inv, t);
    }
    return static_cast<Index>(samples[0]);
  }

  // population.combine: the uniform average or the greedy soup of the final models, written to
  // run.output/combined by trainer 0 and scored on data.test. Returns the report's lines.
  // `failed`: the trainers that failed (left out).
  std::string combine(double own_test, const std::vector<int>& failed) {
    std::vector<std::vector<float>> finals;
    for (const Tensor& t : m_t.state_tensors(false)) {
      finals.push_back(t.to_host());
    }
    std::vector<int> ok;  // the trainers that trained to the end
    for (int j = 0; j < m_trainers; ++j) {
      if (failed[static_cast<size_t>(j)] == 0) {
        ok.push_back(j);
      }
    }
    // Every trainer's final model scored on the whole validation split (slices summed).
    std::vector<double> val(static_cast<size_t>(m_trainers), 0.0);
    for (int j = 0; j < m_trainers && !m_pop.validation.empty(); ++j) {
      if (failed[static_cast<size_t>(j)] == 0) {
        load_combination(finals, {j}, ok);
        val[static_cast<size_t>(j)] = shared_score(m_pop.validation, m_validation_samples);
      }
    }
    std::vector<double> tests(static_cast<size_t>(m_trainers), 0.0);
    tests[static_cast<size_t>(m_k)] = std::isfinite(own_test) ? own_test : 0.0;
    m_across->allreduce(comm::Buffer(tests))->wait();  // each trainer's own final test score
    std::vector<int> members;
    std::string how;
    if (m_pop.combine == "average") {
      members = ok;
      how = "uniform average";
    } else {
      std::vector<int> order = ok;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return val[static_cast<size_t>(a)] > val[static_cast<size_t>(b)];
      });
      members = {order[0]};
      double best = val[static_cast<size_t>(order[0])];
      for (size_t i = 1; i < order.size(); ++i) {
        std::vector<int> candidate = members;
        candidate.push_back(order[i]);
        load_combination(finals, candidate, ok);
        const double s = shared_score(m_pop.validation, m_validation_samples);
        if (s >= best) {
          members = candidate;
          best = s;
        }
      }
      how = "greedy soup";
    }
    const Index recalibrated = load_combination(finals, members, ok);
    std::string lines =
        fmt::format("combined ({}) of trainers [{}]", how, fmt::join(members, ", "));
    if (recalibrated > 0) {
      lines +=
          fmt::format(" (BatchNorm statistics re-estimated on {} training samples)", recalibrated);
    }
    if (!m_pop.validation.empty()) {
      lines += ": validation " +
               score_text(m_base, shared_score(m_pop.validation, m_validation_samples));
    }
    double mean = 0.0;  // of the members' own test scores
    for (int j : members) {
      mean += tests[static_cast<size_t>(j)];
    }
    mean /= static_cast<double>(members.size());
    double all = 0.0;  // of every trainer that trained to the end
    for (int j : ok) {
      all += tests[static_cast<size_t>(j)] / static_cast<double>(ok.size());
    }
    if (!m_base.data.test.empty()) {
      const double s = shared_score(m_base.data.test, m_t.split("data.test").samples);
      lines +=
          fmt::format(", test {} (its ingredients' mean: {}; all trainers' mean: {})",
                      score_text(m_base, s), score_text(m_base, mean), score_text(m_base, all));
      if (leader() && m_k == 0) {
        append_line(
            m_path,
            fmt::format(
                R"({{"kind": "combined", "how": "{}", "members": [{}], "test": {:.9g}, "ingredients_mean_test": {:.9g}, "trainers_mean_test": {:.9g}}})",
                how, fmt::join(members, ", "), s, mean, all));
      }
    }
    if (m_k == 0) {
      m_t.save_to(m_base.run.output + "/combined", "population.combine", 1);
      lines += fmt::format("\ncombined model: {}/combined/", m_base.run.output);
    }
    return lines + "\n";
  }

  const std::string m_text;
  const std::string m_file;
  const std::vector<std::string> m_overrides;
  const deck::Deck& m_base;
  const deck::PopulationConfig& m_pop;
  const int m_k;
  const int m_trainers;
  const int m_per;
  Trainer& m_t;
  Reporter& m_out;      // this trainer's lines ("[t<k>] ...")
  Reporter& m_console;  // the population's (the leaderboard)
  comm::TimedChannel m_channel;
  std::unique_ptr<comm::MpiCommunicator> m_across;  // this rank's counterparts in every trainer
  const std::string m_path;
  Index m_validation_samples = 0;
  std::vector<double> m_hyper;
  std::vector<std::string> m_lineage;
  std::vector<std::string> m_missed;
  double m_best = std::nan("");
  bool m_failed = false;           // serve_after_failure, until revived
  bool m_left = false;             // this round's exchange was left for a stop signal
  std::int64_t m_state_step = -1;  // the step of the last state record resume() read
  std::string m_failure;           // why it failed (the lineage's revival entry)
  std::int64_t m_last_step = 0;    // the last step on_step saw
  // The step of the last average and the stop signal the job agreed on there (average_every).
  std::pair<std::int64_t, int> m_stop_at{-1, 0};
  // population.score = "average": the sums of the weights and buffers of the steps since the last
  // round (or their average, when m_window_steps is 1 after window_average).
  std::vector<Tensor> m_window;
  std::int64_t m_window_steps = 0;
};

// What a population's restart finds on disk: each trainer's checkpoints (with the length of the
// run that saved each, read from its root; 0 when the file cannot say) and the steps of its state
// and "held" records in population.jsonl at `path`.
std::vector<SavedTrainer> saved_trainers(const std::vector<deck::Deck>& decks,
                                         const std::string& path) {
  std::vector<SavedTrainer> saved(decks.size());
  for (size_t k = 0; k < decks.size(); ++k) {
    // Checkpoints newer than the one `latest` names are of a future a restart abandoned (steps
    // trained again since, from an older one): not this trainer's state.
    std::int64_t latest = std::numeric_limits<std::int64_t>::max();
    try {
      const std::string file = io::resolve_restart("auto", decks[k].checkpoint.dir);
      if (!file.empty()) {
        latest = io::checkpoint_step(std::filesystem::path(file).filename().string());
      }
    } catch (const Error&) {
      // a damaged marker: every checkpoint counts
    }
    for (const std::string& f : io::checkpoints_in(decks[k].checkpoint.dir)) {
      const std::int64_t step = io::checkpoint_step(std::filesystem::path(f).filename().string());
      if (step > latest) {
        continue;
      }
      std::int64_t total = 0;
      try {
        const io::File file = io::open_checkpoint(f);
        const io::CheckpointHeader h = io::read_header(file, io::checkpoint_tensors(file), "");
        total = h.info ? h.info->total_steps : 0;
      } catch (const Error&) {
        // the restart itself says what is wrong with the file
      }
      saved[k].checkpoints[step] = total;
    }
  }
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const bool state = line.find(R"("kind": "state")") != std::string::npos;
    if (!whole_record(line) || (!state && line.find(R"("kind": "held")") == std::string::npos)) {
      continue;
    }
    const std::optional<double> k = record_number(line, "trainer");
    const std::optional<double> step = record_number(line, "step");
    if (k && step && *k >= 0 && *k < static_cast<double>(saved.size())) {
      SavedTrainer& t = saved[static_cast<size_t>(*k)];
      (state ? t.states : t.held).insert(static_cast<std::int64_t>(*step));
    }
  }
  return saved;
}

// The first record of population.jsonl: what the population is. A restart resumes the trainers
// and hyper-parameter keys it was saved with: the state records hold the values by position.
std::string population_record(const deck::Deck& d) {
  std::vector<std::string> keys;
  for (const deck::HyperSpec& h : d.population.hyper) {
    keys.push_back(json_string(h.key));
  }
  return fmt::format(R"({{"kind": "population", "trainers": {}, "hyper": [{}], "algorithm": {}}})",
                     d.parallel.trainers, fmt::join(keys, ", "),
                     json_string(d.population.algorithm));
}

// "3 trainers varying "optimizer.lr"" from a population record's text (its trainers and hyper).
std::string population_identity(const std::string& record) {
  const size_t t = record.find("\"trainers\": ");
  const size_t a = record.find(", \"algorithm\": ");
  if (t == std::string::npos || a == std::string::npos || a < t) {
    return "";
  }
  return record.substr(t, a - t);
}

// A restart of the population whose population.jsonl at `path` was written by another one (other
// trainers or hyper-parameter keys): an error, before anything is changed. Another algorithm is
// allowed: a warning (the returned text).
std::string check_same_population(const std::string& path, const deck::Deck& d) {
  std::ifstream in(path);
  if (!in) {
    throw input_error(fmt::format(
        "checkpoint.restart = \"auto\": the trainers have checkpoints, but {} cannot be read "
        "({}): it holds their hyper-parameters and lineage, without which they would resume with "
        "their first values; nothing was changed. Restore it, or start a new population in "
        "another run.output",
        path, std::filesystem::exists(path) ? "not readable" : "missing"));
  }
  std::string saved;
  for (std::string line; std::getline(in, line);) {
    if (whole_record(line) && line.find(R"("kind": "population")") != std::string::npos) {
      saved = line;
      break;
    }
  }
  if (saved.empty()) {
    return "";  // written before the record existed: nothing to compare
  }
  const std::string ours = population_record(d);
  if (population_identity(saved) != population_identity(ours)) {
    throw input_error(fmt::format(
        "checkpoint.restart = \"auto\": {} was written by a population of {}; this deck's is "
        "{}: a population resumes with the trainers and hyper-parameter keys it was saved with "
        "(the trainers' states hold the values in that order); nothing was changed. Another "
        "run.output starts a new population",
        path, population_identity(saved), population_identity(ours)));
  }
  if (saved != ours) {
    // From "algorithm" to the record's end, without its closing brace.
    const auto settings = [](const std::string& record) {
      std::string tail = record.substr(record.find("\"algorithm\""));
      if (!tail.empty() && tail.back() == '}') {
        tail.pop_back();
      }
      return tail;
    };
    return fmt::format("population: {} was written with {}; this run goes on with {}", path,
                       settings(saved), settings(ours));
  }
  return "";
}

// Keeps each trainer's records of population.jsonl up to its restart's step (`steps`, -1 for a
// trainer that starts afresh: none of its records): the later ones and the end's (leaderboard,
// combined) go, and so does a line that is not a whole record (a kill in mid-write). Returns the
// number of such damaged lines.
int truncate_records(const std::string& path, const std::vector<std::int64_t>& steps) {
  std::ifstream in(path);
  std::string kept;
  int damaged = 0;
  for (std::string line; std::getline(in, line);) {
    if (!whole_record(line)) {
      damaged += line.empty() ? 0 : 1;
      continue;
    }
    if (line.find("\"kind\": \"leaderboard\"") != std::string::npos ||
        line.find("\"kind\": \"combined\"") != std::string::npos) {
      continue;
    }
    const std::optional<double> k = record_number(line, "trainer");
    const std::optional<double> s = record_number(line, "step");
    if (k && s && *k >= 0 && *k < static_cast<double>(steps.size()) &&
        *s > static_cast<double>(steps[static_cast<size_t>(*k)])) {
      continue;
    }
    kept += line + "\n";
  }
  in.close();
  write_text(path, kept, std::ios::trunc);
  return damaged;
}

}  // namespace

Score validation_score(const deck::Deck& d, const Evaluation& e) {
  double variance = 0.0;
  double n = static_cast<double>(e.samples);
  if (d.model.loss == deck::LossKind::softmax_cross_entropy) {
    variance = e.metric * (1.0 - e.metric);
    n = e.scored;
  } else if (std::isfinite(e.loss_sq)) {
    variance = e.loss_sq - e.loss * e.loss;
  }
  return {score_of(d, e), n > 0.0 && variance > 0.0 ? std::sqrt(variance / n) : 0.0};
}

bool beats(const Score& a, const Score& b, double z) {
  return a.value - b.value > z * std::hypot(a.error, b.error);
}

std::vector<int> ltfb_partners(const deck::PopulationConfig& population, int trainers,
                               std::int64_t round) {
  // A permutation every trainer draws alike from (population.seed, round), paired in order.
  std::vector<int> order(static_cast<size_t>(trainers));
  std::iota(order.begin(), order.end(), 0);
  const rng::CounterRng gen(population.seed,
                            rng::hash_name("ltfb") + static_cast<std::uint64_t>(round));
  for (size_t i = order.size() - 1; i > 0; --i) {
    const rng::Philox4x32 r = gen.bits(i);
    std::swap(order[i], order[r.v[0] % (i + 1)]);
  }
  std::vector<int> partner(order.size(), -1);
  for (size_t at = 0; at + 1 < order.size(); at += 2) {
    partner[static_cast<size_t>(order[at])] = order[at + 1];
    partner[static_cast<size_t>(order[at + 1])] = order[at];
  }
  return partner;
}

std::vector<std::int64_t> resume_steps(const deck::PopulationConfig& pop,
                                       const std::vector<SavedTrainer>& saved) {
  const auto trainers = static_cast<int>(saved.size());
  const bool tournament = pop.algorithm == "ltfb" || pop.algorithm == "pbt";
  const std::int64_t every = tournament ? pop.every : std::int64_t{0};
  const std::int64_t average = pop.average_every;
  // A checkpoint as the population's meetings see it: the rounds and averages the trainer had
  // been through when it saved (rounds at the multiples of `every` below the run's total, a
  // round at the checkpoint's own step only when the trainer's state record says it completed
  // it; averages at the multiples of `average` below the total and at the end).
  struct Point {
    std::int64_t step = -1;  // -1: afresh (the trainer saved nothing)
    std::int64_t rounds = 0;
    std::int64_t averages = 0;
  };
  std::vector<std::vector<Point>> points(saved.size());  // per trainer, newest first
  bool any = false;
  for (size_t k = 0; k < saved.size(); ++k) {
    const SavedTrainer& t = saved[k];
    for (auto it = t.checkpoints.rbegin(); it != t.checkpoints.rend(); ++it) {
      const auto [step, total] = *it;
      any = true;
      const bool end = total > 0 && step >= total;
      const bool at_round = every > 0 && !end && step > 0 && step % every == 0;
      if (at_round && t.held.count(step) != 0 && t.states.count(step) == 0) {
        continue;  // rewritten after a round held on resuming, its state record never written
      }
      Point p{step, 0, 0};
      if (every > 0 && step > 0) {
        p.rounds =
            (end ? total - 1 : step - 1) / every + (at_round && t.states.count(step) ? 1 : 0);
      }
      if (average > 0) {
        p.averages = end ? (total - 1) / average + 1 : step / average;
      }
      points[k].push_back(p);
    }
    if (t.checkpoints.empty()) {  // a fresh start with averages is collective: not beside a resume
      points[k].push_back(Point{-1, 0, average > 0 ? -1 : 0});
    }
  }
  std::vector<std::int64_t> steps(saved.size(), -1);
  if (!any) {
    return steps;
  }
  const auto refuse = [&](const std::string& why) {
    std::vector<std::string> each;
    for (size_t k = 0; k < saved.size(); ++k) {
      std::vector<std::int64_t> s;
      for (const auto& c : saved[k].checkpoints) {
        s.push_back(c.first);
      }
      each.push_back(s.empty()       ? fmt::format("trainer {} none", k)
                     : s.size() <= 4 ? fmt::format("trainer {} step{} {}", k,
                                                   s.size() == 1 ? "" : "s", fmt::join(s, ", "))
                                     : fmt::format("trainer {} steps {} to {} ({} checkpoints)", k,
                                                   s.front(), s.back(), s.size()));
    }
    return input_error(fmt::format(
        "checkpoint.restart = \"auto\": the trainers' checkpoints ({}) hold no state from which "
        "the population can resume together: {}; nothing was changed. A larger checkpoint.keep "
        "keeps one after a crash; to start again from step 0, use another run.output (or remove "
        "the trainers' checkpoints)",
        fmt::join(each, "; "), why));
  };
  for (int k = 0; k < trainers; ++k) {
    if (points[static_cast<size_t>(k)].empty()) {
      throw refuse(
          fmt::format("trainer {}'s only checkpoints were being rewritten after a round "
                      "held on resuming when the job ended",
                      k));
    }
  }
  if (every == 0 && average == 0) {  // independent trainers never meet: each its own newest
    for (size_t k = 0; k < saved.size(); ++k) {
      steps[k] = points[k].front().step;
    }
    return steps;
  }
  // Trainers that met at a round or an average resume on the same side of it. From every
  // trainer's newest checkpoint, one that is past a meeting a fellow is before goes back to its
  // newest before it, until none is (each step back forced: the newest such state there is).
  std::vector<size_t> at(saved.size(), 0);
  const auto now = [&](int k) -> const Point& {
    return points[static_cast<size_t>(k)][at[static_cast<size_t>(k)]];
  };
  // Trainer j back to its newest checkpoint with `before` true, because of trainer i.
  const auto back = [&](int j, int i, const auto& before, const std::string& meeting) {
    std::vector<Point>& p = points[static_cast<size_t>(j)];
    size_t& a = at[static_cast<size_t>(j)];
    while (a < p.size() && !before(p[a])) {
      ++a;
    }
    if (a == p.size()) {
      throw refuse(fmt::format(
          "trainer {} has none before the {}, which trainer {}'s {} is before (trainers that met "
          "there resume on the same side of it)",
          j, meeting, i,
          now(i).step < 0 ? std::string("fresh start")
                          : fmt::format("newest usable one, step {},", now(i).step)));
    }
  };
  for (bool changed = true; changed;) {
    changed = false;
    std::int64_t rounds = 0;
    for (int k = 0; k < trainers; ++k) {
      rounds = std::max(rounds, now(k).rounds);
    }
    for (std::int64_t r = 1; r <= rounds; ++r) {
      std::vector<std::vector<int>> groups;  // who met at round r
      if (pop.algorithm == "ltfb") {
        const std::vector<int> partner = ltfb_partners(pop, trainers, r);
        for (int k = 0; k < trainers; ++k) {
          if (partner[static_cast<size_t>(k)] > k) {
            groups.push_back({k, partner[static_cast<size_t>(k)]});
          }
        }
      } else {
        groups.emplace_back(static_cast<size_t>(trainers));
        std::iota(groups.back().begin(), groups.back().end(), 0);
      }
      for (const std::vector<int>& g : groups) {
        const auto behind =
            std::find_if(g.begin(), g.end(), [&](int k) { return now(k).rounds < r; });
        if (behind == g.end()) {
          continue;
        }
        for (int j : g) {
          if (now(j).rounds >= r) {
            back(
                j, *behind, [&](const Point& p) { return p.rounds < r; },
                fmt::format("{} round at step {}", pop.algorithm, r * every));
            changed = true;
          }
        }
      }
    }
    if (average > 0) {
      int fewest = 0;
      for (int k = 1; k < trainers; ++k) {
        fewest = now(k).averages < now(fewest).averages ? k : fewest;
      }
      const std::int64_t done = now(fewest).averages;
      for (int j = 0; j < trainers; ++j) {
        if (now(j).averages > done) {
          back(
              j, fewest, [&](const Point& p) { return p.averages <= done; },
              done < 0 ? std::string("common start")
                       : fmt::format("average at step {}", (done + 1) * average));
          changed = true;
        }
      }
    }
  }
  for (int k = 0; k < trainers; ++k) {
    steps[static_cast<size_t>(k)] = now(k).step;
  }
  return steps;
}

deck::Deck trainer_deck(const std::string& text, const std::string& file,
                        const std::vector<std::string>& overrides, const deck::Deck& deck,
                        int trainer, const std::vector<std::string>& hyper) {
  std::vector<std::string> all = overrides;
  for (const std::string& o : deck::trainer_overrides(deck, trainer)) {
    all.push_back(o);
  }
  for (const std::string& o : hyper) {
    all.push_back(o);
  }
  all.push_back("run.output=" +
                nn::to_toml(nn::OptionValue(trainer_folder(deck.run.output, trainer))));
  if (deck.checkpoint.enabled && deck.locations.count("checkpoint.dir") != 0) {
    all.push_back("checkpoint.dir=" +
                  nn::to_toml(nn::OptionValue(trainer_folder(deck.checkpoint.dir, trainer))));
  }
  try {
    return deck::parse(text, file, all);
  } catch (const Error& e) {
    // A value of population.hyper the key's own range refuses: where the deck chose it.
    // (A layer's option is refused naming the layer: model.layers[5] for
    // model.layers[5].linear.out.)
    const std::string& at = e.where().key;
    for (const deck::HyperSpec& h : deck.population.hyper) {
      if (e.where().file == "command line" && !at.empty() &&
          (h.key == at || h.key.rfind(at + ".", 0) == 0)) {
        throw Error(e.message(), h.where).with_exit_code(e.exit_code());
      }
    }
    throw;
  }
}

namespace {
// Trainers given the same hyper-parameters and seed (a list of run.seed values repeating one, a
// grid repeating a point) train the same model: "" when there are none, else a warning naming them.
std::string twin_trainers(const deck::Deck& base) {
  std::vector<std::string> twins;
  std::vector<std::vector<std::string>> settings;
  for (int k = 0; k < base.parallel.trainers; ++k) {
    settings.push_back(deck::trainer_overrides(base, k));
    for (int j = 0; j < k; ++j) {
      if (settings[static_cast<size_t>(j)] == settings.back()) {
        twins.push_back(fmt::format("{} and {} ({})", j, k, fmt::join(settings.back(), ", ")));
        break;  // named with the first of its twins
      }
    }
  }
  if (twins.empty()) {
    return "";
  }
  return fmt::format(
      "population: trainers {} are given the same hyper-parameters and seed: they "
      "train the same model",
      fmt::join(twins, "; "));
}
}  // namespace

std::vector<deck::Deck> trainer_decks(const std::string& text, const std::string& file,
                                      const std::vector<std::string>& overrides,
                                      const deck::Deck& base) {
  std::vector<deck::Deck> decks(static_cast<size_t>(base.parallel.trainers));
  for (int k = 0; k < base.parallel.trainers; ++k) {
    try {
      decks[static_cast<size_t>(k)] = trainer_deck(text, file, overrides, base, k);
    } catch (const Error& e) {
      throw Error(fmt::format("population trainer {}: {}", k, e.message()), e.where())
          .with_exit_code(e.exit_code());
    }
  }
  return decks;
}

int run_population(const std::string& text, const std::string& file,
                   const std::vector<std::string>& overrides, const deck::Deck& base,
                   MPI_Comm world_comm, Reporter& console) {
  comm::MpiCommunicator world(world_comm, "world");
  const int trainers = base.parallel.trainers;
  // The population against the job first (one message on every rank), then every trainer's deck
  // (every rank checks all of them: a trainer's bad value stops the whole job at once).
  comm::agree(world, [&] { (void)resolve_grid(base, world.size()); });
  std::vector<deck::Deck> decks;
  comm::agree(world, [&] {
    decks = trainer_decks(text, file, overrides, base);
    // The validation split before anything is written (the trainers open it after their folders).
    if (!base.population.validation.empty()) {
      const auto [vfile, vsplit] = io::split_file_spec(base.population.validation);
      try {
        (void)io::inspect_split(vfile, vsplit);
      } catch (const Error& e) {
        throw input_error(fmt::format("population.validation: {}", e.message()),
                          base.where("population.validation"));
      }
    }
  });
  const int per = world.size() / trainers;
  const int k = world.rank() / per;
  // A restart: each trainer from its newest checkpoint consistent with the population's meetings
  // (resume_steps); -1 where it starts afresh.
  std::vector<std::int64_t> resume(static_cast<size_t>(trainers), -1);
  const auto any_resumes = [&] {
    return std::any_of(resume.begin(), resume.end(), [](std::int64_t s) { return s >= 0; });
  };
  std::string changed;  // another algorithm than the restarted population's: a warning
  const std::string path = base.run.output + "/population.jsonl";
  if (base.checkpoint.enabled && base.checkpoint.restart == "auto") {
    comm::agree(world, [&] {
      if (world.rank() == 0) {
        try {
          resume = resume_steps(base.population, saved_trainers(decks, path));
        } catch (const Error&) {
          (void)check_same_population(path, base);  // more trainers than saved: said so
          throw;
        }
        if (any_resumes()) {
          changed = check_same_population(path, base);
        }
      }
    });
    world.broadcast(comm::Buffer(resume.data(), static_cast<Index>(resume.size())), {0})->wait();
    // Set on the parsed deck: a deck's text may not name a file for a population.
    deck::CheckpointConfig& c = decks[static_cast<size_t>(k)].checkpoint;
    const std::int64_t mine = resume[static_cast<size_t>(k)];
    c.restart = mine < 0 ? std::string() : c.dir + "/" + io::checkpoint_file_name(mine);
  }
  const bool resumed = any_resumes();
  int damaged = 0;
  comm::agree(world, [&] {
    if (world.rank() == 0) {
      std::filesystem::create_directories(base.run.output);
      if (resumed) {
        damaged = truncate_records(path, resume);
      } else {
        write_text(path, population_record(base) + "\n", std::ios::trunc);
      }
    }
  });
  if (world.rank() == 0 && resumed &&
      std::adjacent_find(resume.begin(), resume.end(), std::not_equal_to<>()) != resume.end()) {
    std::vector<std::string> each;
    for (int j = 0; j < trainers; ++j) {
      const std::int64_t step = resume[static_cast<size_t>(j)];
      each.push_back(step < 0 ? fmt::format("trainer {} afresh (it saved nothing)", j)
                              : fmt::format("trainer {} at step {}", j, step));
    }
    console.info(fmt::format(
        "population: the trainers resume from their own newest checkpoints{}: {}",
        base.population.algorithm == "independent" && base.population.average_every == 0
            ? " (independent trainers need no step in common)"
            : " (each on the same side of every round and average as the trainers it met there)",
        fmt::join(each, ", ")));
  }
  if (!changed.empty()) {
    console.warning(changed);
  }
  if (world.rank() == 0) {
    if (const std::string twins = twin_trainers(base); !twins.empty()) {
      console.warning(twins);
    }
  }
  if (damaged > 0) {
    console.info(
        fmt::format("population: {} damaged line{} of {}/population.jsonl dropped (a "
                    "record cut short, as by a kill in mid-write)",
                    damaged, damaged == 1 ? "" : "s", base.run.output));
  }
  PrefixReporter out(console, fmt::format("[t{}] ", k));
  std::unique_ptr<Trainer> trainer;
  comm::agree(world, [&] {
    trainer = std::make_unique<Trainer>(decks[static_cast<size_t>(k)], world_comm, &out);
  });
  // Rounds the run's length never reaches: said, not silently skipped.
  const std::int64_t total = trainer->total_steps();
  const bool tournament = base.population.algorithm == "ltfb" || base.population.algorithm == "pbt";
  if (world.rank() == 0 && tournament && base.population.every >= total) {
    console.warning(
        fmt::format("population.every = {} is not below the run's {} steps: no {} "
                    "round will happen",
                    base.population.every, total, base.population.algorithm));
  }
  if (world.rank() == 0 && base.population.average_every > 0 &&
      base.population.average_every >= total) {
    console.warning(
        fmt::format("population.average_every = {} is not below the run's {} steps: "
                    "the trainers are averaged only at the end",
                    base.population.average_every, total));
  }
  Population pop(text, file, overrides, base, k, per, world_comm, *trainer, out, console);
  pop.set_start(trainer->start_step());
  if (trainer->start_step() > 0) {
    pop.resume();
  } else {
    pop.record_state(0);
    if (base.population.average_every > 0) {
      pop.common_start();
    }
  }
  if (world.rank() == 0) {
    console.info(
        fmt::format("population: {} trainers of {} rank{} each, {}{}{}", trainers, per,
                    per == 1 ? "" : "s", base.population.algorithm,
                    tournament && base.population.every > 0
                        ? fmt::format(" every {} steps", base.population.every)
                        : std::string(),
                    base.population.average_every > 0
                        ? fmt::format(", averaged every {} steps", base.population.average_every)
                        : std::string()));
  }
  if (trainer->grid().trainer().rank() == 0) {
    out.info(fmt::format("hyper-parameters: {}, seed {}", pop.hyper_text(),
                         decks[static_cast<size_t>(k)].run.seed));
  }
  trainer->set_step_hook([&](std::int64_t step) { pop.on_step(step, total); });
  if (base.population.average_every > 0) {
    // Averages are collective over the trainers: a trainer that stopped between two would leave
    // the others waiting in the next. A stop signal waits for the next average, where the whole
    // population agrees on it and stops at one step (one checkpoint step in common).
    trainer->set_stop_rule([&](std::int64_t step) { return pop.stop_at(step); });
  }
  // A trainer that fails (a non-finite loss with run.nonfinite = "stop", a write error: errors
  // its ranks agreed on) stops; the others go on, skipping it at their exchanges, and it is
  // reported. An error of one rank alone still ends the job (main() aborts).
  // Under LTFB and PBT a round may hand it a healthy model: it trains on from there.
  RunSummary s;
  if (trainer->start_step() > 0 && !pop.finish_left_round(total)) {
    s.stopped = true;  // a stop signal left the round again: saved as it was
    s.signal = signals::stop_signal();
    s.steps = trainer->start_step();
    if (trainer->grid().trainer().rank() == 0) {
      out.info(
          fmt::format("stopped by {} at step {}, in the round again; its checkpoint stays as "
                      "it was (restart with checkpoint.restart = \"auto\")",
                      signals::name(s.signal), s.steps));
    }
  }
  std::string failure;
  std::optional<Error> error;
  const bool revivable = base.population.every > 0 && (base.population.algorithm == "ltfb" ||
                                                       base.population.algorithm == "pbt");
  while (!s.stopped) {
    try {
      s = trainer->run();
      failure.clear();
      error.reset();
      break;
    } catch (const Error& e) {
      if (!e.on_all_ranks()) {
        throw;
      }
      failure = e.what();
      error = e;
      if (trainer->grid().trainer().rank() == 0) {
        out.warning(
            fmt::format("error: {}; this trainer stops training{}, the others go on", e.what(),
                        revivable ? " until a round gives it a healthy trainer's model" : ""));
      }
      const std::int64_t revived = pop.serve_after_failure(total, failure);
      if (revived >= total) {
        break;
      }
      trainer->resume_at(revived);
    }
  }
  // From here the trainers wait for the slowest (and a failed one for all the others): a wait
  // the watchdog would take for a hang. Exchanges were timed; the end is not.
  comm::watchdog::stop();
  if (s.final_eval && trainer->grid().trainer().rank() == 0) {
    out.info(final_line(s, base.model.loss));
  }
  // A stop signal stops every trainer at the same step boundary only within a trainer: the
  // population agrees on it before anything collective.
  int stopped = s.stopped ? 1 : 0;
  world.allreduce(comm::Buffer(&stopped, 1), {comm::ReduceOp::max})->wait();
  RunSummary agreed = s;
  agreed.stopped = stopped != 0;
  pop.finish(agreed, world, stopped != 0, failure);
  pop.drain();
  int failed = failure.empty() ? 0 : 1;
  world.allreduce(comm::Buffer(&failed, 1))->wait();
  if (failed == world.size() && error) {
    throw error->mark_on_all_ranks();  // every trainer failed: the job did too
  }
  return stopped != 0 ? kExitStopped : 0;
}

}  // namespace tessera::train
