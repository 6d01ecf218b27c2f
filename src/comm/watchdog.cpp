#include "tessera/comm/watchdog.hpp"

#include "tessera/comm/communicator.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera::comm::watchdog {
namespace {

struct Record {
  std::uint64_t seq = 0;
  const char* op = "";
  std::string axis;
  std::int64_t bytes = 0;
  std::int64_t step = 0;
  double started = 0.0;
};

constexpr int kRing = 32;
constexpr int kTagAsk = 1;     // "where are you?": {asking rank, its collective, its blocked ms}
constexpr int kTagAnswer = 2;  // {rank, blocked, blocked seq, last seq, step, blocked ms}
constexpr int kAnswerInts = 6;

std::mutex g_ring_mutex;
std::array<Record, kRing> g_ring;
std::atomic<std::uint64_t> g_last_seq{0};
std::atomic<std::int64_t> g_step{0};
std::atomic<double> g_blocked_since{0.0};
std::atomic<std::uint64_t> g_blocked_seq{0};
std::atomic<bool> g_check_signatures{false};
thread_local int t_depth = 0;

double now() {
  using clock = std::chrono::steady_clock;
  static const clock::time_point origin = clock::now();
  return std::chrono::duration<double>(clock::now() - origin).count();
}

std::string bytes_text(std::int64_t b) {
  return b >= (1 << 20) ? fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20))
         : b >= 1024    ? fmt::format("{:.1f} KiB", static_cast<double>(b) / 1024)
                        : fmt::format("{} B", b);
}

class Watchdog {
 public:
  Watchdog(MPI_Comm comm, double limit_s) : m_limit(limit_s) {
    MPI_Comm_dup(comm, &m_comm);
    MPI_Comm_rank(m_comm, &m_rank);
    MPI_Comm_size(m_comm, &m_size);
    // The job's rank names the process; a population's trainer also its rank in the trainer,
    // which the diagnosis's other numbers count in.
    int world_rank = 0;
    int world_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    m_label = world_size == m_size
                  ? fmt::format("rank {}", m_rank)
                  : fmt::format("rank {} (rank {} of its trainer)", world_rank, m_rank);
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    m_talk = level == MPI_THREAD_MULTIPLE && m_size > 1;  // one rank: nobody to ask
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    m_host = host;
    m_thread = std::thread([this] { loop(); });
  }

