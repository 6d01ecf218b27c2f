#include "tessera/parallel/data_parallel.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/core/check.hpp"
#include "tessera/kernels/reduce.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <type_traits>

namespace tessera::parallel {
namespace {
using Policy = Kokkos::RangePolicy<ExecSpace>;

// FNV-1a over the model's parameter names and shapes: equal on every rank that built the same
// model.
std::uint64_t model_signature(const std::vector<nn::Parameter*>& params) {
  std::uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) {
      h = (h ^ c) * 1099511628211ULL;
    }
  };
  for (const nn::Parameter* p : params) {
    mix(p->name);
    mix(to_string(p->layout.global_shape()));
  }
  return h;
}

Index round_up(Index n, Index multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

constexpr bool kHostArenas = std::is_same_v<MemSpace, Kokkos::HostSpace>;
}  // namespace

Reduce reduce_from_name(const std::string& name) {
  if (name == "auto") {
    return Reduce::automatic;
  }
  if (name == "mpi") {
    return Reduce::mpi;
  }
  if (name == "shared") {
    return Reduce::shared;
  }
  throw Error(fmt::format("unknown gradient reduction '{}' (known: auto, mpi, shared)", name));
}

DataParallel::DataParallel(nn::Layer& model, const comm::ProcessGrid& grid,
                           const DataParallelOptions& options)
    : m_model(model),
      m_comm(grid.axis(GridAxis::data)),
      m_grid(&grid),
      m_place(grid.place()),
      m_options(options),
      m_rank(m_comm.rank()),
      m_size(m_comm.size()),
      m_params(model.all_parameters()),
      m_buffers(model.all_buffers()) {
  init(options);
}

DataParallel::DataParallel(nn::Layer& model, comm::Communicator& data,
                           const DataParallelOptions& options)
    : m_model(model),
      m_comm(data),
      m_self(std::make_unique<comm::MpiCommunicator>(MPI_COMM_SELF, "self")),
      m_place(GridPlace::single().with(GridAxis::data, data.size(), data.rank())),
      m_options(options),
      m_rank(data.rank()),
      m_size(data.size()),
      m_params(model.all_parameters()),
      m_buffers(model.all_buffers()) {
  init(options);
}

void DataParallel::init(const DataParallelOptions& options) {
  TESSERA_CHECK(options.bucket_mb > 0.0, "data parallel: bucket size {} MiB must be > 0",
                options.bucket_mb);
  TESSERA_CHECK(options.groups_per_rank >= 0, "data parallel: {} sample groups per rank",
                options.groups_per_rank);
  for (const auto* list : {&m_params, &m_buffers}) {
    for (const nn::Parameter* p : *list) {
      TESSERA_CHECK(p->partial.contains(GridAxis::data),
                    "data parallel: '{}' is partial over {}, which lacks the data axis", p->name,
                    p->partial.to_string());
      TESSERA_CHECK(m_grid != nullptr || extra_axes(*p).empty(),
                    "data parallel: '{}' is partial over {}, but there is no grid beyond the data "
                    "axis",
                    p->name, p->partial.to_string());
    }
  }
  check_same_model();
  find_tied();
  build_buckets(options.bucket_mb);
  if (options.zero) {
    make_shards();
  }
  // The norm sums squares over every axis where the ranks hold different gradient elements: those
  // that split a parameter, and data where ZeRO-1 leaves each rank its own pieces.
  const AxisSet nontrivial = m_place.nontrivial();
  for (const nn::Parameter* p : m_params) {
    m_norm_axes = m_norm_axes | (nontrivial - copy_axes(p->layout));
  }
  m_norm_axes = m_norm_axes - AxisSet{GridAxis::data};
  if (m_place.size_of(GridAxis::pipeline) > 1) {
    // The stages hold different parameters — a stage may hold none and must still take part.
    m_norm_axes = m_norm_axes | AxisSet{GridAxis::pipeline};
  }
  if (m_scatter) {
    m_norm_axes = m_norm_axes | AxisSet{GridAxis::data};
  }
}

comm::Communicator& DataParallel::over(AxisSet axes) const {
  if (m_grid != nullptr) {
    return m_grid->axes(axes);
  }
  return (axes & m_place.nontrivial()).empty() ? *m_self : m_comm;
}

