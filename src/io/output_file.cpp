#include "tessera/io/output_file.hpp"

#include "tessera/core/error.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>
#include <system_error>

namespace tessera::io {

namespace fs = std::filesystem;

void check_output_file(const std::string& out, const std::vector<std::string>& inputs) {
  if (out.empty()) {
    throw input_error("-o \"\": an empty name; -o takes a file name");
  }
  std::error_code ec;
  if (fs::is_directory(out, ec)) {
    throw input_error(fmt::format("{}: is a folder; -o takes a file name", out));
  }
  const std::string name = fs::path(out).filename().string();
  if (name.empty() || name == "." || name == "..") {
    throw input_error(fmt::format("{}: names a folder; -o takes a file name", out));
  }
  if (!fs::exists(out, ec)) {
    return;  // a file that does not exist yet is no input
  }
  for (const std::string& input : inputs) {
    if (fs::equivalent(out, input, ec) && !ec) {
      throw input_error(
          out == input ? fmt::format("{}: is also an input; -o must name another file", out)
                       : fmt::format("{}: is the input {}; -o must name another file", out, input));
    }
  }
}

void create_partial(const std::string& out, const std::string& partial) {
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    const int err = errno;
    throw input_error(fmt::format("{}: cannot create the file ({})", out, std::strerror(err)));
  }
  ::close(fd);
}

void make_output_folder(const std::string& out) {
  const fs::path parent = fs::path(out).parent_path();
  std::error_code ec;
  if (parent.empty() || fs::is_directory(parent, ec)) {
    return;
  }
  fs::create_directories(parent, ec);
  if (ec) {
    throw input_error(
        fmt::format("{}: cannot create the folder {} ({})", out, parent.string(), ec.message()));
  }
}

FreeSpace free_space_for(const std::string& out) {
  fs::path folder = fs::absolute(fs::path(out)).parent_path();
  std::error_code ec;
  while (!fs::is_directory(folder, ec) && folder.has_parent_path() &&
         folder.parent_path() != folder) {
    folder = folder.parent_path();
  }
  const fs::space_info info = fs::space(folder, ec);
  return {ec ? static_cast<std::uintmax_t>(-1) : info.available, folder.string()};
}

double hdf5_bytes_needed(double payload) {
  return payload * 1.01 + 1048576.0;
}

}  // namespace tessera::io
