#include "records.hpp"

#include "tessera/core/error.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

namespace tessera::train {

std::string json_number(double x) {
  return std::isfinite(x) ? fmt::format("{:.6g}", x) : "null";
}

void write_text(const std::string& path, const std::string& text, std::ios::openmode mode) {
  errno = 0;
  std::ofstream out(path, std::ios::binary | mode);
  if (out) {
    out << text;
    out.flush();
  }
  if (!out) {
    throw write_error(fmt::format("cannot write {} ({})", path,
                                  errno != 0 ? std::strerror(errno) : "an I/O error"));
  }
  out.close();
  if (!out) {
    throw write_error(fmt::format("cannot write {} ({})", path,
                                  errno != 0 ? std::strerror(errno) : "an I/O error"));
  }
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

}  // namespace tessera::train