  ~Watchdog() {
    {
      // Wakes the loop at once: a sleeping watchdog would hold every run's end up to a period.
      std::lock_guard<std::mutex> lock(m_wake_mutex);
      m_stop = true;
    }
    m_wake.notify_all();
    m_thread.join();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized == 0) {
      MPI_Comm_free(&m_comm);
    }
  }

  void first_step_done() { m_first = false; }

 private:
  double limit() const { return m_first ? 3 * m_limit : m_limit; }

  void loop() {
    std::array<std::int64_t, 3> ask{};
    MPI_Request pending = MPI_REQUEST_NULL;
    if (m_talk) {
      MPI_Irecv(ask.data(), 3, MPI_INT64_T, MPI_ANY_SOURCE, kTagAsk, m_comm, &pending);
    }
    const auto period = std::chrono::duration<double>(std::clamp(m_limit / 20, 0.02, 0.5));
    double last = now();
    while (true) {
      {
        std::unique_lock<std::mutex> lock(m_wake_mutex);
        if (m_wake.wait_for(lock, period, [this] { return m_stop.load(); })) {
          break;
        }
      }
      // Woken far later than asked: this process was itself stopped (SIGSTOP, a debugger) or
      // not scheduled. That time is not a peer's hang: a wait in progress counts from now.
      const double t = now();
      if (t - last > std::max(2.0, 10 * period.count())) {
        double since = g_blocked_since.load();
        if (since > 0) {
          g_blocked_since.compare_exchange_strong(since, t);
        }
      }
      last = t;
      if (m_talk) {
        answer_asks(ask, pending);
      }
      const double since = g_blocked_since.load();
      if (since > 0 && now() - since > limit()) {
        fire(now() - since, ask, pending);
      }
    }
    if (pending != MPI_REQUEST_NULL) {
      MPI_Cancel(&pending);
      MPI_Wait(&pending, MPI_STATUS_IGNORE);
    }
  }

  // Answers every question that has arrived (and prints this rank's part of the diagnosis).
  void answer_asks(std::array<std::int64_t, 3>& ask, MPI_Request& pending) {
    for (;;) {
      int arrived = 0;
      MPI_Status status;
      MPI_Test(&pending, &arrived, &status);
      if (arrived == 0) {
        return;
      }
      const int asker = status.MPI_SOURCE;
      const double since = g_blocked_since.load();
      const double blocked = since > 0 ? now() - since : 0.0;
      print(
          fmt::format("{} on {}: watchdog (asked by rank {}, blocked {:.1f} s in collective "
                      "#{}): this rank is {} at step {}; its last collectives:\n{}",
                      m_label, m_host, asker, static_cast<double>(ask[2]) / 1e3, ask[1],
                      since > 0 ? fmt::format("blocked {:.1f} s waiting for collective #{}",
                                              blocked, g_blocked_seq.load())
                                : fmt::format("not blocked in communication (computing, after "
                                              "collective #{})",
                                              g_last_seq.load()),
                      g_step.load(), recent()));
      std::array<std::int64_t, kAnswerInts> answer{m_rank,
                                                   since > 0 ? 1 : 0,
                                                   static_cast<std::int64_t>(g_blocked_seq.load()),
                                                   static_cast<std::int64_t>(g_last_seq.load()),
                                                   g_step.load(),
                                                   static_cast<std::int64_t>(blocked * 1e3)};
      MPI_Send(answer.data(), kAnswerInts, MPI_INT64_T, asker, kTagAnswer, m_comm);
      MPI_Irecv(ask.data(), 3, MPI_INT64_T, MPI_ANY_SOURCE, kTagAsk, m_comm, &pending);
    }
  }

  [[noreturn]] void fire(double blocked, std::array<std::int64_t, 3>& ask, MPI_Request& pending) {
    const std::uint64_t seq = g_blocked_seq.load();
    std::string text = fmt::format(
        "{} on {}: watchdog: blocked {:.1f} s (limit {:.0f} s, run.watchdog_s{}) waiting for "
        "collective #{} at step {}; its last collectives:\n{}",
        m_label, m_host, blocked, limit(), m_first ? " × 3 before the first step ends" : "", seq,
        g_step.load(), recent());
    print(text);
    std::string verdict;
    if (m_talk && m_size > 1) {
      verdict = ask_everyone(seq, blocked, ask, pending);
    } else if (m_size > 1) {
      verdict = "(MPI gives no MPI_THREAD_MULTIPLE: the other ranks cannot be asked)";
    }
    print(fmt::format("{}: watchdog: {}ending the job (exit code {})", m_label,
                      verdict.empty() ? "" : verdict + "; ", kExitWatchdog));
    abort_job(kExitWatchdog);  // waits for the launcher to forward the lines above
  }

  // Asks every other rank where it is; returns the verdict (who did not answer, who is behind).
  std::string ask_everyone(std::uint64_t seq, double blocked, std::array<std::int64_t, 3>& ask,
                           MPI_Request& pending) {
    // The question and the answer live in the watchdog, not on this frame: the job is aborted
    // with the last receive still posted and the sends not waited for, and a late answer must
    // not land in whatever stack the abort's printing and sleeping use by then.
    std::array<std::int64_t, 3>& question = m_question;
    question = {m_rank, static_cast<std::int64_t>(seq), static_cast<std::int64_t>(blocked * 1e3)};
    std::vector<MPI_Request> sends;
    for (int r = 0; r < m_size; ++r) {
      if (r != m_rank) {
        sends.emplace_back();
        MPI_Isend(question.data(), 3, MPI_INT64_T, r, kTagAsk, m_comm, &sends.back());
      }
    }
    std::vector<bool> answered(static_cast<size_t>(m_size), false);
    answered[static_cast<size_t>(m_rank)] = true;
    std::vector<int> computing;
    std::vector<std::string> behind;
    const double grace = std::clamp(m_limit / 2, 1.0, 10.0);
    const double deadline = now() + grace;
    int left = m_size - 1;
    std::array<std::int64_t, kAnswerInts>& answer = m_answer;
    answer = {};
    MPI_Request receive = MPI_REQUEST_NULL;
    MPI_Irecv(answer.data(), kAnswerInts, MPI_INT64_T, MPI_ANY_SOURCE, kTagAnswer, m_comm,
              &receive);
    while (left > 0 && now() < deadline) {
      answer_asks(ask, pending);  // another rank may be asking at the same time
      int arrived = 0;
      MPI_Test(&receive, &arrived, MPI_STATUS_IGNORE);
      if (arrived == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      const auto r = static_cast<int>(answer[0]);
      if (r >= 0 && r < m_size && !answered[static_cast<size_t>(r)]) {
        answered[static_cast<size_t>(r)] = true;
        --left;
        if (answer[1] == 0) {
          computing.push_back(r);
        } else if (static_cast<std::uint64_t>(answer[2]) < seq) {
          behind.push_back(fmt::format("{} (at collective #{})", r, answer[2]));
        }
      }
      MPI_Irecv(answer.data(), kAnswerInts, MPI_INT64_T, MPI_ANY_SOURCE, kTagAnswer, m_comm,
                &receive);
    }
    std::vector<int> silent;
    for (int r = 0; r < m_size; ++r) {
      if (!answered[static_cast<size_t>(r)]) {
        silent.push_back(r);
      }
    }
    std::string verdict;
    auto add = [&verdict](const std::string& part) {
      verdict += (verdict.empty() ? "" : "; ") + part;
    };
    if (!silent.empty()) {
      add(
          fmt::format("{} {} did not answer within {:.0f} s (stopped, dead, or stuck outside "
                      "MPI)",
                      silent.size() == 1 ? "rank" : "ranks", fmt::join(silent, ", "), grace));
    }
    if (!computing.empty()) {
      add(
          fmt::format("{} {} {} not blocked in communication (computing, or stuck outside MPI: "
                      "in I/O, for example)",
                      computing.size() == 1 ? "rank" : "ranks", fmt::join(computing, ", "),
                      computing.size() == 1 ? "is" : "are"));
    }
    if (!behind.empty()) {
      add(fmt::format("behind this rank: {}", fmt::join(behind, ", ")));
    }
    if (verdict.empty()) {
      verdict =
          "every rank answered and is blocked in a collective (a mismatch of collectives? "
          "run.check_collectives = true names it)";
    }
    return verdict;
  }

  static void print(const std::string& text) {
    const std::string line = text + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
  }

  MPI_Comm m_comm = MPI_COMM_NULL;
  int m_rank = 0;
  int m_size = 1;
  std::string m_label;  // "rank 3", or "rank 3 (rank 1 of its trainer)" in a population
  bool m_talk = false;
  std::string m_host;
  double m_limit;
  std::atomic<bool> m_first{true};
  std::atomic<bool> m_stop{false};
  std::array<std::int64_t, 3> m_question{};  // ask_everyone's buffers (see there)
  std::array<std::int64_t, kAnswerInts> m_answer{};
  std::mutex m_wake_mutex;
  std::condition_variable m_wake;
  std::thread m_thread;
};