AxisSet DataParallel::extra_axes(const nn::Parameter& p) const {
  return (p.partial - AxisSet{GridAxis::data}) & m_place.nontrivial();
}

DataParallel::~DataParallel() {
  // Collectives in flight wait for completion in their Work's destructor (not while unwinding).
  m_gathers.clear();
  for (Bucket& b : m_buckets) {
    b.work.reset();
  }
  if (m_shared) {
    if (std::uncaught_exceptions() == 0) {
      m_shared->gather_values();
    }
    // The parameters outlive the shared window: give them storage of their own again.
    for (nn::Parameter* p : m_params) {
      Tensor value(p->name, p->value.shape());
      value.copy_from(p->value);
      p->value = value;
      p->grad = Tensor(p->name + ".grad", p->value.shape());
    }
  }
}

void DataParallel::check_same_model() const {
  // Every rank of a pipeline stage learns the same verdict: the minimum and maximum of the
  // signatures and counts (names and global shapes: the same on every rank of the stage, whatever
  // its blocks; the stages hold different layers).
  comm::Communicator& all = over(AxisSet::all() - AxisSet{GridAxis::pipeline});
  std::uint64_t lo[2] = {model_signature(m_params), m_params.size()};
  std::uint64_t hi[2] = {lo[0], lo[1]};
  all.allreduce(comm::Buffer(lo, 2), {comm::ReduceOp::min})->wait();
  all.allreduce(comm::Buffer(hi, 2), {comm::ReduceOp::max})->wait();
  if (lo[0] != hi[0] || lo[1] != hi[1]) {
    throw input_error(fmt::format(
        "data parallel: the {} ranks of communicator '{}' built different models (between {} and "
        "{} parameters, or other names or shapes); every rank must run the same deck and "
        "overrides",
        all.size(), all.name(), lo[1], hi[1]));
  }
}

void DataParallel::build_buckets(double bucket_mb) {
  // Arena order = the order backward completes gradients: the model's parameters reversed.
  const auto bucket_elements = static_cast<Index>(bucket_mb * 1024.0 * 1024.0 / sizeof(float));
  const Index pad = m_options.zero ? m_size : 1;
  Index at = 0;
  Bucket current;
  auto close = [&] {
    const Index used = at - current.begin;
    current.count = round_up(used, pad);
    at = current.begin + current.count;
    m_buckets.push_back(std::move(current));
    current = Bucket();
    current.begin = at;
  };
  for (auto it = m_params.rbegin(); it != m_params.rend(); ++it) {
    // A parameter that would overflow a non-empty bucket starts the next one, so that small
    // gradients completed early are not held back by a large one completed later; so does one
    // whose gradient is partial over other axes.
    const AxisSet extra = extra_axes(**it);
    if (!current.params.empty() &&
        (at - current.begin + (*it)->value.numel() > bucket_elements || extra != current.extra)) {
      close();
    }
    current.extra = extra;
    current.params.push_back(*it);
    current.offsets.push_back(at);
    m_bucket_of[*it] = m_buckets.size();
    at += (*it)->value.numel();
    if (at - current.begin >= bucket_elements) {
      close();
    }
  }
  if (!current.params.empty()) {
    close();
  }
  m_arena_size = at;
  allocate_arenas();

  // Move every parameter into the arenas: values copied, gradients zero.
  for (const Bucket& b : m_buckets) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      nn::Parameter& p = *b.params[i];
      const Tensor value = Tensor::alias(p.name, m_values, b.offsets[i], p.value.shape());
      value.copy_from(p.value);
      p.value = value;
      p.grad = Tensor::alias(p.name + ".grad", m_grads, b.offsets[i], p.value.shape());
    }
  }
  if (m_options.groups_per_rank > 0) {
    const auto groups = static_cast<size_t>(m_options.groups_per_rank);
    m_group_grads =
        FloatView("DataParallel::group_grads", groups * static_cast<size_t>(m_arena_size));
    if (m_size > 1) {
      m_all_groups = FloatView("DataParallel::all_groups", static_cast<size_t>(m_size) * groups *
                                                               static_cast<size_t>(m_arena_size));
    }
  }
}

