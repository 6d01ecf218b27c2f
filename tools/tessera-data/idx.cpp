#include "idx.hpp"

#include "tessera/core/check.hpp"

#include <fmt/ranges.h>
#include <zlib.h>

#include <filesystem>
#include <memory>

namespace tessera::data {
namespace {
struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

std::uint32_t big_endian(const unsigned char* b) {
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) |
         std::uint32_t{b[3]};
}
}  // namespace

IdxArray read_idx(const std::string& path, int expected_rank) {
  auto bad = [&](const std::string& what) { return input_error(path + ": " + what); };
  if (!std::filesystem::exists(path)) {
    throw bad("no such file");
  }
  std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path.c_str(), "rb"));
  if (!f) {
    throw bad("cannot open");
  }
  // gzread returns fewer bytes than asked at the end of the data, -1 on a corrupt stream.
  // `before`: bytes of `what` already read by earlier calls (for the message).
  auto read = [&](void* buf, std::size_t n, const std::string& what, std::uint64_t need = 0,
                  std::uint64_t before = 0) {
    std::size_t got = 0;
    while (got < n) {
      const auto chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1U << 30));
      const int r = gzread(f.get(), static_cast<char*>(buf) + got, chunk);
      if (r < 0) {
        int errnum = 0;
        throw bad(fmt::format("corrupt compressed data while reading {} ({})", what,
                              gzerror(f.get(), &errnum)));
      }
      if (r == 0) {
        throw bad(fmt::format("truncated: {} needs {} bytes, the file ends after {}", what,
                              need != 0 ? need : n, before + got));
      }
      got += static_cast<std::size_t>(r);
    }
  };
  unsigned char header[4];
  read(header, 4, "the magic number");
  // Magic: two zero bytes, the type code (0x08 = unsigned byte) and the number of dimensions.
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] != expected_rank) {
    throw bad(fmt::format(
        "wrong magic number 0x{:08x}: expected 0x{:08x} (unsigned bytes, {} "
        "dimensions)",
        big_endian(header), 0x0800U + static_cast<unsigned>(expected_rank), expected_rank));
  }
  IdxArray a;
  std::uint64_t total = 1;
  bool overflow = false;
  for (int d = 0; d < expected_rank; ++d) {
    unsigned char b[4];
    read(b, 4, fmt::format("the size of dimension {}", d));
    a.dims.push_back(big_endian(b));
    overflow = overflow || __builtin_mul_overflow(total, std::uint64_t{a.dims.back()}, &total);
  }
  if (overflow) {
    throw bad(fmt::format("the header's sizes {} make more than 2^64 values: the file is damaged",
                          fmt::join(a.dims, " x ")));
  }
  // The sizes come from the header: memory grows with the data actually read (64 MiB at a time),
  // so a damaged header that claims terabytes ends as "truncated", not as an allocation of them.
  constexpr std::uint64_t kStep = std::uint64_t{64} << 20;
  for (std::uint64_t done = 0; done < total;) {
    const std::uint64_t n = std::min(kStep, total - done);
    a.values.resize(static_cast<std::size_t>(done + n));
    read(a.values.data() + done, static_cast<std::size_t>(n),
         fmt::format("the data ({} values)", total), total, done);
    done += n;
  }
  char extra = 0;
  if (gzread(f.get(), &extra, 1) > 0) {
    throw bad(fmt::format("{} values expected, but more bytes follow", total));
  }
  return a;
}

}  // namespace tessera::data
