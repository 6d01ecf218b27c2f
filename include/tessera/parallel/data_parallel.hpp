#pragma once
// Data parallelism: every rank of the data axis holds the whole model and computes the gradient of
// its slice of the global batch; the gradients are summed over the axis before the optimizer steps.
//
// How (PyTorch DDP's reducer and ZeRO, on our Communicator):
// - Arena. Every parameter's value and gradient are re-homed into two contiguous arenas, laid out
//   in the order backward produces the gradients (last layer first). A bucket is a contiguous
//   range of the arena holding whole parameters, about `bucket_mb` MiB; reducing it is one
//   collective on a slice of the arena, with no packing copy.
// - Overlap. The backward hook reports each layer as its gradients are complete; as soon as every
//   parameter of the next bucket is complete its non-blocking allreduce starts, while backward
//   goes on through the layers before it. Buckets start in arena order on every rank. The hook
//   also tests the collectives in flight, which is when MPI progresses them.
// - Accumulation. Gradients add up over the micro-batches of a step (layers accumulate); only the
//   last micro-batch's backward starts reductions, so a step communicates once.
// - ZeRO-1. Each bucket is padded to a multiple of the data size P and cut into P chunks; an
//   in-place reduce-scatter leaves on rank r the summed gradient of chunk r, the optimizer updates
//   only the parameters' pieces inside rank r's chunks (its state exists only for those), and an
//   allgather of the values puts the updated parameters back on every rank before the next forward.
// - Node-local reduction. When every rank of the data axis is on one node (and the arenas are host
//   memory) the arenas live in an MPI-3 shared-memory window and a bucket is reduced through it
//   (comm::SharedReduction: each rank sums its chunk reading the others' arrays directly, then
//   copies the others' sums) instead of MPI_Iallreduce — one pass over memory, ~5× faster on the
//   gradients of a small model. The same places start and finish it: the hook reports a complete
//   bucket and sums what every rank has reported; finish_reduction() completes it. Under ZeRO-1 the
//   reduce-scatter is the sum of this rank's chunks, and the allgather of the values is the copy of
//   the others' updated chunks. `reduce` chooses it (automatic: whenever it applies).
// - Deterministic mode. The global batch is cut into G fixed sample groups, G/P per rank; each
//   group's gradient is computed whole on one rank and stashed; at the end of the step every rank
//   gathers all G group gradients and sums them in group order 0, 1, ..., G-1. The result depends
//   on G, never on P: parameters are bit-identical for every P that divides G.
//
// Losses are sums over the local samples divided by the global batch size, so the sum over the
// ranks is the gradient of the mean over the global batch.
//
// On a grid with more axes (tensor, later spatial and pipeline) every parameter is this rank's
// block of a distributed tensor (its Layout) and says over which axes its gradient is partial
// (nn::Parameter::partial): always the data axis, and e.g. a spatial axis when each rank computed
// it from its own tile. Buckets never mix parameters of different axis sets; a bucket's data-axis
// reduction is the one above, and its other axes are summed after it (an allreduce over the grid's
// communicator of those axes). Everything else that depends on where the pieces of a tensor live —
// which elements a norm counts, what a checkpoint writes — comes from registry().
#include "tessera/comm/communicator.hpp"
#include "tessera/comm/process_grid.hpp"
#include "tessera/comm/shared_reduction.hpp"
#include "tessera/nn/layer.hpp"
#include "tessera/optim/optimizer.hpp"
#include "tessera/parallel/registry.hpp"

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace tessera::parallel {

/// How the gradients are summed over the data axis.
enum class Reduce {
  automatic,  ///< shared memory when every data rank is on one node and the arenas are host memory
  mpi,        ///< the communicator's non-blocking collectives (MPI_Iallreduce, ...)
  shared,     ///< shared memory (comm::SharedReduction); an error if it does not apply
};

/// "auto", "mpi" or "shared" (the deck's parallel.reduce); throws tessera::Error on another name.
Reduce reduce_from_name(const std::string& name);

struct DataParallelOptions {
  double bucket_mb = 4.0;  ///< target bucket size in MiB (a bucket holds at least one parameter)
  Reduce reduce = Reduce::automatic;
  /// Free shared memory (bytes) to assume instead of measuring /dev/shm (0: measure); for tests.
  size_t shared_memory_free = 0;
  bool zero = false;        ///< ZeRO-1: optimizer state sharded over the data axis
  int groups_per_rank = 0;  ///< deterministic mode: sample groups per rank (0: off)
};

/// One rank's piece of a parameter under ZeRO-1: elements [offset, offset + count) of this rank's
/// block of parameter `name`, flattened (registry() says where they lie in the global tensor).
struct Shard {
  std::string name;
  Index offset = 0;
  Index count = 0;
};

class DataParallel {
 public:
  /// Collective over the trainer of `grid` (which outlives this object): re-homes the parameters
  /// of `model` (already initialised; each rank its blocks, equal over the data axis) into the
  /// arenas and checks that every rank built the same model (same names and global shapes in the
  /// same order), else throws tessera::Error on every rank.
  DataParallel(nn::Layer& model, const comm::ProcessGrid& grid, const DataParallelOptions& options);
  /// The same on a grid of one axis, `data` (every parameter whole on every rank).
  DataParallel(nn::Layer& model, comm::Communicator& data, const DataParallelOptions& options);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  /// Starts a step: waits for the parameters of the previous update (ZeRO's allgather) and zeroes
  /// every gradient.
  void begin_step();
  /// Whether the coming backward pass completes the step's gradients (its last micro-batch): only
  /// then does the backward hook start reductions.
  void set_last_micro_batch(bool last);
  /// The model's backward hook: `layer` has finished accumulating its parameters' gradients.
  void on_backward(nn::Layer& layer);
  /// Deterministic mode: the gradient of this rank's group `group` (0 .. groups_per_rank - 1) is
  /// complete; stashes it and zeroes the gradients for the next group.
  void end_group(int group);
  /// Completes the reduction (starting what the hook has not started): afterwards every gradient
  /// is the sum over the data axis, or under ZeRO-1 every piece this rank owns is.
  void finish_reduction();
  /// Clips the summed gradients to a global L2 norm of `max_norm` (see optim::clip_grad_norm):
  /// every element of every distributed gradient counted once, by its owner (the registry's rule),
  /// and the squares summed over the axes where the ranks hold different elements (none on a pure
  /// data-parallel grid without ZeRO). Returns the norm.
  double clip_grad_norm(double max_norm);
  /// Zeroes every gradient (a step the trainer skips: its update is made of zeros).
  void zero_grads();
  /// Updates the parameters with `optimizer` at learning rate `lr` (under ZeRO-1, this rank's
  /// pieces, then starts the allgather of the values), and averages the buffers (BatchNorm's
  /// running statistics) over the data axis, each rank weighted by `samples`, those of the step's
  /// batch it computed (< 0: equally). In deterministic mode (groups_per_rank > 0) the forwards
  /// kept their batch statistics (ForwardOptions::defer_stats) and the model commits them over the
  /// data axis instead, in the global order of the sample groups: bit for bit as on one rank.
  void step(optim::Optimizer& optimizer, double lr, double samples = -1.0);
  /// Averages the buffers (BatchNorm's running statistics) over the axes where the ranks saw
  /// different samples (part of step(); alone after forward passes that only update statistics):
  /// weighted by `samples`, this rank's samples (one small allreduce sums them), so that a rank
  /// whose share of a short last batch was empty, its statistics not moved, has no say; < 0:
  /// every rank equally.
  void average_buffers(double samples = -1.0);
  /// Whether the model has buffers (running statistics) at all.
  bool has_buffers() const { return !m_buffers.empty(); }
  /// Waits until every rank holds the updated parameters (before evaluation or reading them).
  void sync_parameters();
  /// Every parameter, buffer and state tensor of `optimizer` (created where missing, zero-filled)
  /// as this rank holds it: whole local blocks, or under ZeRO-1 this rank's pieces of the state.
  /// Waits for the parameters first.
  StateRegistry registry(optim::Optimizer& optimizer);
  /// Where this rank sits in the grid.
  const GridPlace& place() const { return m_place; }

  /// The model's parameters, in model order (values and gradients now live in the arenas).
  const std::vector<nn::Parameter*>& parameters() const { return m_params; }
  /// The model's buffers (BatchNorm's running statistics).
  const std::vector<nn::Parameter*>& buffers() const { return m_buffers; }
  bool zero() const { return m_options.zero; }
  /// ZeRO-1: the pieces this rank updates (empty without ZeRO-1).
  const std::vector<Shard>& shards() const { return m_shards; }
  /// ZeRO-1: the same pieces as the parameters the optimizer steps (its state is keyed by them).
  const std::vector<nn::Parameter*>& pieces() const { return m_piece_ptrs; }
  int bucket_count() const { return static_cast<int>(m_buckets.size()); }
  /// Whether the gradients are summed through shared memory (else by the communicator).
  bool shared_reduction() const { return m_shared != nullptr; }
  /// The nodes the shared-memory reduction spans (more than one: hierarchical; 0: none).
  int shared_nodes() const;
  /// Elements of the arena (parameters plus ZeRO's padding).
  Index arena_size() const { return m_arena_size; }
  /// What the constructor found worth telling the user (a fallback it took), for the program to
  /// print: library code does not print.
  const std::vector<std::string>& warnings() const { return m_warnings; }

 private:
  struct Bucket {
    Index begin = 0;  // first element in the arenas
    Index count = 0;  // elements, a multiple of the data size under ZeRO-1
    AxisSet extra;    // the axes besides data its gradients are partial over (size > 1)
    std::vector<nn::Parameter*> params;
    std::vector<Index> offsets;  // each parameter's first element in the arenas
    size_t ready = 0;            // parameters whose gradient is complete this step
    std::unique_ptr<comm::Work> work;
  };

  void init(const DataParallelOptions& options);
  /// The communicator of `axes` (its axes of one rank ignored).
  comm::Communicator& over(AxisSet axes) const;
  /// A parameter's partial axes beyond data, of more than one rank.
  AxisSet extra_axes(const nn::Parameter& p) const;
  void build_buckets(double bucket_mb);
  bool use_shared_reduction();
  void allocate_arenas();
  void check_same_model() const;
  void start_bucket(Bucket& bucket);
  void start_ready_buckets();
  void reduce_extra_axes();
  /// Before writing the reduced gradients in place: the shared reduction's copies are done.
  void settle_shared_grads();
  void make_shards();
  /// Finds the parameters several pipeline stages hold (a weight tied across stages).
  void find_tied();
  /// Sums the tied weights' gradients over the pipeline axis.
  void reduce_tied();
  /// Whether this rank counts `p` in the norm (not a later stage's copy of a tied weight).
  bool counted(const nn::Parameter* p) const;
  /// Every pipeline stage's `mine`, concatenated in stage order (collective over the axis).
  std::vector<double> gather_over_pipeline(const std::vector<double>& mine) const;
  bool reducing() const;

  nn::Layer& m_model;
  comm::Communicator& m_comm;  // the data axis
  const comm::ProcessGrid* m_grid = nullptr;
  std::unique_ptr<comm::MpiCommunicator> m_self;  // without a grid: axes of one rank
  GridPlace m_place;
  AxisSet m_norm_axes;  // where the ranks hold different elements of the (reduced) gradients
  DataParallelOptions m_options;
  int m_rank = 0;
  int m_size = 1;
  std::vector<nn::Parameter*> m_params;   // model order
  std::vector<nn::Parameter*> m_buffers;  // BatchNorm's running statistics
  std::unordered_map<const nn::Parameter*, size_t> m_bucket_of;
  std::vector<Bucket> m_buckets;  // arena order
  size_t m_next_bucket = 0;       // the next bucket to start this step
  bool m_last_micro_batch = true;
  bool m_scatter = false;  // ZeRO-1 reduce-scatters (more than one rank, not deterministic)
  Index m_arena_size = 0;
  FloatView m_values;       // (arena) parameters
  FloatView m_grads;        // (arena) gradients
  FloatView m_group_grads;  // (groups_per_rank, arena) deterministic mode: stashed gradients
  FloatView m_all_groups;   // (P · groups_per_rank, arena) deterministic mode: every group
  std::vector<nn::Parameter> m_pieces;  // ZeRO-1: this rank's pieces as parameters
  struct Tied {
    std::string name;
    Shape local;                    // this rank's block
    nn::Parameter* mine = nullptr;  // null on a stage that does not hold it
    bool copy = false;              // an earlier stage holds it too
  };
  std::vector<Tied> m_tied;  // weights several pipeline stages hold, in the same order everywhere
  std::vector<nn::Parameter*> m_piece_ptrs;
  std::vector<Shard> m_shards;
  std::vector<std::unique_ptr<comm::Work>> m_gathers;  // ZeRO-1: allgathers in flight
  std::unique_ptr<comm::SharedReduction> m_shared;     // the arenas' window, when node-local
  std::vector<std::string> m_warnings;
};

}  // namespace tessera::parallel