int DataParallel::shared_nodes() const {
  return m_shared ? m_shared->nodes() : 0;
}

bool DataParallel::use_shared_reduction() {
  // Deterministic mode sums stashed group gradients in group order instead (finish_reduction).
  if (m_options.reduce == Reduce::mpi || m_size == 1 || m_options.groups_per_rank > 0) {
    return false;
  }
  const comm::NodeLayout layout = comm::node_layout(m_comm.mpi_comm());  // collective
  const bool one_node = layout.nodes == 1;
  // Across nodes: hierarchical, when every node holds the same number of ranks, more than one
  // (else there is nothing to share), and without ZeRO-1 (its chunks are per data rank).
  const bool across = layout.nodes > 1 && layout.ranks_per_node > 1 && !m_scatter;
  // The window of every rank of the node, with a tenth to spare, must fit in /dev/shm; every rank
  // learns the smallest free space any of them sees.
  const int on_node = one_node ? m_size : std::max(1, layout.ranks_per_node);
  const double need =
      1.1 * static_cast<double>(on_node) *
      static_cast<double>(comm::SharedReduction::window_bytes(m_arena_size, m_buckets.size()));
  double free = static_cast<double>(m_options.shared_memory_free > 0 ? m_options.shared_memory_free
                                                                     : comm::shared_memory_free());
  m_comm.allreduce(comm::Buffer(&free, 1), {comm::ReduceOp::min})->wait();
  const bool fits = free >= need;
  auto size = [](double bytes) {
    return bytes < 1024.0 * 1024.0 ? fmt::format("{:.1f} KiB", bytes / 1024.0)
                                   : fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0));
  };
  const bool placed = one_node || across;
  if (m_options.reduce == Reduce::shared && (!placed || !kHostArenas || !fits)) {
    std::string why;
    if (!kHostArenas) {
      why = "parameters in host memory (this build keeps them on the GPU)";
    } else if (!placed) {
      why = fmt::format(
          "the {} ranks of communicator '{}' on one node, or spread over nodes that hold the same "
          "number of them (more than one) without ZeRO-1; they are on {} nodes{}",
          m_size, m_comm.name(), layout.nodes,
          layout.ranks_per_node == 0 ? " holding different numbers"
          : m_scatter                ? " with parallel.zero = 1"
                                     : " of one rank each");
    } else {
      why = fmt::format("{} of shared memory (/dev/shm) and {} are free", size(need), size(free));
    }
    throw input_error(fmt::format(
        "data parallel: parallel.reduce = \"shared\" needs {}; use \"auto\" or \"mpi\"", why));
  }
  if (placed && kHostArenas && !fits) {
    m_warnings.push_back(
        fmt::format("data parallel: warning: the shared-memory reduction needs {} of /dev/shm, {} "
                    "are free: summing with MPI instead (enlarge /dev/shm, e.g. docker --shm-size)",
                    size(need), size(free)));
  }
  return placed && kHostArenas && fits;
}

void DataParallel::allocate_arenas() {
  m_scatter = m_options.zero && m_size > 1 && m_options.groups_per_rank == 0;
  const auto n = static_cast<size_t>(m_arena_size);
  if (use_shared_reduction()) {
    std::vector<Range> segments;
    for (const Bucket& b : m_buckets) {
      segments.push_back({b.begin, b.count});
    }
    m_shared = std::make_unique<comm::SharedReduction>(m_comm.mpi_comm(), m_arena_size,
                                                       std::move(segments), m_scatter);
    // Unmanaged views of the window (it lives as long as m_shared).
    m_values = FloatView(m_shared->values(), n);
    m_grads = FloatView(m_shared->grads(), n);
    return;
  }
  m_values = FloatView("DataParallel::values", n);
  m_grads = FloatView("DataParallel::grads", n);
}

