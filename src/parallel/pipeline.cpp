#include "tessera/parallel/pipeline.hpp"

#include "tessera/core/check.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/timer.hpp"

#include <algorithm>
#include <limits>
#include <set>

namespace tessera::parallel {

namespace {
constexpr int kActivationTag = 1;  // stage s -> s + 1
constexpr int kGradientTag = 2;    // stage s + 1 -> s

void collect_storage(const nn::Context& ctx, std::set<const float*>& seen, double& bytes) {
  for (const Tensor& t : ctx.saved) {
    if (t.defined() && t.numel() > 0 && seen.insert(t.data()).second) {
      bytes += static_cast<double>(t.numel()) * sizeof(float);
    }
  }
  for (const nn::Context& c : ctx.children) {
    collect_storage(c, seen, bytes);
  }
}
}  // namespace

Schedule schedule_from_name(const std::string& name) {
  if (name == "gpipe") {
    return Schedule::gpipe;
  }
  if (name == "1f1b") {
    return Schedule::one_f_one_b;
  }
  throw input_error(
      fmt::format("pipeline schedule \"{}\" is not one of \"1f1b\", \"gpipe\"", name));
}

const char* schedule_name(Schedule schedule) {
  return schedule == Schedule::gpipe ? "gpipe" : "1f1b";
}

std::vector<Action> schedule_actions(Schedule schedule, int stages, int stage, int micro_batches) {
  TESSERA_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro_batches >= 1,
                "pipeline schedule: stage {} of {} with {} micro-batches", stage, stages,
                micro_batches);
  std::vector<Action> out;
  out.reserve(static_cast<size_t>(2 * micro_batches));
  const int warmup =
      schedule == Schedule::gpipe ? micro_batches : std::min(stages - stage - 1, micro_batches);
  int forward = 0;
  int backward = 0;
  for (; forward < warmup; ++forward) {
    out.push_back({true, forward});
  }
  for (; forward < micro_batches; ++forward, ++backward) {  // 1F1B's steady state
    out.push_back({true, forward});
    out.push_back({false, backward});
  }
  for (; backward < micro_batches; ++backward) {
    out.push_back({false, backward});
  }
  return out;
}

int peak_in_flight(Schedule schedule, int stages, int stage, int micro_batches) {
  int live = 0;
  int peak = 0;
  for (const Action& a : schedule_actions(schedule, stages, stage, micro_batches)) {
    live += a.forward ? 1 : -1;
    peak = std::max(peak, live);
  }
  return peak;
}

double bubble_fraction(int stages, int micro_batches) {
  return static_cast<double>(stages - 1) / static_cast<double>(micro_batches + stages - 1);
}

