#include "tessera/comm/shared_reduction.hpp"

#include "tessera/comm/agree.hpp"
#include "tessera/comm/watchdog.hpp"
#include "tessera/core/check.hpp"

#include <sched.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>

namespace tessera::comm {
namespace {
constexpr size_t kLine = 64;  // bytes per flag: one cache line, so flags never share one

size_t round_up(size_t n, size_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

MPI_Comm split_by_node(MPI_Comm comm) {
  MPI_Comm node = MPI_COMM_NULL;
  const char* test_split = std::getenv("TESSERA_TEST_RANKS_PER_NODE");
  const int per_node = test_split != nullptr ? std::atoi(test_split) : 0;
  if (per_node > 0) {
    int rank = 0;
    TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    TESSERA_MPI_CHECK(MPI_Comm_split(comm, rank / per_node, rank, &node));
  } else {
    TESSERA_MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  }
  return node;
}

NodeLayout node_layout(MPI_Comm comm) {
  MPI_Comm node = split_by_node(comm);
  int node_rank = 0;
  int node_size = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(node, &node_rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(node, &node_size));
  TESSERA_MPI_CHECK(MPI_Comm_free(&node));
  // {nodes, smallest node, -largest node}
  int v[3] = {node_rank == 0 ? 1 : 0, node_size, -node_size};
  int sum = 0;
  TESSERA_MPI_CHECK(MPI_Allreduce(&v[0], &sum, 1, MPI_INT, MPI_SUM, comm));
  int extremes[2] = {0, 0};
  TESSERA_MPI_CHECK(MPI_Allreduce(&v[1], extremes, 2, MPI_INT, MPI_MIN, comm));
  NodeLayout layout;
  layout.nodes = sum;
  layout.ranks_per_node = extremes[0] == -extremes[1] ? extremes[0] : 0;
  return layout;
}

bool on_one_node(MPI_Comm comm) {
  return node_layout(comm).nodes == 1;
}

size_t shared_memory_free() {
  struct statvfs fs {};
  if (statvfs("/dev/shm", &fs) != 0) {
    return std::numeric_limits<size_t>::max();
  }
  return static_cast<size_t>(fs.f_bavail) * static_cast<size_t>(fs.f_frsize);
}

namespace {
size_t flag_bytes(size_t segments) {
  return round_up((2 * segments + 3) * kLine, kLine);
}
size_t array_bytes(Index elements) {
  return round_up(static_cast<size_t>(elements) * sizeof(float), kLine);
}
}  // namespace

size_t SharedReduction::window_bytes(Index elements, size_t segments) {
  return flag_bytes(segments) + 2 * array_bytes(elements) + kLine;  // + slack to align the start
}

SharedReduction::SharedReduction(MPI_Comm comm, Index elements, std::vector<Range> segments,
                                 bool scatter_only)
    : m_elements(elements), m_segments(std::move(segments)), m_scatter_only(scatter_only) {
  TESSERA_CHECK(elements >= 0, "shared reduction: {} elements", elements);
  Index at = 0;
  for (const Range& s : m_segments) {
    TESSERA_CHECK(s.offset == at && s.count >= 0,
                  "shared reduction: segments must cut [0, {}) in order; one is [{}, {})", elements,
                  s.offset, s.offset + s.count);
    at += s.count;
  }
  TESSERA_CHECK(at == elements, "shared reduction: the segments cover {} of {} elements", at,
                elements);
  const NodeLayout layout = node_layout(comm);
  TESSERA_CHECK(layout.ranks_per_node > 0,
                "shared reduction: the nodes hold different numbers of the group's ranks");
  TESSERA_CHECK(layout.nodes == 1 || !scatter_only,
                "shared reduction: ZeRO-1 (scatter_only) on one node only, not across {} nodes",
                layout.nodes);
  m_nodes = layout.nodes;
  m_comm = split_by_node(comm);
  TESSERA_MPI_CHECK(MPI_Comm_rank(m_comm, &m_rank));
  TESSERA_MPI_CHECK(MPI_Comm_size(m_comm, &m_size));
  int group_rank = 0;
  TESSERA_MPI_CHECK(MPI_Comm_rank(comm, &group_rank));
  if (m_nodes > 1) {
    TESSERA_MPI_CHECK(MPI_Comm_split(comm, m_rank, group_rank, &m_cross));
  } else {
    // ZeRO-1's chunks are the group's ranks': on one node the node rank must be the group rank.
    TESSERA_CHECK(group_rank == m_rank, "shared reduction: rank {} is rank {} on its node",
                  group_rank, m_rank);
  }

  // This rank's part of the window: flags, then gradients, then parameters; each rank's part is
  // allocated near its own cores (alloc_shared_noncontig) and found by the others with
  // MPI_Win_shared_query.
  const size_t flags = flag_bytes(m_segments.size());
  const size_t array = array_bytes(elements);
  const size_t bytes = window_bytes(elements, m_segments.size());
  MPI_Info info = MPI_INFO_NULL;
  TESSERA_MPI_CHECK(MPI_Info_create(&info));
  TESSERA_MPI_CHECK(MPI_Info_set(info, "alloc_shared_noncontig", "true"));
  void* base = nullptr;
  const int rc =
      MPI_Win_allocate_shared(static_cast<MPI_Aint>(bytes), 1, info, m_comm, &base, &m_window);
  MPI_Info_free(&info);
  TESSERA_MPI_CHECK(rc);
  for (int k = 0; k < m_size; ++k) {
    MPI_Aint size = 0;
    int unit = 0;
    void* p = nullptr;
    TESSERA_MPI_CHECK(MPI_Win_shared_query(m_window, k, &size, &unit, &p));
    auto address = reinterpret_cast<std::uintptr_t>(p);
    address = (address + kLine - 1) / kLine * kLine;
    auto* start = reinterpret_cast<unsigned char*>(address);
    m_flags.push_back(start);
    m_grads.push_back(reinterpret_cast<float*>(start + flags));
    m_values.push_back(reinterpret_cast<float*>(start + flags + array));
  }
  std::memset(m_flags[static_cast<size_t>(m_rank)], 0, flags + 2 * array);
  // Every rank's memory is zeroed before any rank reads a flag.
  TESSERA_MPI_CHECK(MPI_Win_fence(0, m_window));
  TESSERA_MPI_CHECK(MPI_Barrier(m_comm));
  m_reported.assign(m_segments.size(), 0);
  m_summed.assign(m_segments.size(), 0);
}

SharedReduction::~SharedReduction() {
  if (std::uncaught_exceptions() > 0) {
    return;  // the collective frees below could wait for ranks that are not coming
  }
  MPI_Win_free(&m_window);
  MPI_Comm_free(&m_comm);
  if (m_cross != MPI_COMM_NULL) {
    MPI_Comm_free(&m_cross);
  }
}

Range SharedReduction::chunk(size_t segment, int rank) const {
  const Range& s = m_segments.at(segment);
  const Range c = block_range(s.count, m_size, rank);
  return {s.offset + c.offset, c.count};
}

std::uint64_t* SharedReduction::flag(int rank, size_t slot) const {
  return reinterpret_cast<std::uint64_t*>(m_flags[static_cast<size_t>(rank)] + slot * kLine);
}

void SharedReduction::post(size_t slot, std::uint64_t value) {
  // Release: every write of this rank before the flag is visible to a rank that reads the flag.
  __atomic_store_n(flag(m_rank, slot), value, __ATOMIC_RELEASE);
}

bool SharedReduction::reached(int rank, size_t slot, std::uint64_t value) const {
  return __atomic_load_n(flag(rank, slot), __ATOMIC_ACQUIRE) >= value;
}

void SharedReduction::wait(int rank, size_t slot, std::uint64_t value) const {
  if (reached(rank, slot, value)) {
    return;
  }
  watchdog::Blocked blocked;  // the reduction's last launch: a shared-memory spin is a collective
  // Spin a little (the other rank is usually about to post), then give the core away on every
  // try: with more ranks than cores a spinning rank would otherwise hold the one it waits for off.
  for (int spin = 0; !reached(rank, slot, value); ++spin) {
    if (spin < 2000) {
      cpu_relax();
    } else {
      sched_yield();
    }
  }
}

void SharedReduction::begin_round() {
  (void)watchdog::record_start("shared-memory reduction", "data (this node)", 0);
  if (m_round > 0) {
    for (int k = 0; k < m_size; ++k) {
      if (k == m_rank) {
        continue;
      }
      if (m_scatter_only) {
        // Rank k read this rank's gradients while summing its chunks.
        for (size_t s = 0; s < m_segments.size(); ++s) {
          wait(k, summed_slot(s), m_round);
        }
      } else {
        wait(k, copied_slot(), m_round);  // after its sums, which came before its copies
      }
    }
  }
  ++m_round;
  std::fill(m_reported.begin(), m_reported.end(), 0);
  std::fill(m_summed.begin(), m_summed.end(), 0);
  m_next_sum = 0;
}

void SharedReduction::sum_chunk(size_t segment) {
  const Range c = chunk(segment, m_rank);
  float* out = grads() + c.offset;
  const auto n = static_cast<size_t>(c.count);
  // (g0 + g1) + g2 + ...: the same order whichever rank owns the chunk. This rank's own gradient
  // is one of the terms, so each block is summed aside and then stored.
  constexpr size_t kBlock = 512;
  float block[kBlock];
  for (size_t at = 0; at < n; at += kBlock) {
    const size_t m = std::min(kBlock, n - at);
    const float* g0 = m_grads[0] + c.offset + at;
    for (size_t i = 0; i < m; ++i) {
      block[i] = g0[i];
    }
    for (size_t k = 1; k < static_cast<size_t>(m_size); ++k) {
      const float* g = m_grads[k] + c.offset + at;
      for (size_t i = 0; i < m; ++i) {
        block[i] += g[i];
      }
    }
    std::memcpy(out + at, block, m * sizeof(float));
  }
  if (m_cross != MPI_COMM_NULL && n > 0) {
    // Hierarchical: the node's sum of this chunk, summed over the nodes by the ranks of this node
    // rank (every node's chunk r has the same range), before the node's ranks may copy it.
    const std::uint64_t seq = watchdog::record_start("allreduce", "data (between nodes)",
                                                     static_cast<std::int64_t>(n * sizeof(float)));
    watchdog::Blocked blocked(seq);
    TESSERA_MPI_CHECK(
        MPI_Allreduce(MPI_IN_PLACE, out, static_cast<int>(n), MPI_FLOAT, MPI_SUM, m_cross));
  }
  m_summed[segment] = 1;
  post(summed_slot(segment), m_round);
}

void SharedReduction::progress() {
  while (m_next_sum < m_segments.size() && m_reported[m_next_sum]) {
    for (int k = 0; k < m_size; ++k) {
      if (!reached(k, ready_slot(m_next_sum), m_round)) {
        return;
      }
    }
    sum_chunk(m_next_sum++);
  }
}

void SharedReduction::ready(size_t segment) {
  TESSERA_CHECK(segment < m_segments.size(), "shared reduction: segment {} of {}", segment,
                m_segments.size());
  TESSERA_CHECK(m_round > 0, "shared reduction: ready() before begin_round()");
  m_reported[segment] = 1;
  post(ready_slot(segment), m_round);
  progress();
}

void SharedReduction::finish_reduce() {
  TESSERA_CHECK(m_round > 0, "shared reduction: finish_reduce() before begin_round()");
  for (size_t s = 0; s < m_segments.size(); ++s) {
    if (!m_reported[s]) {
      m_reported[s] = 1;
      post(ready_slot(s), m_round);
    }
  }
  for (; m_next_sum < m_segments.size(); ++m_next_sum) {
    for (int k = 0; k < m_size; ++k) {
      wait(k, ready_slot(m_next_sum), m_round);
    }
    sum_chunk(m_next_sum);
  }
  if (m_scatter_only) {
    return;
  }
  for (size_t s = 0; s < m_segments.size(); ++s) {
    for (int k = 0; k < m_size; ++k) {
      if (k == m_rank) {
        continue;
      }
      wait(k, summed_slot(s), m_round);
      copy_chunk(m_grads, s, k);
    }
  }
  post(copied_slot(), m_round);
}

void SharedReduction::wait_copied() {
  TESSERA_CHECK(!m_scatter_only,
                "shared reduction: wait_copied() under ZeRO-1 (nothing is copied)");
  for (int k = 0; k < m_size; ++k) {
    if (k != m_rank) {
      wait(k, copied_slot(), m_round);
    }
  }
}

void SharedReduction::copy_chunk(const std::vector<float*>& arrays, size_t segment, int rank) {
  const Range c = chunk(segment, rank);
  std::memcpy(arrays[static_cast<size_t>(m_rank)] + c.offset,
              arrays[static_cast<size_t>(rank)] + c.offset,
              static_cast<size_t>(c.count) * sizeof(float));
}

void SharedReduction::begin_update() {
  // Every rank has copied this rank's parameters of its last update (gather_values).
  for (int k = 0; k < m_size; ++k) {
    if (k != m_rank) {
      wait(k, values_copied_slot(), m_values_round);
    }
  }
}

void SharedReduction::updated() {
  m_values_round = m_round;
  post(updated_slot(), m_values_round);
  m_values_posted = true;
}

void SharedReduction::gather_values() {
  if (!m_values_posted) {
    return;
  }
  for (int k = 0; k < m_size; ++k) {
    if (k == m_rank) {
      continue;
    }
    wait(k, updated_slot(), m_values_round);
    for (size_t s = 0; s < m_segments.size(); ++s) {
      copy_chunk(m_values, s, k);
    }
  }
  post(values_copied_slot(), m_values_round);
  m_values_posted = false;
}

}  // namespace tessera::comm
