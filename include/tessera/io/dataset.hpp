#pragma once
// Tessera's dataset format (docs/dataset-format.md) and the sharded, shuffled, prefetching reader.
//
// One HDF5 file; a group per split ("/train", "/test") holding either samples
//   x  (N, C, H, W) or (N, C, D, H, W)   uint8 | float16 | float32, chunked one sample per chunk
//   y  (N,) int32 class labels, or (N, T) float32 regression targets
// or, for a language model, one token stream
//   tokens  (N,) uint8 (or int32) token ids in [0, vocab)
// with attributes on the split group for the task, class names, vocabulary, normalisation, and
// on the root for the format, source and licence.
//
// Every epoch is one global permutation drawn from (seed, epoch), whatever the rank count. Global
// batch b is positions [b·B, (b+1)·B) of that permutation — the same set of samples at every
// data-parallel size — and data rank r reads only its block of it, with the selected samples
// coalesced into contiguous runs for HDF5. Batches are read ahead by a background thread.
//
// A token stream is cut into windows of context + 1 tokens instead (inputs [s, s + T), targets
// [s + 1, s + T + 1)): window w of an epoch starts at a position drawn from (seed, epoch, w), or at
// w·T without shuffle, and global batch b is windows [b·B, (b+1)·B), split over the data ranks as
// samples are. The stream is read into memory at open.
#include "tessera/core/layout.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/io/hdf5.hpp"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace tessera::io {

inline constexpr const char* kDatasetFormat = "tessera-dataset";
inline constexpr std::int64_t kDatasetVersion = 1;

enum class Task { classification, regression, language_modeling };
/// "classification", "regression", "language_modeling": the split's @task attribute.
const char* task_name(Task task);

/// What a split holds, read from its attributes and dataset shapes.
struct SplitInfo {
  std::string file;
  std::string split;  ///< group path, "/train"
  Task task = Task::classification;
  /// Samples (x/y splits). A language-modeling split has none until a context cuts it into
  /// windows: 0 from inspect_split(), the windows per epoch in DatasetReader::info().
  Index samples = 0;
  /// (C, H, W) or (C, D, H, W); a language-modeling split: empty from inspect_split(), (context)
  /// in DatasetReader::info().
  Shape sample_shape;
  ElementType x_type = ElementType::u8;  ///< x as stored; language modeling: tokens as stored
  Index targets = 1;                     ///< regression: T; classification: 1
  std::vector<std::string> classes;
  double scale = 1.0;             ///< x_float = (x · scale − mean[c]) / std[c]
  std::vector<double> mean, std;  ///< per channel
  Index tokens = 0;               ///< language modeling: length of the token stream (>= 2)
  Index vocab = 0;                ///< language modeling: token ids are in [0, vocab)
  std::string tokenizer;          ///< language modeling: @tokenizer ("bytes"), "" if absent
  /// The data sets of the split (x, y, tokens) that carry no checksums (@crc32, @crc32_rows): all
  /// of them in a file written before they were added, which is read unverified; one of x and y
  /// when the other was rewritten by another tool. Those that carry them are verified.
  std::vector<std::string> without_checksums;
  bool checksummed() const { return without_checksums.empty(); }
  /// "x" or "y" when that one alone carries no checksums (the other does); "" otherwise.
  std::string lone_unchecked() const {
    return without_checksums.size() == 1 && task != Task::language_modeling ? without_checksums[0]
                                                                            : std::string();
  }
};

/// Opens and validates `file`'s split `split`: format attribute and version; for samples, x and y
/// present, x of rank 4 or 5 in a known type, y matching x's length and the task; for a token
/// stream, tokens of rank 1, uint8 or int32, at least 2 of them, @vocab an integer in [1, 2^31)
/// and every token below it (the stream is read once). Throws tessera::Error (exit code 2) naming
/// the file and dataset.
SplitInfo inspect_split(const std::string& file, const std::string& split);

/// Checksums of a data set (x, y or tokens; docs/dataset-format.md): the attribute kChecksum holds
/// one CRC-32 (zlib's) per block of kChecksumRows rows (first-dimension entries; the last block
/// holds the rest), over the elements' bytes as stored (little endian, row-major).
inline constexpr const char* kChecksum = "crc32";
inline constexpr const char* kChecksumRows = "crc32_rows";