void DataParallel::make_shards() {
  // Rank r owns chunk r of every bucket; a piece is a parameter's part inside it. Its summed
  // gradient is in place in the arena: the in-place reduce-scatter leaves chunk r there on rank r
  // (and without one, one rank or the deterministic mode's sums, the arena holds every sum).
  for (const Bucket& b : m_buckets) {
    const Index chunk = b.count / m_size;
    const Index mine_begin = b.begin + m_rank * chunk;
    const Index mine_end = mine_begin + chunk;
    for (size_t i = 0; i < b.params.size(); ++i) {
      const nn::Parameter& p = *b.params[i];
      const Index lo = std::max(b.offsets[i], mine_begin);
      const Index hi = std::min(b.offsets[i] + p.value.numel(), mine_end);
      if (lo >= hi) {
        continue;
      }
      nn::Parameter piece;
      piece.name = p.name;
      piece.layout = p.layout;  // of the whole parameter (its value is a flat piece of the block)
      piece.decay = p.decay;
      piece.value = Tensor::alias(p.name, m_values, lo, {hi - lo});
      piece.grad = Tensor::alias(p.name + ".grad", m_grads, lo, {hi - lo});
      m_pieces.push_back(std::move(piece));
      m_shards.push_back({p.name, lo - b.offsets[i], hi - lo});
    }
  }
  for (nn::Parameter& piece : m_pieces) {
    m_piece_ptrs.push_back(&piece);
  }
}

bool DataParallel::reducing() const {
  return m_size > 1 && m_last_micro_batch && m_options.groups_per_rank == 0;
}

void DataParallel::begin_step() {
  sync_parameters();
  if (m_shared) {
    m_shared->begin_round();  // every rank has finished reading this rank's gradients
  }
  zero_grads();
  for (Bucket& b : m_buckets) {
    b.ready = 0;
  }
  m_next_bucket = 0;
  m_last_micro_batch = true;
}

void DataParallel::set_last_micro_batch(bool last) {
  m_last_micro_batch = last;
}

void DataParallel::zero_grads() {
  if constexpr (kHostArenas) {
    std::memset(m_grads.data(), 0, m_grads.extent(0) * sizeof(float));
  } else {
    Kokkos::deep_copy(m_grads, 0.0F);
  }
}

void DataParallel::start_bucket(Bucket& b) {
  if (m_shared) {
    m_shared->ready(static_cast<size_t>(&b - m_buckets.data()));
    return;
  }
  const Tensor grads = Tensor::alias("DataParallel::bucket", m_grads, b.begin, {b.count});
  if (m_scatter) {
    const Index chunk = b.count / m_size;
    const Tensor mine =
        Tensor::alias("DataParallel::chunk", m_grads, b.begin + m_rank * chunk, {chunk});
    b.work = m_comm.reduce_scatter(grads, mine);  // in place
  } else {
    b.work = m_comm.allreduce(grads);
  }
}

void DataParallel::start_ready_buckets() {
  while (m_next_bucket < m_buckets.size() &&
         m_buckets[m_next_bucket].ready == m_buckets[m_next_bucket].params.size()) {
    start_bucket(m_buckets[m_next_bucket++]);
  }
}

void DataParallel::on_backward(nn::Layer& layer) {
  if (!reducing()) {
    return;
  }
  for (const nn::Parameter* p : layer.all_parameters()) {
    const auto it = m_bucket_of.find(p);
    if (it != m_bucket_of.end()) {
      ++m_buckets[it->second].ready;
    }
  }
  start_ready_buckets();
  if (m_shared) {
    m_shared->progress();  // sums the chunks every rank has reported
    return;
  }
  // MPI progresses non-blocking collectives inside MPI calls: give those in flight a turn.
  for (size_t i = 0; i < m_next_bucket; ++i) {
    if (!m_buckets[i].work->is_completed()) {
      m_buckets[i].work->test();
    }
  }
}

void DataParallel::end_group(int group) {
  TESSERA_CHECK(group >= 0 && group < m_options.groups_per_rank,
                "data parallel: sample group {} of {} on this rank", group,
                m_options.groups_per_rank);
  const auto n = static_cast<size_t>(m_arena_size);
  const auto g = static_cast<size_t>(group);
  Kokkos::deep_copy(Kokkos::subview(m_group_grads, std::make_pair(g * n, (g + 1) * n)), m_grads);
  zero_grads();
}

