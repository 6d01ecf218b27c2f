#include "npz.hpp"

#include "tessera/core/error.hpp"

#include <fmt/format.h>
#include <zlib.h>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the .npy and ZIP writers store the host's bytes as little endian");

namespace tessera::ckpt {
namespace {

constexpr std::uint32_t kMax32 = 0xFFFFFFFFU;
constexpr std::uint16_t kVersionStored = 20;  // 2.0: what a stored member needs
constexpr std::uint16_t kVersionZip64 = 45;   // 4.5: ZIP64 extensions
constexpr std::uint16_t kMadeByUnix = 3 << 8;
constexpr std::uint16_t kUtf8Names = 1 << 11;
constexpr std::uint16_t kDosDate1980 = (1 << 5) | 1;  // 1980-01-01; time 00:00:00 is 0

void put16(std::string& s, std::uint16_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>(v >> 8));
}
void put32(std::string& s, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) {
    s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
}
void put64(std::string& s, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  }
}

std::uint32_t crc32_of(std::uint32_t crc, const void* data, std::size_t bytes) {
  return static_cast<std::uint32_t>(
      crc32_z(crc, static_cast<const Bytef*>(data), static_cast<z_size_t>(bytes)));
}

}  // namespace

std::string npy_header(const std::vector<hsize_t>& shape) {
  std::string dims;
  for (hsize_t d : shape) {
    dims += fmt::format("{}, ", d);
  }
  if (shape.size() > 1) {
    dims.resize(dims.size() - 2);  // "(4, 3)"; a 1-D shape keeps its comma: "(4,)"
  } else if (shape.size() == 1) {
    dims.resize(dims.size() - 1);
  }
  std::string dict =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  // magic (6) + version (2) + length (2, or 4 in version 2.0) + dict + padding + '\n' ≡ 0 mod 64.
  const bool v2 = dict.size() + 1 + 10 > 65535;
  const std::size_t preamble = v2 ? 12 : 10;
  const std::size_t total = (preamble + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - preamble - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  if (v2) {
    put32(out, static_cast<std::uint32_t>(dict.size()));
  } else {
    put16(out, static_cast<std::uint16_t>(dict.size()));
  }
  return out + dict;
}

ZipWriter::ZipWriter(const std::string& path, bool force_zip64)
    : m_path(path), m_out(path, std::ios::binary | std::ios::trunc), m_force_zip64(force_zip64) {
  if (!m_out) {
    throw input_error(fmt::format("{}: cannot create the file", path));
  }
}

void ZipWriter::check_stream() const {
  if (!m_out) {
    throw Error(fmt::format("{}: write failed (disk full?)", m_path));
  }
}

void ZipWriter::add(const std::string& name, const std::string& head, const void* data,
                    std::size_t bytes) {
  Entry e;
  e.name = name;
  e.size = head.size() + bytes;
  e.offset = m_at;
  e.crc = crc32_of(crc32_of(0, head.data(), head.size()), data, bytes);
  e.zip64 = m_force_zip64 || e.size >= kMax32 || e.offset >= kMax32;

  std::string local;
  put32(local, 0x04034b50);
  put16(local, e.zip64 ? kVersionZip64 : kVersionStored);
  put16(local, kUtf8Names);
  put16(local, 0);  // stored
  put16(local, 0);  // time
  put16(local, kDosDate1980);
  put32(local, e.crc);
  put32(local, e.zip64 ? kMax32 : static_cast<std::uint32_t>(e.size));  // compressed
  put32(local, e.zip64 ? kMax32 : static_cast<std::uint32_t>(e.size));  // uncompressed
  put16(local, static_cast<std::uint16_t>(name.size()));
  put16(local, e.zip64 ? 20 : 0);
  local += name;
  if (e.zip64) {
    put16(local, 0x0001);
    put16(local, 16);
    put64(local, e.size);  // uncompressed
    put64(local, e.size);  // compressed
  }
  m_out.write(local.data(), static_cast<std::streamsize>(local.size()));
  m_out.write(head.data(), static_cast<std::streamsize>(head.size()));
  m_out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  check_stream();
  m_at += local.size() + e.size;
  m_entries.push_back(std::move(e));
}

void ZipWriter::finish() {
  const std::uint64_t directory_offset = m_at;
  std::string dir;
  for (const Entry& e : m_entries) {
    put32(dir, 0x02014b50);
    put16(dir, kMadeByUnix | (e.zip64 ? kVersionZip64 : kVersionStored));
    put16(dir, e.zip64 ? kVersionZip64 : kVersionStored);
    put16(dir, kUtf8Names);
    put16(dir, 0);
    put16(dir, 0);
    put16(dir, kDosDate1980);
    put32(dir, e.crc);
    put32(dir, e.zip64 ? kMax32 : static_cast<std::uint32_t>(e.size));
    put32(dir, e.zip64 ? kMax32 : static_cast<std::uint32_t>(e.size));
    put16(dir, static_cast<std::uint16_t>(e.name.size()));
    put16(dir, e.zip64 ? 28 : 0);
    put16(dir, 0);                 // comment
    put16(dir, 0);                 // disk
    put16(dir, 0);                 // internal attributes
    put32(dir, (0100644U) << 16);  // external: a regular file, rw-r--r--
    put32(dir, e.zip64 ? kMax32 : static_cast<std::uint32_t>(e.offset));
    dir += e.name;
    if (e.zip64) {  // the fields set to 0xFFFFFFFF above, in APPNOTE's order
      put16(dir, 0x0001);
      put16(dir, 24);
      put64(dir, e.size);
      put64(dir, e.size);
      put64(dir, e.offset);
    }
  }
  const std::uint64_t entries = m_entries.size();
  const std::uint64_t directory_size = dir.size();
  const bool zip64 =
      m_force_zip64 || entries >= 0xFFFF || directory_offset >= kMax32 || directory_size >= kMax32;
  if (zip64) {
    const std::uint64_t record = directory_offset + directory_size;
    put32(dir, 0x06064b50);  // ZIP64 end of central directory record
    put64(dir, 44);          // its size after this field
    put16(dir, kMadeByUnix | kVersionZip64);
    put16(dir, kVersionZip64);
    put32(dir, 0);
    put32(dir, 0);
    put64(dir, entries);
    put64(dir, entries);
    put64(dir, directory_size);
    put64(dir, directory_offset);
    put32(dir, 0x07064b50);  // its locator
    put32(dir, 0);
    put64(dir, record);
    put32(dir, 1);
  }
  put32(dir, 0x06054b50);  // end of central directory
  put16(dir, 0);
  put16(dir, 0);
  const auto count16 = static_cast<std::uint16_t>(zip64 ? 0xFFFF : entries);
  put16(dir, count16);
  put16(dir, count16);
  put32(dir, zip64 ? kMax32 : static_cast<std::uint32_t>(directory_size));
  put32(dir, zip64 ? kMax32 : static_cast<std::uint32_t>(directory_offset));
  put16(dir, 0);
  m_out.write(dir.data(), static_cast<std::streamsize>(dir.size()));
  m_out.flush();
  check_stream();
  m_out.close();
  if (m_out.fail()) {
    throw Error(fmt::format("{}: closing failed", m_path));
  }
}

}  // namespace tessera::ckpt