/// Adds checksums to every data set of every split of the dataset file `path` (read-write, this
/// rank alone), computed from what the file holds: tessera-data calls it on each file it writes,
/// before renaming it into place.
void write_checksums(const std::string& path);

/// What verify_split() checks beyond inspect_split().
struct VerifyOptions {
  /// Classification: every label must be in [0, classes) (the model's outputs). 0: the split's
  /// @classes count, or no label check when it has none.
  Index classes = 0;
  /// This caller verifies share `share` of `shares` of every data set (blocks of rows), so that
  /// the ranks of a job split the work; their verdicts are agreed by the caller (comm::agree).
  int share = 0;
  int shares = 1;
};

/// Reads this share of the split `info` describes and checks it: the rows against their checksums
/// (when the split has them), labels in [0, classes), float samples (and regression targets)
/// finite. Throws tessera::Error (exit code 2) naming the file, split, sample index and value.
/// Returns the seconds it took.
double verify_split(const SplitInfo& info, const VerifyOptions& options);

/// A global batch position: epoch and batch index within it.
struct Cursor {
  std::int64_t epoch = 0;
  std::int64_t batch = 0;
  bool operator==(const Cursor& o) const { return epoch == o.epoch && batch == o.batch; }
};

/// A spatial sub-box of every sample: offset and extent per spatial dimension.
struct SubBox {
  std::vector<Index> offset;
  std::vector<Index> extent;
};

struct ReaderOptions {
  Index batch = 128;  ///< global batch size
  std::uint64_t seed = 0;
  bool shuffle = true;        ///< false: dataset order every epoch
  bool drop_last = false;     ///< drop the last, smaller batch of an epoch
  bool cache = false;         ///< read the whole split (this rank's box of it) at open
  int prefetch = 2;           ///< batches read ahead in the background (0: read in next())
  std::optional<SubBox> box;  ///< read only this spatial sub-box of each sample
  std::optional<Shape> expect_sample_shape;  ///< the model's input: an error if samples differ
  int data_rank = 0;                         ///< this rank's place on the data axis
  int data_size = 1;
  /// Language modeling: input tokens per window (T). Required there (>= 1, and the stream must
  /// hold at least T + 1 tokens); must stay 0 for x/y splits.
  Index context = 0;
  /// Read only the samples (windows) [offset, offset + count) of the split, as if they were all
  /// of it (a trainer's slice of a population's validation split); not with `cache`.
  std::optional<Range> subset;
};

/// One rank's share of one global batch. For a language-modeling split a "sample" is a window.
struct Batch {
  Cursor cursor;
  Index global_size = 0;          ///< samples in the whole global batch
  Index offset = 0;               ///< position of this rank's first sample within the global batch
  std::vector<std::int64_t> ids;  ///< dataset indices of this rank's samples (window indices
                                  ///< within the epoch for language modeling), in batch order
  Tensor x;        ///< (n, C, ...) float32, normalised; language modeling: (n, T) input token ids
  IntView labels;  ///< (n) classification; language modeling: (n·T) target ids, row-major
                   ///< (window, position)
  Tensor targets;  ///< (n, T) regression
};

/// The permutation of [0, n) used in `epoch` (identity when !shuffle).
std::vector<std::int64_t> epoch_permutation(Index n, std::uint64_t seed, std::int64_t epoch,
                                            bool shuffle);

/// Windows per epoch of a stream of `tokens` tokens with `context` inputs per window:
/// (tokens − 1) / context.
Index token_windows(Index tokens, Index context);

/// Where window `window` of `epoch` starts in a stream of `tokens` tokens, `context` inputs per
/// window: with shuffle, uniform in [0, tokens − context − 1] from the counter-based generator
/// keyed by (seed, "tokens" + epoch) at counter `window`; without, window · context.
std::int64_t window_start(Index tokens, Index context, std::uint64_t seed, std::int64_t epoch,
                          std::int64_t window, bool shuffle);

class DatasetReader {
 public:
  /// `spec` is "file.h5:/split". Validates as inspect_split() does, plus the options.
  DatasetReader(const std::string& spec, const ReaderOptions& options);
  ~DatasetReader();
  DatasetReader(const DatasetReader&) = delete;
  DatasetReader& operator=(const DatasetReader&) = delete;