void DataParallel::finish_reduction() {
  if (m_options.groups_per_rank > 0) {
    // Every group's gradient on every rank, then one sum in group order: ((g0 + g1) + g2) + ...
    FloatView all = m_group_grads;
    if (m_size > 1) {
      m_comm
          .allgather(Tensor::alias("DataParallel::groups", m_group_grads, 0,
                                   {static_cast<Index>(m_group_grads.extent(0))}),
                     Tensor::alias("DataParallel::all_groups", m_all_groups, 0,
                                   {static_cast<Index>(m_all_groups.extent(0))}))
          ->wait();
      all = m_all_groups;
    }
    const Index n = m_arena_size;
    const Index groups = static_cast<Index>(all.extent(0)) / std::max<Index>(1, n);
    const FloatView grads = m_grads;
    Kokkos::parallel_for(
        "DataParallel::sum_groups", Policy(0, n), KOKKOS_LAMBDA(const Index i) {
          float s = all(i);
          for (Index g = 1; g < groups; ++g) {
            s += all(g * n + i);
          }
          grads(i) = s;
        });
    reduce_extra_axes();
    reduce_tied();
    return;
  }
  if (m_size > 1 && m_shared) {
    m_shared->finish_reduce();  // also reports buckets whose parameters got no gradient
    m_next_bucket = m_buckets.size();
  } else if (m_size > 1) {
    while (m_next_bucket < m_buckets.size()) {  // buckets whose parameters got no gradient
      start_bucket(m_buckets[m_next_bucket++]);
    }
    for (Bucket& b : m_buckets) {
      b.work->wait();
    }
  }
  reduce_extra_axes();
  reduce_tied();
}

void DataParallel::find_tied() {
  if (m_grid == nullptr || m_place.size_of(GridAxis::pipeline) == 1) {
    return;
  }
  // Every stage's parameters (name and local shape); a name several stages hold is a tied weight.
  comm::Communicator& pipe = m_grid->axis(GridAxis::pipeline);
  std::string mine;
  for (const nn::Parameter* p : m_params) {
    mine += fmt::format("{}\x1f{}\x1e", p->name, fmt::join(p->value.shape(), ","));
  }
  const std::vector<std::string> stages = comm::allgather_text(pipe, mine);
  struct Listed {
    std::string name;
    std::string shape;
    int first = 0;  // the first stage that holds it
    int holders = 0;
  };
  std::vector<Listed> order;  // by first appearance, the same on every rank
  for (size_t s = 0; s < stages.size(); ++s) {
    const std::string& text = stages[s];
    for (size_t at = 0; at < text.size();) {
      const size_t end = text.find('\x1e', at);
      const size_t sep = text.find('\x1f', at);
      TESSERA_CHECK(end != std::string::npos && sep < end, "data parallel: a bad parameter list");
      const std::string name = text.substr(at, sep - at);
      auto it = std::find_if(order.begin(), order.end(),
                             [&name](const Listed& l) { return l.name == name; });
      if (it == order.end()) {
        order.push_back({name, text.substr(sep + 1, end - sep - 1), static_cast<int>(s), 0});
        it = order.end() - 1;
      }
      ++it->holders;
      at = end + 1;
    }
  }
  for (const Listed& l : order) {
    if (l.holders < 2) {
      continue;
    }
    Tied t;
    t.name = l.name;
    for (size_t at = 0; at < l.shape.size();) {
      size_t end = l.shape.find(',', at);
      end = end == std::string::npos ? l.shape.size() : end;
      t.local.push_back(std::stoll(l.shape.substr(at, end - at)));
      at = end + 1;
    }
    for (nn::Parameter* p : m_params) {
      if (p->name == l.name) {
        t.mine = p;
      }
    }
    t.copy = t.mine != nullptr && l.first != pipe.rank();
    m_tied.push_back(std::move(t));
  }
  if (!m_tied.empty() && m_options.zero) {
    throw input_error(fmt::format(
        "parallel.zero = 1 with a weight tied across pipeline stages ({}) is not available: "
        "use parallel.zero = 0, or put the tied layers on one stage (parallel.stages)",
        m_tied.front().name));
  }
}

void DataParallel::reduce_tied() {
  // A weight tied across stages (an embedding and the head that reuses it): each holder has its
  // own part of the gradient, summed over the stages (the others add zeros), so every copy takes
  // the same update.
  if (m_tied.empty()) {
    return;
  }
  settle_shared_grads();
  comm::Communicator& pipe = m_grid->axis(GridAxis::pipeline);
  for (const Tied& t : m_tied) {
    const Tensor g = t.mine != nullptr ? t.mine->grad : Tensor("tied gradient", t.local);
    pipe.allreduce(g)->wait();
  }
}

