#include "tessera/train/run_lock.hpp"

#include "tessera/core/error.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tessera::train {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string this_host() {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return host;
}

struct Holder {
  long pid = 0;
  std::string host;
  std::string since;
  double age_s = 0.0;  // since the last heartbeat
};

// Whether process `pid` of this host has ended: no such process, or one that is dying — a zombie
// or exiting (a rank killed a moment ago, not yet reaped).
bool process_gone(long pid) {
  if (pid <= 0) {
    return false;
  }
  if (kill(static_cast<pid_t>(pid), 0) != 0) {
    return errno == ESRCH;
  }
  std::ifstream stat_file(fmt::format("/proc/{}/stat", pid));
  std::string line;
  std::getline(stat_file, line);
  const size_t paren = line.rfind(')');  // "pid (comm) S ...": the state follows the name
  return paren != std::string::npos && paren + 2 < line.size() &&
         (line[paren + 2] == 'Z' || line[paren + 2] == 'X');
}

bool read_holder(const std::string& path, Holder& h) {
  std::ifstream in(path);
  if (!in) {
    return false;
  }
  std::string line;
  std::getline(in, line);
  std::istringstream fields(line);
  fields >> h.pid >> h.host;
  std::getline(fields >> std::ws, h.since);
  struct stat st {};
  if (stat(path.c_str(), &st) == 0) {
    h.age_s = std::difftime(std::time(nullptr), st.st_mtime);
  }
  return true;
}

}  // namespace

RunLock::RunLock(const std::string& folder, const std::string& key, std::string* note,
                 DeckLocation where)
    : m_path(folder + "/.lock") {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path at = fs::absolute(folder, ec).lexically_normal();
  if (!ec && at.has_parent_path() && at.filename().empty()) {
    at = at.parent_path();  // "runs/a/": the folder is runs/a
  }
  m_folder = at.string();
  for (fs::path p = at; !ec && !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    m_made = p.string();  // the outermost folder missing so far
    if (p == p.parent_path()) {
      break;
    }
  }
  fs::create_directories(folder, ec);
  if (ec) {
    throw write_error(fmt::format("{} = \"{}\" cannot be created: {}", key, folder, ec.message()),
                      where);
  }
  const std::string host = this_host();
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = open(m_path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd >= 0) {
      char since[64] = "";
      const std::time_t t = std::time(nullptr);
      std::strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
      const std::string text = fmt::format("{} {} {}\n", getpid(), host, since);
      const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      close(fd);
      if (!written) {
        std::remove(m_path.c_str());
        throw write_error(
            fmt::format("cannot write the run's lock {} ({})", m_path, std::strerror(errno)));
      }
      m_last_touch = now_s();
      return;
    }
    if (errno != EEXIST) {
      throw write_error(
          fmt::format("cannot create the run's lock {} ({})", m_path, std::strerror(errno)));
    }
    Holder h;
    if (!read_holder(m_path, h)) {
      continue;  // removed meanwhile: try again
    }
    const bool same_host = h.host == host;
    const bool gone = same_host && process_gone(h.pid);
    const bool stale = gone || (!same_host && h.age_s > kStaleSeconds);
    if (!stale) {
      throw input_error(fmt::format(
          "{} = \"{}\" is in use by another run (process {} on {}, since {}; lock {}); "
          "give this run another {}, or wait for that one to end{}",
          key, folder, h.pid, h.host, h.since, m_path,
          key == "run.output" ? "run.output (or run.name)" : key,
          same_host ? ""
                    : " (a lock whose run died is taken over once its heartbeat is a minute old)"));
    }
    if (note != nullptr) {
      *note = fmt::format(
          "{}: taking over the lock of a run that is gone (process {} on {}, "
          "since {})",
          key, h.pid, h.host, h.since);
    }
    std::remove(m_path.c_str());
  }
  throw input_error(fmt::format("{} = \"{}\": cannot take its lock {}", key, folder, m_path));
}

RunLock::~RunLock() {
  std::remove(m_path.c_str());
  if (m_made.empty()) {
    return;
  }
  // The folders the constructor made, innermost first, while they are empty (remove() refuses a
  // folder that is not).
  namespace fs = std::filesystem;
  std::error_code ec;
  for (fs::path p = m_folder; fs::remove(p, ec) && !ec && p.string() != m_made;
       p = p.parent_path()) {
  }
}

void RunLock::heartbeat() {
  const double t = now_s();
  if (t - m_last_touch >= 10.0) {
    m_last_touch = t;
    utimensat(AT_FDCWD, m_path.c_str(), nullptr, 0);
  }
}

}  // namespace tessera::train
