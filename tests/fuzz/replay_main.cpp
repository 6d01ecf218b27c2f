// The short run of a fuzz target without libFuzzer (CI, any compiler): every file of the corpus
// folders given, then `--mutations N` deterministic mutations of each (byte flips, insertions,
// deletions, splices of two inputs, from a fixed seed). A finding aborts, naming the input.
//
//   fuzz_deck tests/fuzz/corpus/deck [--mutations 200]
#include "fuzz.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <vector>

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// One mutation of `in` (another corpus input `other` for splices).
Bytes mutate(const Bytes& in, const Bytes& other, std::mt19937_64& rng) {
  Bytes b = in;
  const auto pick = [&](std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng() % n); };
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 6) {
      case 0:  // flip a bit
        if (!b.empty()) {
          b[pick(b.size())] ^= static_cast<std::uint8_t>(1U << (rng() % 8));
        }
        break;
      case 1:  // an interesting byte
        if (!b.empty()) {
          static const std::uint8_t bytes[] = {0,   0xff, 0x7f, 0x80, '[', ']', '{', '}',
                                               '"', '=',  '\n', '.',  '-', '9', 'e', ':'};
          b[pick(b.size())] = bytes[rng() % sizeof bytes];
        }
        break;
      case 2:  // delete a run
        if (!b.empty()) {
          const std::size_t at = pick(b.size());
          b.erase(b.begin() + static_cast<std::ptrdiff_t>(at),
                  b.begin() + static_cast<std::ptrdiff_t>(std::min(b.size(), at + 1 + pick(16))));
        }
        break;
      case 3:  // duplicate a run
        if (!b.empty()) {
          const std::size_t at = pick(b.size());
          const std::size_t n = std::min(b.size() - at, 1 + pick(32));
          const Bytes run(b.begin() + static_cast<std::ptrdiff_t>(at),
                          b.begin() + static_cast<std::ptrdiff_t>(at + n));
          b.insert(b.begin() + static_cast<std::ptrdiff_t>(pick(b.size())), run.begin(), run.end());
        }
        break;
      case 4:  // splice: this input's head, the other's tail
        if (!other.empty()) {
          const std::size_t head = pick(b.size() + 1);
          const std::size_t tail = pick(other.size());
          b.resize(head);
          b.insert(b.end(), other.begin() + static_cast<std::ptrdiff_t>(tail), other.end());
        }
        break;
      default:  // truncate
        b.resize(pick(b.size() + 1));
        break;
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  long mutations = 0;
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mutations" && i + 1 < argc) {
      mutations = std::stol(argv[++i]);
    } else if (std::filesystem::is_directory(a)) {
      for (const auto& e : std::filesystem::directory_iterator(a)) {
        files.push_back(e.path());
      }
    } else {
      files.emplace_back(a);
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR|FILE... [--mutations N]\n";
    return 2;
  }
  std::vector<Bytes> corpus;
  for (const auto& f : files) {
    corpus.push_back(read(f));
  }
  std::mt19937_64 rng(20261205);
  long runs = 0;
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    std::cerr << "fuzz replay: " << files[i].filename().string() << "\n";
    LLVMFuzzerTestOneInput(corpus[i].data(), corpus[i].size());
    ++runs;
    for (long m = 0; m < mutations; ++m) {
      const Bytes b = mutate(corpus[i], corpus[rng() % corpus.size()], rng);
      LLVMFuzzerTestOneInput(b.data(), b.size());
      ++runs;
    }
  }
  std::cout << "fuzz replay: " << runs << " inputs (" << corpus.size() << " from the corpus, "
            << mutations << " mutations of each), no finding\n";
  return 0;
}
