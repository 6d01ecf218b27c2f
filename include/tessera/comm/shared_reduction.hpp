#pragma once
// SharedReduction: a sum over the ranks of one node through their shared memory, with no message
// passing — MPI-3's shared-memory windows (MPI_Win_allocate_shared), as hybrid "MPI+MPI" codes use
// them. Every rank's gradient and parameter arrays live in one window that every rank of the node
// can read; a reduction is then one pass over memory instead of MPI's copies through its transport:
//
//   reduce    rank r sums chunk r of every segment over all ranks' gradient arrays, in rank order
//             (g0 + g1) + g2 + ..., into its own array;
//   gather    rank r copies chunk k of every segment from rank k's array (the sum) into its own.
//
// For 0.9 MiB on two ranks of this machine that is ~19 µs against ~97 µs for MPI_Allreduce
// (bench/RESULTS.md). A segment (DataParallel's bucket) is reduced as soon as every rank has
// reported it ready and this rank next calls ready() or progress(), so reduction overlaps backward
// as MPI's non-blocking collectives do.
//
// Synchronisation is through flags in the window, one cache line each, written only by their owner:
// per rank, round counters (a round is one step's reduction) for "segment s ready", "my chunks of
// s summed", "I have copied the sums" and, for ZeRO-1, "my chunks of the parameters updated" and
// "I have copied everybody's parameters". A rank waits for a flag by spinning briefly, then
// yielding the core (ranks may outnumber cores). A rank never overwrites an array another rank may
// still be reading: begin_round() waits until every rank has finished reading this rank's gradients
// of the previous round, begin_update() until every rank has copied this rank's previous
// parameters.
//
// Across nodes (hierarchical): when the group spans several nodes that hold the same number of
// ranks, the window is per node, and the rank that sums chunk r of a segment on its node then sums
// it over the nodes with MPI_Allreduce among the ranks of the same node rank (one per node) before
// posting it: intra-node traffic through memory, inter-node traffic 1/ranks-per-node of the
// gradients per rank, all ranks of a node sending at once. Not with ZeRO-1 (its chunks are per
// data rank). The arrays are host memory.
// Like MPI's collectives, every rank takes part in every round; a rank that stops taking part (an
// error on one rank only) leaves the others waiting, as in MPI — the applications abort the job on
// such errors (apps/app_main.cpp).
#include "tessera/core/layout.hpp"

#include <mpi.h>

#include <cstdint>
#include <vector>

namespace tessera::comm {

/// The ranks of `comm` on this node (MPI_COMM_TYPE_SHARED), as a new communicator the caller
/// frees. Test-only: the environment variable TESSERA_TEST_RANKS_PER_NODE = k makes each run of k
/// consecutive ranks of `comm` a node of its own, so that one machine's ranks look like several
/// nodes (tests of the hierarchical reduction).
MPI_Comm split_by_node(MPI_Comm comm);

/// How the ranks of `comm` spread over nodes (collective; the same on every rank).
struct NodeLayout {
  int nodes = 1;
  int ranks_per_node = 1;  ///< 0 when the nodes hold different numbers of ranks
};
NodeLayout node_layout(MPI_Comm comm);

/// Whether every rank of `comm` is on this node, sharing its memory (collective; the same answer on
/// every rank).
bool on_one_node(MPI_Comm comm);

/// Free bytes of /dev/shm, where MPICH and Open MPI back shared-memory windows on Linux (a
/// container often mounts only 64 MiB there, and a window larger than that would fault when
/// touched); the largest size_t where it cannot be told.
size_t shared_memory_free();

class SharedReduction {
 public:
  /// Collective over `comm`, whose ranks must all be on one node, or spread evenly over nodes (then
  /// not scatter_only: hierarchical, see above). Allocates this rank's gradient
  /// and parameter arrays of `elements` floats each (zeroed) in a shared window. `segments` cut
  /// [0, elements) into the ranges reduced together, in the order they become ready; each is split
  /// into size() chunks by block_range. `scatter_only`: ZeRO-1 — finish_reduce() leaves on each
  /// rank only its own chunks summed, and the parameters are gathered instead (gather_values()).
  SharedReduction(MPI_Comm comm, Index elements, std::vector<Range> segments, bool scatter_only);
  /// Frees the window (collective), except while an exception unwinds: then it is left to the
  /// process's end, since the other ranks may not be here.
  ~SharedReduction();
  SharedReduction(const SharedReduction&) = delete;
  SharedReduction& operator=(const SharedReduction&) = delete;