std::vector<double> idle_fractions(Schedule schedule, const std::vector<double>& forward,
                                   const std::vector<double>& backward, int micro_batches) {
  const int p = static_cast<int>(forward.size());
  TESSERA_CHECK(p >= 1 && backward.size() == forward.size() && micro_batches >= 1,
                "pipeline simulation: {} forward and {} backward costs, {} micro-batches", p,
                backward.size(), micro_batches);
  std::vector<std::vector<Action>> lists;
  for (int s = 0; s < p; ++s) {
    lists.push_back(schedule_actions(schedule, p, s, micro_batches));
  }
  // end[s][2 i + backward]: when stage s finished that action (< 0: not yet).
  std::vector<std::vector<double>> end(
      static_cast<size_t>(p), std::vector<double>(2 * static_cast<size_t>(micro_batches), -1.0));
  const auto finished = [&](int s, bool fwd, int i) {
    return end[static_cast<size_t>(s)][2 * static_cast<size_t>(i) + (fwd ? 0 : 1)];
  };
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  std::vector<double> clock(static_cast<size_t>(p), 0.0);
  std::vector<double> busy(static_cast<size_t>(p), 0.0);
  for (bool moved = true; moved;) {
    moved = false;
    for (int s = 0; s < p; ++s) {
      const auto k = static_cast<size_t>(s);
      // Run this stage's actions while their inputs have arrived.
      while (next[k] < lists[k].size()) {
        const Action a = lists[k][next[k]];
        const int from = a.forward ? s - 1 : s + 1;
        double ready = clock[k];
        if (from >= 0 && from < p) {
          const double arrived = finished(from, a.forward, a.micro);
          if (arrived < 0.0) {
            break;
          }
          ready = std::max(ready, arrived);
        }
        const double cost = a.forward ? forward[k] : backward[k];
        clock[k] = ready + cost;
        busy[k] += cost;
        end[k][2 * static_cast<size_t>(a.micro) + (a.forward ? 0 : 1)] = clock[k];
        ++next[k];
        moved = true;
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    TESSERA_CHECK(next[static_cast<size_t>(s)] == lists[static_cast<size_t>(s)].size(),
                  "pipeline simulation: stage {} of {} never finished its {} micro-batches", s, p,
                  micro_batches);
  }
  const double makespan = *std::max_element(clock.begin(), clock.end());
  std::vector<double> idle;
  for (int s = 0; s < p; ++s) {
    idle.push_back(makespan > 0.0 ? (makespan - busy[static_cast<size_t>(s)]) / makespan : 0.0);
  }
  return idle;
}

std::vector<int> balance_stages(const std::vector<double>& costs, int stages) {
  const int n = static_cast<int>(costs.size());
  if (stages < 1 || n < stages) {
    throw input_error(fmt::format(
        "the model has {} layer{} to cut into {} pipeline stage{}: every stage needs at least one "
        "(a `repeat` counts as its repetitions)",
        n, n == 1 ? "" : "s", stages, stages == 1 ? "" : "s"));
  }
  // best[k][i]: the smallest largest part of units [0, i) cut into k parts; cut[k][i] where the
  // last part begins. O(p n^2), for at most thousands of units.
  std::vector<double> prefix(static_cast<size_t>(n) + 1, 0.0);
  for (int i = 0; i < n; ++i) {
    prefix[static_cast<size_t>(i) + 1] = prefix[static_cast<size_t>(i)] + costs[i];
  }
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(static_cast<size_t>(stages) + 1,
                                        std::vector<double>(static_cast<size_t>(n) + 1, inf));
  std::vector<std::vector<int>> cut(static_cast<size_t>(stages) + 1,
                                    std::vector<int>(static_cast<size_t>(n) + 1, 0));
  best[0][0] = 0.0;
  for (int k = 1; k <= stages; ++k) {
    for (int i = k; i <= n; ++i) {
      for (int j = k - 1; j < i; ++j) {
        const double part = prefix[static_cast<size_t>(i)] - prefix[static_cast<size_t>(j)];
        const double worst = std::max(best[k - 1][j], part);
        if (worst < best[k][i]) {
          best[k][i] = worst;
          cut[k][i] = j;
        }
      }
    }
  }
  std::vector<int> sizes(static_cast<size_t>(stages));
  int end = n;
  for (int k = stages; k >= 1; --k) {
    const int begin = cut[k][end];
    sizes[static_cast<size_t>(k) - 1] = end - begin;
    end = begin;
  }
  return sizes;
}

Pipeline::Pipeline(nn::Sequential& stage, comm::Communicator* axis, const GridPlace& place,
                   Schedule schedule)
    : m_stage_layers(stage),
      m_axis(axis != nullptr && axis->size() > 1 ? axis : nullptr),
      m_schedule(schedule),
      m_stages(m_axis != nullptr ? m_axis->size() : 1),
      m_stage(m_axis != nullptr ? m_axis->rank() : 0),
      m_local_in(stage.input_layout().local_shape(place)),
      m_local_out(stage.output_layout().local_shape(place)) {}

double Pipeline::saved_bytes(const nn::Context& ctx) {
  std::set<const float*> seen;
  double bytes = 0.0;
  collect_storage(ctx, seen, bytes);
  return bytes;
}

Pipeline::Pending Pipeline::post_recv(const Shape& sample, Index samples, int peer, int tag) const {
  Pending p;
  // The receive writes every element: no zero fill.
  p.tensor = Tensor::uninitialized("pipeline recv", nn::batch_shape(samples, sample));
  p.work = m_axis->recv(comm::Buffer(p.tensor), {peer, tag});
  return p;
}

void Pipeline::wait(Pending& p, PipelineStats& stats) const {
  const Stopwatch clock;
  p.work->wait();
  stats.idle_s += clock.seconds();
}

void Pipeline::send(const Tensor& t, int peer, int tag) {
  Pending p;
  p.tensor = t;
  p.work = m_axis->send(comm::ConstBuffer(t), {peer, tag});
  m_sends.push_back(std::move(p));
}

void Pipeline::progress() {
  // MPI moves a message only inside MPI calls: test the transfers in flight, and let the
  // completed sends go (their tensors may be reused by the layers).
  if (m_axis == nullptr) {
    return;
  }
  m_sends.erase(
      std::remove_if(m_sends.begin(), m_sends.end(), [](Pending& p) { return p.work->test(); }),
      m_sends.end());
  for (Pending* p : {&m_next_input, &m_next_grad}) {
    if (p->work && !p->work->is_completed()) {
      (void)p->work->test();
    }
  }
}

void Pipeline::finish_sends(PipelineStats& stats) {
  const Stopwatch clock;
  for (Pending& p : m_sends) {
    p.work->wait();
  }
  m_sends.clear();
  stats.idle_s += clock.seconds();
}

PipelineStats Pipeline::train(const MicroBatches& mb) {
  PipelineStats stats;
  const int m = mb.count;
  const std::vector<Action> actions = schedule_actions(m_schedule, m_stages, m_stage, m);
  std::vector<nn::Context> contexts(static_cast<size_t>(m));
  std::vector<Tensor> output_grads(static_cast<size_t>(m));  // the last stage's loss gradients
  std::vector<char> alive(static_cast<size_t>(m), 0);
  std::vector<double> held(static_cast<size_t>(m), 0.0);
  double live_bytes = 0.0;
  // One receive of each direction posted ahead of the action that consumes it. A micro-batch of
  // no samples (the last batch of an epoch may be short) is the same on every stage: nothing is
  // computed or sent for it; the layers take part in the collectives they share with data ranks
  // that hold samples (forward_empty, backward_empty) and the hooks run.
  const auto empty = [&](int i) { return mb.size(i) == 0; };
  struct Inbox {
    Pending& pending;
    bool active;  // this stage receives in this direction
    Shape sample;
    int peer;
    int tag;
    int micro = 0;  // the micro-batch the posted receive is for
  };
  Inbox inputs{m_next_input, !first(), m_local_in, m_stage - 1, kActivationTag};
  Inbox grads{m_next_grad, !last(), m_local_out, m_stage + 1, kGradientTag};
  const auto post = [&](Inbox& box) {
    while (box.micro < m && empty(box.micro)) {
      ++box.micro;
    }
    if (box.active && box.micro < m) {
      box.pending = post_recv(box.sample, mb.size(box.micro), box.peer, box.tag);
    }
  };
  const auto take = [&](Inbox& box, int micro) {
    TESSERA_CHECK(box.micro == micro, "pipeline: micro-batch {} received before {}", micro,
                  box.micro);
    wait(box.pending, stats);
    const Tensor t = box.pending.tensor;
    box.pending = Pending();
    ++box.micro;
    post(box);
    return t;
  };
  post(inputs);
  post(grads);
  for (const Action& a : actions) {
    const auto i = static_cast<size_t>(a.micro);
    if (empty(a.micro)) {
      if (a.forward) {
        m_stage_layers.forward_empty(mb.options(a.micro));
        continue;
      }
      if (mb.before_backward) {
        mb.before_backward(a.micro);
      }
      m_stage_layers.backward_empty();
      if (mb.after_backward) {
        mb.after_backward(a.micro);
      }
      continue;
    }
    if (a.forward) {
      const Tensor x = first() ? mb.input(a.micro) : take(inputs, a.micro);
      nn::ForwardResult f = m_stage_layers.forward(x, mb.options(a.micro));
      held[i] = saved_bytes(f.ctx);
      live_bytes += held[i];
      stats.peak_saved_bytes = std::max(stats.peak_saved_bytes, live_bytes);
      contexts[i] = std::move(f.ctx);
      alive[i] = 1;
      if (last()) {
        output_grads[i] = mb.loss(a.micro, f.output);
      } else {
        send(f.output, m_stage + 1, kActivationTag);
      }
    } else {
      TESSERA_CHECK(alive[i] != 0, "pipeline: backward {} before its forward", a.micro);
      const Tensor dy = last() ? output_grads[i] : take(grads, a.micro);
      output_grads[i] = Tensor();
      if (mb.before_backward) {
        mb.before_backward(a.micro);
      }
      const Tensor dx = m_stage_layers.backward(dy, std::move(contexts[i]));
      contexts[i] = nn::Context();
      alive[i] = 0;
      live_bytes -= held[i];
      if (mb.after_backward) {
        mb.after_backward(a.micro);
      }
      if (!first()) {
        send(dx, m_stage - 1, kGradientTag);
      }
    }
    if (m_axis != nullptr) {
      progress();
    }
  }
  if (m_axis != nullptr) {
    finish_sends(stats);
  }
  return stats;
}

Tensor Pipeline::forward(const Tensor& x, Index samples, const nn::ForwardOptions& options,
                         PipelineStats* stats) {
  PipelineStats local;
  PipelineStats& s = stats != nullptr ? *stats : local;
  if (samples == 0) {
    // No samples on this data rank (every stage alike; an evaluation's last batch may leave a
    // rank none): only the collectives the layers share with ranks that have some (SyncBatchNorm's
    // in training), as in train().
    m_stage_layers.forward_empty(options);
    return Tensor();
  }
  Tensor in = x;
  if (!first()) {
    Pending p = post_recv(m_local_in, samples, m_stage - 1, kActivationTag);
    wait(p, s);
    in = p.tensor;
  }
  nn::ForwardResult f = m_stage_layers.forward(in, options);
  if (last()) {
    return f.output;
  }
  send(f.output, m_stage + 1, kActivationTag);
  finish_sends(s);
  return Tensor();
}

}  // namespace tessera::parallel