  const SplitInfo& info() const { return m_info; }
  /// Shape of one sample as delivered (the sub-box when one is set).
  const Shape& sample_shape() const { return m_sample_shape; }
  std::int64_t batches_per_epoch() const;
  /// Where next() continues.
  Cursor cursor() const { return m_next; }
  /// Continue from `cursor` (as saved in a checkpoint).
  void seek(const Cursor& cursor);
  /// The next batch (waits for the prefetcher), advancing the cursor across epochs.
  Batch next();
  /// Seconds next() spent waiting for data so far.
  double wait_seconds() const { return m_wait_seconds; }

 private:
  // A batch as the worker thread produces it: plain host memory (Kokkos views are made only on the
  // calling thread).
  struct RawBatch {
    Cursor cursor;
    Index global_size = 0;
    Index offset = 0;
    std::vector<std::int64_t> ids;
    std::unique_ptr<float[]> x;  // (ids, sample), unless read_batch() was given where to put it
    std::vector<float> y;        // regression: (ids, T) targets
    std::vector<std::int32_t> labels;  // classification: (ids); language modeling: (ids, T)
  };
  // This rank's samples of batch `c`: the normalised samples go to `x` (room for all of them) or,
  // without one, to a new RawBatch::x.
  RawBatch read_batch(const Cursor& c, float* x = nullptr);
  // The same for a language-modeling split: this rank's windows of batch `c` from the stream.
  RawBatch read_windows(const Cursor& c, float* x);
  // This rank's block of batch `c` (offset in the global batch, count).
  Range rank_block(const Cursor& c) const;
  // Opens x and y of an x/y split and, with `cache`, reads them into memory.
  void open_samples(const std::string& file, const std::string& split);
  // The open file's size and modification time (fstat), to notice a file truncated or
  // overwritten under the reader: HDF5 would read what is gone as zeros.
  struct FileState {
    bool known = false;
    std::int64_t size = 0;
    std::int64_t mtime_ns = 0;
  };
  FileState file_state() const;
  // Throws naming the file and `what` was read when the file is not as it was opened.
  void check_unchanged(const std::string& what) const;
  // An uninitialised tensor for a batch's samples: one of the last few handed out when nobody
  // holds it any more (the previous step's batch, released after its backward), so a batch is
  // written into memory the cache still holds rather than into a fresh 400 KB allocation.
  Tensor batch_tensor(Shape shape);
  // One sample (m_sample_shape, stored type T) normalised into `to`.
  template <typename T>
  void normalise(const T* sample, float* to) const;
  // The samples of out.ids from the cache into `x` and out.y, in batch order.
  template <typename T>
  void gather_normalised(const T* cache, RawBatch& out, float* x) const;
  const std::vector<std::int64_t>& permutation(std::int64_t epoch);
  void worker();
  void start_worker();
  void stop_worker();
  Cursor advance(Cursor c) const;

  SplitInfo m_info;
  ReaderOptions m_options;
  Shape m_sample_shape;
  std::unique_ptr<File> m_file;
  std::unique_ptr<Dataset> m_x, m_y;
  // Language modeling: the whole token stream, as stored (one of the two is filled).
  std::vector<std::uint8_t> m_token_bytes;
  std::vector<std::int32_t> m_token_ids;
  // Memory for the cache on huge pages where the kernel offers them (madvise): a batch reads
  // samples scattered over tens of MiB, and with 4 KiB pages each one is a TLB miss.
  struct CacheMemory {
    void* data = nullptr;
    size_t bytes = 0;
    explicit CacheMemory(size_t size);
    ~CacheMemory();
    CacheMemory(const CacheMemory&) = delete;
    CacheMemory& operator=(const CacheMemory&) = delete;
  };
  std::unique_ptr<CacheMemory> m_cache;  // (N, sample): bytes when stored as bytes, else float32
  std::vector<float> m_cache_y;          // regression targets
  std::vector<std::int32_t> m_cache_labels;  // classification labels
  FileState m_opened;                        // the file as open_samples() found it
  std::vector<Tensor> m_x_pool;              // batch tensors for reuse (batch_tensor())
  std::int64_t m_perm_epoch = -1;
  Index m_first = 0;  // ReaderOptions::subset's first sample
  std::vector<std::int64_t> m_perm;
  Cursor m_next;
  double m_wait_seconds = 0.0;

  // Prefetch: the worker reads batches from m_fetch on and queues them.
  std::thread m_thread;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<RawBatch> m_queue;
  Cursor m_fetch;
  bool m_stop = false;
  std::exception_ptr m_error;
};

}  // namespace tessera::io