bool DataParallel::counted(const nn::Parameter* p) const {
  for (const Tied& t : m_tied) {
    if (t.mine == p) {
      return !t.copy;
    }
  }
  return true;
}

void DataParallel::settle_shared_grads() {
  // The other ranks of the node may still be copying sums out of this rank's gradient array.
  if (m_shared && !m_scatter) {
    m_shared->wait_copied();
  }
}

void DataParallel::reduce_extra_axes() {
  // Gradients partial over more axes than data: their data-axis sums (under ZeRO-1, this rank's
  // chunk of them) summed over the others, in place.
  std::vector<std::unique_ptr<comm::Work>> works;
  for (const Bucket& b : m_buckets) {
    if (b.extra.empty()) {
      continue;
    }
    if (works.empty()) {
      settle_shared_grads();
    }
    const Index chunk = m_scatter ? b.count / m_size : b.count;
    const Index begin = m_scatter ? b.begin + m_rank * chunk : b.begin;
    works.push_back(
        over(b.extra).allreduce(Tensor::alias("DataParallel::extra", m_grads, begin, {chunk})));
  }
  for (auto& w : works) {
    w->wait();
  }
}

std::vector<double> DataParallel::gather_over_pipeline(const std::vector<double>& mine) const {
  std::vector<double> out;
  for (const std::vector<double>& stage :
       comm::allgather_varying(m_grid->axis(GridAxis::pipeline), mine)) {
    out.insert(out.end(), stage.begin(), stage.end());
  }
  return out;
}

double DataParallel::clip_grad_norm(double max_norm) {
  TESSERA_CHECK(max_norm > 0.0, "gradient clipping: max_norm = {} must be > 0", max_norm);
  // This rank's share of the sum of squares: the elements it owns among the ranks of the norm's
  // axes that hold copies of them (a gradient replicated over tensor is counted on tensor rank 0).
  const std::vector<nn::Parameter*>& mine = m_scatter ? m_piece_ptrs : m_params;
  const AxisSet distinct = m_scatter ? AxisSet{GridAxis::data} : AxisSet{};  // pieces: own
  double sum = 0.0;
  if (m_scatter) {  // ZeRO-1's pieces differ in number between the data ranks
    for (const nn::Parameter* p : mine) {
      if (m_place.first_on((copy_axes(p->layout) - distinct) & m_norm_axes)) {
        sum += kernels::sum_squares(p->grad);
      }
    }
    comm::Communicator& axes = over(m_norm_axes);
    if (axes.size() > 1) {
      axes.allreduce(comm::Buffer(&sum, 1))->wait();
    }
  } else {
    // Per parameter, summed over the axes that split it, then added up in model order — across
    // the pipeline's stages too, so the norm is the same bit for bit however the model is cut.
    std::vector<double> squares(mine.size(), 0.0);
    for (size_t i = 0; i < mine.size(); ++i) {
      if (m_place.first_on(copy_axes(mine[i]->layout) & m_norm_axes) && counted(mine[i])) {
        squares[i] = kernels::sum_squares(mine[i]->grad);
      }
    }
    comm::Communicator& axes = over(m_norm_axes - AxisSet{GridAxis::pipeline});
    if (axes.size() > 1 && !squares.empty()) {
      axes.allreduce(comm::Buffer(squares))->wait();
    }
    if (m_norm_axes.contains(GridAxis::pipeline)) {
      squares = gather_over_pipeline(squares);
    }
    for (const double x : squares) {
      sum += x;
    }
  }
  const double norm = std::sqrt(sum);
  if (norm > max_norm) {
    settle_shared_grads();  // scaled in place
  }
  optim::scale_to_norm(mine, norm, max_norm);
  return norm;
}