std::unique_ptr<Watchdog> g_watchdog;

}  // namespace

std::uint64_t record_start(const char* op, const std::string& axis, std::int64_t bytes) {
  const std::uint64_t seq = g_last_seq.load() + 1;
  {
    std::lock_guard<std::mutex> lock(g_ring_mutex);
    Record& r = g_ring[seq % kRing];
    r.seq = seq;
    r.op = op;
    r.axis = axis;
    r.bytes = bytes;
    r.step = g_step.load();
    r.started = now();
  }
  g_last_seq.store(seq);
  return seq;
}

std::uint64_t last_started() {
  return g_last_seq.load();
}

void set_step(std::int64_t step) {
  g_step.store(step);
}

Blocked::Blocked(std::uint64_t seq) : m_outer(t_depth++ == 0) {
  if (m_outer) {
    g_blocked_seq.store(seq != 0 ? seq : g_last_seq.load());
    g_blocked_since.store(now());
  }
}

Blocked::~Blocked() {
  --t_depth;
  if (m_outer) {
    g_blocked_since.store(0.0);
  }
}

void start(MPI_Comm comm, double limit_s) {
  stop();
  if (limit_s > 0) {
    g_watchdog = std::make_unique<Watchdog>(comm, limit_s);
  }
}

void first_step_done() {
  if (g_watchdog) {
    g_watchdog->first_step_done();
  }
}

void stop() {
  g_watchdog.reset();
}

std::string recent(int count) {
  std::lock_guard<std::mutex> lock(g_ring_mutex);
  const std::uint64_t last = g_last_seq.load();
  std::string out;
  const double t = now();
  for (std::uint64_t s = last >= static_cast<std::uint64_t>(count) ? last - count + 1 : 1;
       s <= last; ++s) {
    const Record& r = g_ring[s % kRing];
    if (r.seq != s) {
      continue;
    }
    out += fmt::format("  #{} {}{}, {}, step {}, started {:.1f} s ago\n", r.seq, r.op,
                       r.axis.empty() ? std::string() : " on '" + r.axis + "'", bytes_text(r.bytes),
                       r.step, t - r.started);
  }
  if (out.empty()) {
    return "  (none)";
  }
  out.pop_back();
  return out;
}

void set_check_signatures(bool on) {
  g_check_signatures = on;
}

bool check_signatures() {
  return g_check_signatures.load();
}

}  // namespace tessera::comm::watchdog
