#pragma once
// Text from a trained language model: `tessera generate CKPT --prompt TEXT --tokens N`. The
// checkpoint's own deck says what model it holds; the model is built on the ranks it is given as
// tensor ranks (each loads the blocks its layout holds, whatever grid trained it) and continues the
// prompt one byte at a time.
#include <mpi.h>

#include <cstdint>
#include <string>

namespace tessera::train {

struct GenerateOptions {
  std::string prompt;         ///< bytes of the prompt (each a token of a byte-level model)
  std::int64_t tokens = 200;  ///< bytes to generate
  double temperature = 0.8;   ///< > 0: sample softmax(logits / temperature); 0: always the argmax
  std::int64_t top_k = 0;     ///< sample among the k most likely bytes only (0: all)
  std::uint64_t seed = 0;  ///< the sampling stream (counter-based: the same text at any rank count)
};

/// Loads the model of checkpoint `file` onto every rank of `world` (tensor = the number of ranks)
/// and returns the `options.tokens` bytes that continue the prompt, the same on every rank. The
/// model sees the last model.context bytes. Throws tessera::Error (exit code 2) on every rank
/// together for bad input: a file that is not a checkpoint, a checkpoint whose deck is not a
/// language model, a prompt that is empty or holds a byte outside the model's vocabulary, options
/// out of range.
std::string generate(const std::string& file, const GenerateOptions& options, MPI_Comm world);

}  // namespace tessera::train
