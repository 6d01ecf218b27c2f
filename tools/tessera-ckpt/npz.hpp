#pragma once
// numpy's .npz, written without numpy: a ZIP archive of stored (uncompressed) members, one .npy
// file per array, as numpy.savez writes it. The .npy format is documented in numpy's
// numpy/lib/format.py; the ZIP format in PKWARE's APPNOTE.TXT (sections 4.3 and 4.5.3, ZIP64).
#include <hdf5.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace tessera::ckpt {

/// The header of a .npy file holding a little-endian float32 array of `shape` in C order: magic,
/// version (1.0, or 2.0 when the header is longer than 65535 bytes), length and the Python dict,
/// padded with spaces and a newline so that the data starts at a multiple of 64 bytes.
std::string npy_header(const std::vector<hsize_t>& shape);

/// Writes a ZIP archive member by member. Members are stored, with CRC-32 (zlib), a fixed
/// modification time (1980-01-01 00:00, so that the same arrays give the same bytes) and ZIP64
/// extra fields where a size or offset reaches 4 GiB or there are 65535 members or more (always
/// with `force_zip64`, for tests).
class ZipWriter {
 public:
  explicit ZipWriter(const std::string& path, bool force_zip64 = false);
  /// Appends a member whose bytes are `head` followed by `bytes` bytes at `data`.
  void add(const std::string& name, const std::string& head, const void* data, std::size_t bytes);
  /// Writes the central directory and closes the file; throws tessera::Error on a write error.
  void finish();

 private:
  struct Entry {
    std::string name;
    std::uint32_t crc = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;
    bool zip64 = false;
  };
  void check_stream() const;
  std::string m_path;
  std::ofstream m_out;
  std::uint64_t m_at = 0;
  bool m_force_zip64 = false;
  std::vector<Entry> m_entries;
};

}  // namespace tessera::ckpt