void DataParallel::step(optim::Optimizer& optimizer, double lr, double samples) {
  if (!m_options.zero) {
    optimizer.step(m_params, lr);
  } else {
    if (m_shared) {
      m_shared->begin_update();  // every rank has copied this rank's previous update
      optimizer.step(m_piece_ptrs, lr);
      m_shared->updated();  // the others copy it in their next sync_parameters()
    } else {
      optimizer.step(m_piece_ptrs, lr);
    }
    if (m_size > 1 && !m_shared) {
      for (const Bucket& b : m_buckets) {
        const Index chunk = b.count / m_size;
        const Tensor mine =
            Tensor::alias("DataParallel::chunk", m_values, b.begin + m_rank * chunk, {chunk});
        const Tensor whole = Tensor::alias("DataParallel::bucket", m_values, b.begin, {b.count});
        m_gathers.push_back(m_comm.allgather(mine, whole));
      }
    }
  }
  if (m_options.groups_per_rank > 0) {
    // Deterministic mode: the sample groups' batch statistics, kept by their forwards, move the
    // running estimates in the global order of the groups, as on one rank.
    m_model.commit_statistics(m_comm);
  } else {
    average_buffers(samples);
  }
}

void DataParallel::average_buffers(double samples) {
  // Running statistics are averaged over their partial axes (each data rank saw its own samples).
  std::map<const comm::Communicator*, double> totals;  // the samples over each set of axes
  for (const nn::Parameter* b : m_buffers) {
    comm::Communicator& axes = over(b->partial);
    if (axes.size() <= 1) {
      continue;
    }
    if (samples < 0.0) {
      axes.allreduce(b->value)->wait();
      kernels::scale(1.0F / static_cast<float>(axes.size()), b->value);
      continue;
    }
    auto total = totals.find(&axes);
    if (total == totals.end()) {
      double sum = samples;
      axes.allreduce(comm::Buffer(&sum, 1))->wait();
      total = totals.emplace(&axes, sum).first;
    }
    if (!(total->second > 0.0)) {
      continue;  // no rank saw a sample: the statistics did not move
    }
    // Σ n_r · b_r / Σ n_r (the scaling by n_r exact for the equal shares of power-of-two sizes).
    kernels::scale(static_cast<float>(samples), b->value);
    axes.allreduce(b->value)->wait();
    kernels::scale(static_cast<float>(1.0 / total->second), b->value);
  }
}

StateRegistry DataParallel::registry(optim::Optimizer& optimizer) {
  sync_parameters();
  StateRegistry r = model_registry(m_model, m_place);  // the values live in the arenas now
  const auto disown_copies = [&] {  // a tied weight's copies are written by its first stage
    for (const Tied& t : m_tied) {
      if (!t.copy) {
        continue;
      }
      if (StateEntry* e = r.find(t.name, "")) {
        e->owner = false;
      }
      for (const std::string& state : optimizer.state_names()) {
        if (StateEntry* e = r.find(t.name, state)) {
          e->owner = false;
        }
      }
    }
  };
  // Optimizer state: per parameter in model order, its whole block or this rank's pieces of it.
  std::unordered_map<std::string, std::vector<size_t>> pieces_of;
  for (size_t i = 0; i < m_shards.size(); ++i) {
    pieces_of[m_shards[i].name].push_back(i);
  }
  for (const nn::Parameter* p : m_params) {
    for (const std::string& state : optimizer.state_names()) {
      if (!m_options.zero) {
        r.add(p->name, state, StateKind::optimizer_state, p->layout, optimizer.state_for(*p, state),
              copy_axes(p->layout));
        continue;
      }
      for (size_t i : pieces_of[p->name]) {
        r.add(p->name, state, StateKind::optimizer_state, p->layout,
              optimizer.state_for(*m_piece_ptrs[i], state),
              copy_axes(p->layout) - AxisSet{GridAxis::data}, m_shards[i].offset);
      }
      if (pieces_of[p->name].empty()) {  // no piece here: registered, holding nothing
        r.add(p->name, state, StateKind::optimizer_state, p->layout, Tensor(),
              copy_axes(p->layout) - AxisSet{GridAxis::data});
      }
    }
  }
  disown_copies();
  return r;
}

void DataParallel::sync_parameters() {
  if (m_shared) {
    m_shared->gather_values();  // ZeRO-1: the other ranks' updated chunks
  }
  for (auto& w : m_gathers) {
    w->wait();
  }
  m_gathers.clear();
}

}  // namespace tessera::parallel