  /// Bytes of shared memory one rank's part of the window takes.
  static size_t window_bytes(Index elements, size_t segments);

  /// This rank's place and the number of ranks on its node.
  int rank() const { return m_rank; }
  int size() const { return m_size; }
  /// The number of nodes the group spans (more than one: hierarchical).
  int nodes() const { return m_nodes; }
  Index elements() const { return m_elements; }
  /// This rank's arrays (host memory, `elements()` floats, aligned to 64 bytes).
  float* grads() { return m_grads[static_cast<size_t>(m_rank)]; }
  float* values() { return m_values[static_cast<size_t>(m_rank)]; }
  /// Chunk `rank` of segment `segment`: the elements that rank sums (and, under ZeRO-1, updates).
  Range chunk(size_t segment, int rank) const;

  /// Starts a round (a step's reduction): waits until every rank has finished reading this rank's
  /// gradient array in the previous round, so the caller may overwrite it (zero it) afterwards.
  void begin_round();
  /// This rank's gradients of `segment` are complete; sums this rank's chunk of every segment that
  /// every rank has reported (without waiting for the others).
  void ready(size_t segment);
  /// Sums what can be summed without waiting (as ready()).
  void progress();
  /// Completes the round's reduction: reports the segments not reported yet, sums this rank's
  /// chunks (waiting for the others' gradients), and — unless scatter_only — copies the other
  /// chunks' sums, so this rank's gradient array holds the whole sum.
  void finish_reduce();
  /// After finish_reduce() (not scatter_only): waits until every rank has copied its sums out of
  /// this rank's gradient array, so the caller may write it in place this round (clip it, sum it
  /// over another axis) without another rank copying half-written values.
  void wait_copied();

  /// ZeRO-1, before the optimizer writes this rank's chunks of its parameter array: waits until
  /// every rank has copied them after the previous round.
  void begin_update();
  /// ZeRO-1: this rank's chunks of the parameters are updated (others may copy them).
  void updated();
  /// ZeRO-1: copies every other rank's updated chunks into this rank's parameter array.
  void gather_values();

 private:
  // Flags of one rank, each on its own cache line: [ready × S][summed × S][sums copied]
  // [values updated][values copied].
  std::uint64_t* flag(int rank, size_t slot) const;
  void post(size_t slot, std::uint64_t value);
  void wait(int rank, size_t slot, std::uint64_t value) const;
  bool reached(int rank, size_t slot, std::uint64_t value) const;
  void sum_chunk(size_t segment);
  // Chunk (segment, rank) of rank `rank`'s array into this rank's (arrays: m_grads or m_values).
  void copy_chunk(const std::vector<float*>& arrays, size_t segment, int rank);
  size_t ready_slot(size_t segment) const { return segment; }
  size_t summed_slot(size_t segment) const { return m_segments.size() + segment; }
  size_t copied_slot() const { return 2 * m_segments.size(); }
  size_t updated_slot() const { return 2 * m_segments.size() + 1; }
  size_t values_copied_slot() const { return 2 * m_segments.size() + 2; }

  MPI_Comm m_comm = MPI_COMM_NULL;   // the group's ranks on this node, for the window
  MPI_Comm m_cross = MPI_COMM_NULL;  // hierarchical: the ranks of this node rank on every node
  int m_nodes = 1;
  MPI_Win m_window = MPI_WIN_NULL;
  int m_rank = 0;
  int m_size = 1;
  Index m_elements = 0;
  std::vector<Range> m_segments;
  bool m_scatter_only = false;
  std::vector<unsigned char*> m_flags;  // per rank
  std::vector<float*> m_grads;          // per rank
  std::vector<float*> m_values;         // per rank
  std::uint64_t m_round = 0;
  std::vector<char> m_reported;      // this round: segments this rank reported ready
  std::vector<char> m_summed;        // this round: segments whose chunk this rank has summed
  size_t m_next_sum = 0;             // the first segment not summed yet (summed in order)
  bool m_values_posted = false;      // ZeRO-1: updated(), and gather_values() not done since
  std::uint64_t m_values_round = 0;  // ZeRO-1: the round of this rank's last updated()
};

}  // namespace tessera::comm
