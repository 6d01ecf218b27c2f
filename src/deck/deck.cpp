#include "tessera/deck/deck.hpp"

#include "tessera/core/device.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/nn/sequential.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <toml.hpp>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

namespace tessera::deck {

const char* loss_name(LossKind loss) {
  return loss == LossKind::mse ? "mse" : "softmax_cross_entropy";
}

DeckLocation Deck::where(const std::string& key) const {
  const auto it = locations.find(key);
  return it != locations.end() ? it->second : DeckLocation{file, 0, key};
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

const char* type_of(const toml::value& v) {
  switch (v.type()) {
    case toml::value_t::boolean:
      return "a boolean";
    case toml::value_t::integer:
      return "an integer";
    case toml::value_t::floating:
      return "a number";
    case toml::value_t::string:
      return "a string";
    case toml::value_t::array:
      return "a list";
    case toml::value_t::table:
      return "a table";
    default:
      return "a date or time";
  }
}

// A value as one line of TOML for a message (toml11 prints lists and tables over several lines,
// and tables in hash order).
std::string show(const toml::value& v) {
  if (v.is_string()) {
    return "\"" + v.as_string().str + "\"";
  }
  if (v.is_array()) {
    std::vector<std::string> items;
    for (const toml::value& e : v.as_array()) {
      items.push_back(show(e));
    }
    return "[" + join(items) + "]";
  }
  if (v.is_table()) {
    if (v.as_table().empty()) {
      return "{}";
    }
    const std::map<std::string, const toml::value*> sorted = [&] {
      std::map<std::string, const toml::value*> m;
      for (const auto& [k, e] : v.as_table()) {
        m[k] = &e;
      }
      return m;
    }();
    std::vector<std::string> items;
    for (const auto& [k, e] : sorted) {
      items.push_back(k + " = " + show(*e));
    }
    return "{ " + join(items) + " }";
  }
  std::ostringstream s;
  s << v;
  return s.str();
}

// The deepest nesting of lists and inline tables a deck may hold. toml11 parses them recursively:
// 100 000 levels overflow the stack. No deck needs more than a few.
constexpr int kMaxNesting = 64;

// Refuses text nested deeper than kMaxNesting, before toml11 parses it; counts brackets and braces
// outside strings and comments.
void check_nesting(const std::string& text, const std::string& file) {
  int depth = 0;
  int line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
    } else if (c == '#') {
      while (i + 1 < text.size() && text[i + 1] != '\n') {
        ++i;
      }
    } else if (c == '"' || c == '\'') {
      const bool multi = text.compare(i, 3, std::string(3, c)) == 0;
      const std::string close = multi ? std::string(3, c) : std::string(1, c);
      i += close.size();
      for (; i < text.size(); ++i) {
        if (text[i] == '\n') {
          if (!multi) {
            break;  // an unterminated string: toml11 reports it
          }
          ++line;
        } else if (c == '"' && text[i] == '\\') {
          ++i;
        } else if (text.compare(i, close.size(), close) == 0) {
          i += close.size() - 1;
          break;
        }
      }
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) {
        throw input_error(fmt::format("lists and tables nested more than {} deep", kMaxNesting),
                          {file, line, ""});
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

// Refuses bytes that are not text: a NUL, and anything that is not UTF-8 (TOML is UTF-8).
void check_text(const std::string& text, const std::string& file, const char* what = "the deck") {
  int line = 1;
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++line;
    }
    if (c == 0) {
      throw input_error(fmt::format("{} holds a NUL byte: is it text?", what), {file, line, ""});
    }
    const size_t n = utf8_length(text, i);
    if (n == 0) {
      throw input_error(fmt::format("{} holds byte {:#04x}, which is not UTF-8 text (TOML is "
                                    "UTF-8)",
                                    what, c),
                        {file, line, ""});
    }
    i += n;
  }
}

// The text of a value as written (toml11 reads integers and floats through a stream that clamps
// what does not fit: 99999999999999999999 becomes 2^63 - 1, 1e400 becomes 1.8e308).
std::string written(const toml::value& v) {
  const toml::source_location at = v.location();
  const std::string& line = at.line_str();
  const size_t begin = at.column() > 0 ? at.column() - 1 : 0;
  return begin < line.size() ? line.substr(begin, at.region()) : std::string();
}

// A deck's key for one of its values: "run.seed", "model.layers[1].linear.out".
std::string child_key(const std::string& parent, const std::string& k) {
  return parent.empty() ? k : parent + "." + k;
}

// Refuses, anywhere in the deck, what toml11 accepts but would change silently: integers beyond
// 64 bits, floats beyond a double's range, and strings with control characters (a NUL in a path).
void check_values(const toml::value& v, const std::string& key, const std::string& file) {
  const auto fail = [&](const std::string& what) {
    const bool cli = v.location().file_name() == "command line";
    throw input_error(
        what, {cli ? "command line" : file, cli ? 0 : static_cast<int>(v.location().line()), key});
  };
  if (v.is_integer() || v.is_floating()) {
    std::string text = written(v);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    if (text.empty()) {
      return;
    }
    errno = 0;
    if (v.is_integer()) {
      const bool prefixed = text.size() > 2 && text[0] == '0' && std::isalpha(text[1]) != 0;
      const int base = !prefixed ? 10 : text[1] == 'x' ? 16 : text[1] == 'o' ? 8 : 2;
      (void)std::strtoll(text.c_str() + (prefixed ? 2 : 0), nullptr, base);
      if (errno == ERANGE) {
        fail(fmt::format("{} = {} does not fit in a 64-bit integer (at most {})", key, text,
                         std::numeric_limits<std::int64_t>::max()));
      }
    } else if (text.find("inf") == std::string::npos && text.find("nan") == std::string::npos) {
      const double x = std::strtod(text.c_str(), nullptr);
      if (errno == ERANGE && std::fabs(x) > 1.0) {
        fail(fmt::format("{} = {} is beyond the range of a double (about 1.8e308)", key, text));
      }
    }
  } else if (v.is_string()) {
    const std::string& str = v.as_string().str;
    for (const char c : str) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        fail(
            fmt::format("{} holds a control character (byte {:#04x}): not allowed in a deck's "
                        "strings",
                        key, static_cast<unsigned char>(c)));
      }
    }
  } else if (v.is_array()) {
    const auto& list = v.as_array();
    for (size_t i = 0; i < list.size(); ++i) {
      check_values(list[i], fmt::format("{}[{}]", key, i), file);
    }
  } else if (v.is_table()) {
    for (const auto& [k, e] : v.as_table()) {
      check_values(e, child_key(key, k), file);
    }
  }
}

// Everything the checks need about where values came from.
struct Source {
  std::string file;
  std::set<std::string> overridden;  // dotted keys set on the command line
  std::set<std::string> created;     // tables that only an override made
  std::map<std::string, DeckLocation>* locations;
  std::set<std::string>* asked;  // dotted keys the parse looked for, there or not (the schema)

  DeckLocation at(const std::string& key, const toml::value* v) const {
    // A value knows where it was read: an override's, or the deck's text where the deck wrote it,
    // whatever an override made beside it under the same dotted name
    // (population.hyper.optimizer.lr.values=... beside the deck's "optimizer.lr" = {...}).
    if (v != nullptr && v->location().file_name() == "command line") {
      return {"command line", 0, key};
    }
    const int line = v != nullptr ? static_cast<int>(v->location().line()) : 0;
    if (line > 0 && v->location().file_name() == file) {
      return {file, line, key};
    }
    // Set by an override, or a table an override made (runn.epochs=3 makes [runn]).
    if (overridden.count(key) != 0 || created.count(key) != 0) {
      return {"command line", 0, key};
    }
    return {file, line, key};
  }
};

// One TOML table of the deck, read key by key; finish() reports the keys nobody asked for.
class Section {
 public:
  Section(const toml::value* table, std::string path, const Source& src)
      : m_table(table), m_path(std::move(path)), m_src(src) {}

  const std::string& path() const { return m_path; }
  std::string key(const std::string& k) const { return m_path.empty() ? k : m_path + "." + k; }

  const toml::value* find(const std::string& k) {
    m_known.insert(k);
    m_src.asked->insert(key(k));
    if (m_table == nullptr || !m_table->contains(k)) {
      return nullptr;
    }
    const toml::value* v = &m_table->at(k);
    (*m_src.locations)[key(k)] = m_src.at(key(k), v);
    return v;
  }
  bool has(const std::string& k) const {
    m_src.asked->insert(key(k));
    return m_table != nullptr && m_table->contains(k);
  }

  Error error(const std::string& k, const toml::value* v, const std::string& what) const {
    return input_error(what, m_src.at(key(k), v));
  }
  Error missing(const std::string& k) const {
    // A required key written misspelled ("trian") is reported as the misspelling it is.
    if (m_table != nullptr) {
      for (const auto& [written, v] : m_table->as_table()) {
        if (m_known.count(written) == 0 && closest_match(written, {k}) == k) {
          return error(written, &v,
                       fmt::format("unknown key {} (did you mean {}?)", key(written), key(k)));
        }
      }
    }
    return input_error(key(k) + " is required", {m_src.file, 0, key(k)});
  }

  /// Declares every key this table may hold and reports any other now, before a key that was
  /// meant (a misspelt section) is reported missing.
  void expect_keys(const std::vector<std::string>& keys) {
    m_known.insert(keys.begin(), keys.end());
    finish();
  }

  std::int64_t integer(const std::string& k, std::optional<std::int64_t> fallback, std::int64_t lo,
                       std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    const toml::value* v = find(k);
    if (v == nullptr) {
      if (!fallback) {
        throw missing(k);
      }
      return *fallback;
    }
    if (!v->is_integer()) {
      throw error(k, v,
                  fmt::format("{} must be an integer, got {} ({})", key(k), type_of(*v), show(*v)));
    }
    const std::int64_t x = v->as_integer();
    if (x < lo || x > hi) {
      throw error(k, v,
                  hi == std::numeric_limits<std::int64_t>::max()
                      ? fmt::format("{} = {} must be >= {}", key(k), x, lo)
                      : fmt::format("{} = {} must be in [{}, {}]", key(k), x, lo, hi));
    }
    return x;
  }

  // A number in [lo, hi] (or (lo, hi] when open_lo).
  double number(const std::string& k, std::optional<double> fallback, double lo, double hi,
                bool open_lo = false, bool open_hi = false) {
    const toml::value* v = find(k);
    if (v == nullptr) {
      if (!fallback) {
        throw missing(k);
      }
      return *fallback;
    }
    double x = 0.0;
    if (v->is_floating()) {
      x = v->as_floating();
    } else if (v->is_integer()) {
      x = static_cast<double>(v->as_integer());
    } else {
      throw error(k, v,
                  fmt::format("{} must be a number, got {} ({})", key(k), type_of(*v), show(*v)));
    }
    const bool ok =
        std::isfinite(x) && (open_lo ? x > lo : x >= lo) && (open_hi ? x < hi : x <= hi);
    if (!ok) {
      std::string range;
      if (std::isinf(hi)) {
        range = fmt::format("{} {}", open_lo ? ">" : ">=", lo);
      } else {
        range = fmt::format("in {}{}, {}{}", open_lo ? "(" : "[", lo, hi, open_hi ? ")" : "]");
      }
      throw error(k, v, fmt::format("{} = {} must be {}", key(k), show(*v), range));
    }
    return x;
  }

  bool boolean(const std::string& k, bool fallback) {
    const toml::value* v = find(k);
    if (v == nullptr) {
      return fallback;
    }
    if (!v->is_boolean()) {
      throw error(
          k, v,
          fmt::format("{} must be true or false, got {} ({})", key(k), type_of(*v), show(*v)));
    }
    return v->as_boolean();
  }

  std::string string(const std::string& k, std::optional<std::string> fallback) {
    const toml::value* v = find(k);
    if (v == nullptr) {
      if (!fallback) {
        throw missing(k);
      }
      return *fallback;
    }
    if (!v->is_string()) {
      throw error(k, v,
                  fmt::format("{} must be a string, got {} ({})", key(k), type_of(*v), show(*v)));
    }
    return v->as_string().str;
  }

  // One of `choices`.
  std::string choice(const std::string& k, std::optional<std::string> fallback,
                     const std::vector<std::string>& choices) {
    const std::string s = string(k, fallback);
    if (std::find(choices.begin(), choices.end(), s) == choices.end()) {
      const std::string near = closest_match(s, choices);
      throw error(k, find(k),
                  fmt::format("{} = \"{}\" is not one of {}{}", key(k), s, join(choices),
                              near.empty() ? "" : " (did you mean \"" + near + "\"?)"));
    }
    return s;
  }

  std::vector<std::int64_t> integers(const std::string& k,
                                     std::optional<std::vector<std::int64_t>> fallback,
                                     std::int64_t lo) {
    const toml::value* v = find(k);
    if (v == nullptr) {
      if (!fallback) {
        throw missing(k);
      }
      return *fallback;
    }
    if (!v->is_array() || v->as_array().empty()) {
      throw error(k, v,
                  fmt::format("{} must be a non-empty list of integers, got {} ({})", key(k),
                              type_of(*v), show(*v)));
    }
    std::vector<std::int64_t> out;
    for (const toml::value& e : v->as_array()) {
      if (!e.is_integer() || e.as_integer() < lo) {
        throw error(k, v, fmt::format("{} = {} must hold integers >= {}", key(k), show(*v), lo));
      }
      out.push_back(e.as_integer());
    }
    return out;
  }

  // A sub-table (absent: an empty section).
  Section table(const std::string& k) {
    const toml::value* v = find(k);
    if (v != nullptr && !v->is_table()) {
      throw error(k, v,
                  fmt::format("{} must be a table, got {} ({})", key(k), type_of(*v), show(*v)));
    }
    return Section(v, key(k), m_src);
  }

  void finish() const {
    if (m_table == nullptr) {
      return;
    }
    // Report the first unknown key in the file (the table itself is in hash order).
    const toml::value* v = nullptr;
    std::string k;
    for (const auto& [name, value] : m_table->as_table()) {
      if (m_known.count(name) == 0 &&
          (v == nullptr || value.location().line() < v->location().line())) {
        v = &value;
        k = name;
      }
    }
    if (v == nullptr) {
      return;
    }
    const std::vector<std::string> known(m_known.begin(), m_known.end());
    if (!m_path.empty()) {
      const std::string near = closest_match(k, known);
      throw error(k, v,
                  fmt::format("unknown key {}{}", key(k),
                              near.empty() ? "" : " (did you mean " + key(near) + "?)"));
    }
    std::vector<std::string> sections;
    for (const std::string& s : known) {
      sections.push_back("[" + s + "]");
    }
    if (!v->is_table()) {
      throw error(
          k, v,
          fmt::format("unknown top-level key {}: keys go in a section ({})", k, join(sections)));
    }
    const std::string near = closest_match(k, known);
    throw error(k, v,
                fmt::format("unknown section [{}]{}", k,
                            near.empty() ? "" : " (did you mean [" + near + "]?)"));
  }

 private:
  const toml::value* m_table;
  std::string m_path;
  const Source& m_src;
  std::set<std::string> m_known;
};

// "a.b[2].c" → {"a", "b", "[2]", "c"}; a quoted part is one key: 'a."b.c"' → {"a", "b.c"}.
std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  if (key.find_first_not_of('.') == std::string::npos) {
    return parts;  // "." or "..": no key at all (the caller says so)
  }
  std::string cur;
  for (size_t i = 0; i < key.size(); ++i) {
    const char c = key[i];
    if ((c == '"' || c == '\'') && cur.empty() && (i == 0 || key[i - 1] == '.')) {
      // A quoted part, as TOML writes a key with a dot in it: population.hyper."optimizer.lr".
      const size_t close = key.find(c, i + 1);
      if (close == std::string::npos) {
        throw input_error(fmt::format("command line: override key '{}' has an unclosed {}", key,
                                      c == '"' ? "'\"'" : "\"'\""));
      }
      if (close == i + 1 ||
          (close + 1 < key.size() && key[close + 1] != '.' && key[close + 1] != '[')) {
        throw input_error(fmt::format("command line: override key '{}': {} is not a key part", key,
                                      key.substr(i, close - i + 1)));
      }
      parts.push_back(key.substr(i + 1, close - i - 1));
      i = close;
      if (i + 1 < key.size() && key[i + 1] == '.') {
        ++i;  // the dot after the quoted part
        if (i + 1 == key.size()) {
          throw input_error(fmt::format("command line: override key '{}' ends in '.'", key));
        }
      }
      continue;
    }
    if (c == '.') {
      // "a..b", ".a", "a." name no key part between, before or after the dot ("a[0].b" has one)
      if (cur.empty() && (i == 0 || key[i - 1] != ']')) {
        throw input_error(fmt::format("command line: override key '{}' has an empty part", key));
      }
      if (i + 1 == key.size()) {
        throw input_error(fmt::format("command line: override key '{}' ends in '.'", key));
      }
      if (!cur.empty()) {
        parts.push_back(cur);
      }
      cur.clear();
    } else if (c == '[') {
      if (!cur.empty()) {
        parts.push_back(cur);
      }
      const size_t close = key.find(']', i);
      if (close == std::string::npos) {
        throw input_error(fmt::format("command line: override key '{}' has an unclosed '['", key));
      }
      const std::string index = key.substr(i + 1, close - i - 1);
      if (index.empty() || index.size() > 9 ||
          !std::all_of(index.begin(), index.end(), [](char d) { return d >= '0' && d <= '9'; })) {
        throw input_error(fmt::format(
            "command line: override key '{}': [{}] is not a list index (0, 1, ...)", key, index));
      }
      parts.push_back(key.substr(i, close - i + 1));
      cur.clear();
      i = close;
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) {
    parts.push_back(cur);
  }
  return parts;
}

// Applies one key=value override. A `key=` that removes a key the deck does not hold is added to
// `absent` (checked against the schema after the parse: a misspelt key is no key to remove).
// The text without the spaces and tabs around it ('run.steps = 3' is run.steps=3).
std::string trimmed(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t");
  return first == std::string::npos ? std::string()
                                    : text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

// The key of override `arg` ("" when it has no '=').
std::string override_key(const std::string& arg) {
  const size_t eq = arg.find('=');
  return eq == std::string::npos ? std::string() : trimmed(arg.substr(0, eq));
}

void apply_override(toml::value& root, const std::string& arg, std::set<std::string>& keys,
                    std::set<std::string>& created, std::vector<std::string>& absent) {
  const size_t eq = arg.find('=');
  const std::string key = override_key(arg);
  if (eq == std::string::npos || key.empty()) {
    throw input_error(
        fmt::format("command line: '{}' is not key=value (e.g. optimizer.lr=0.1)", arg));
  }
  const std::string text = trimmed(arg.substr(eq + 1));
  try {
    // toml11 reads past the end of its buffer on some bytes that are not UTF-8 (found by fuzzing):
    // the same checks as a deck's text, before it parses anything.
    check_text(arg, "command line", "the argument");
    check_nesting(text, "command line");
  } catch (const Error& e) {
    throw input_error(fmt::format("command line: '{}': {}", printable(arg), e.message()));
  }
  const std::vector<std::string> parts = split_key(key);
  if (parts.empty()) {  // "." or ".." before the "=" (found by fuzzing)
    throw input_error(
        fmt::format("command line: '{}' names no key (e.g. optimizer.lr=0.1)", printable(arg)));
  }
  if (text.empty()) {
    // `key=` with nothing after it removes the key, as if the deck had left it out (data.test= for
    // no evaluation); a key not there is nothing to remove.
    toml::value* node = &root;
    bool removed = false;
    if (parts.back()[0] == '[') {
      throw input_error(fmt::format(
          "command line: '{}': a list element cannot be removed (override the whole list)", arg));
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      const std::string& p = parts[i];
      if (p[0] == '[') {
        const size_t index = std::strtoul(p.c_str() + 1, nullptr, 10);
        if (!node->is_array() || index >= node->as_array().size()) {
          break;
        }
        node = &node->as_array()[index];
      } else if (!node->is_table() || !node->contains(p)) {
        break;
      } else if (i + 1 == parts.size()) {
        node->as_table().erase(p);
        removed = true;
      } else {
        node = &node->as_table()[p];
      }
    }
    if (!removed) {
      absent.push_back(key);
    }
    keys.insert(key);
    return;
  }
  toml::value value;
  try {
    std::istringstream in("v = " + text);
    value = toml::parse(in, "command line").at("v");
  } catch (const std::exception&) {
    // A bare word is a string (optimizer.type=adamw); what starts like a table, a list or a
    // quoted string and does not parse is a mistake, not a string.
    if (text[0] == '{' || text[0] == '[' || text[0] == '"' || text[0] == '\'') {
      throw input_error(fmt::format(
          "command line: '{}': the value is not valid TOML; write it as in a deck (e.g. "
          "model.layers[1]={{ linear = {{ out = 8 }} }}, parallel.spatial=[2,1,1])",
          printable(arg)));
    }
    value = toml::value(text);
  }
  toml::value* node = &root;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    const bool last = i + 1 == parts.size();
    if (p[0] == '[') {
      const long index = std::strtol(p.c_str() + 1, nullptr, 10);
      if (!node->is_array() || index < 0 || static_cast<size_t>(index) >= node->as_array().size()) {
        throw input_error(fmt::format("command line: {} has no element {} to override", path, p));
      }
      node = &node->as_array()[static_cast<size_t>(index)];
      path += p;
      if (last) {
        *node = value;  // model.layers[2]={ dropout = { p = 0.1 } } replaces the whole element
        break;
      }
    } else {
      if (!node->is_table()) {
        throw input_error(fmt::format("command line: cannot set {}: {} is not a table", key, path));
      }
      path += (path.empty() ? "" : ".") + p;
      if (last) {
        node->as_table()[p] = value;
        break;
      }
      if (!node->contains(p)) {
        node->as_table()[p] = toml::table{};
        created.insert(path);
      }
      node = &node->as_table()[p];
    }
  }
  keys.insert(key);
  keys.insert(path);  // the dotted name, a quoted part without its quotes
}

nn::OptionValue option_value(const toml::value& v, const std::string& key, const DeckLocation& at) {
  switch (v.type()) {
    case toml::value_t::boolean:
      return v.as_boolean();
    case toml::value_t::integer:
      return v.as_integer();
    case toml::value_t::floating:
      return v.as_floating();
    case toml::value_t::string:
      return v.as_string().str;
    case toml::value_t::array: {
      std::vector<std::int64_t> list;
      for (const toml::value& e : v.as_array()) {
        if (!e.is_integer()) {
          throw input_error(fmt::format("{} = {}: a list option holds integers only", key, show(v)),
                            at);
        }
        list.push_back(e.as_integer());
      }
      return list;
    }
    default:
      throw input_error(
          fmt::format("{} must be a number, a boolean, a string or a list of integers, "
                      "got {}",
                      key, type_of(v)),
          at);
  }
}

// One layer of a model's list at `key` ("model.layers[3]"; nested:
// "model.layers[1].repeat.layers[0]"): a table with one layer type whose options are a table; a
// composite type's option `layers` is itself a list of layers.
nn::LayerSpec parse_layer(const toml::value& e, const std::string& key, const Source& src) {
  // From the command line when an override set the list, this layer or one of its options.
  const bool overridden = std::any_of(
      src.overridden.begin(), src.overridden.end(),
      [&](const std::string& o) { return key.rfind(o, 0) == 0 || o.rfind(key + ".", 0) == 0; });
  const DeckLocation at = overridden
                              ? DeckLocation{"command line", 0, key}
                              : DeckLocation{src.file, static_cast<int>(e.location().line()), key};
  if (!e.is_table() || e.as_table().size() != 1) {
    throw input_error(
        fmt::format("{} must be a table with one layer type, e.g. {{ relu = {{}} }}, got {}", key,
                    show(e)),
        at);
  }
  const auto& [kind, options] = *e.as_table().begin();
  if (!options.is_table()) {
    throw input_error(fmt::format("{}.{} must be a table of options, e.g. {{ out = 10 }}, got {}",
                                  key, kind, show(options)),
                      at);
  }
  nn::LayerSpec spec{kind, {}, at, {}};
  for (const auto& [k, v] : options.as_table()) {
    if (k == "layers" && v.is_array()) {  // a composite layer's children
      const std::string list = key + "." + kind + ".layers";
      if (v.as_array().empty()) {
        throw input_error(fmt::format("{} must be a non-empty list of layers", list), at);
      }
      for (size_t j = 0; j < v.as_array().size(); ++j) {
        spec.layers.push_back(parse_layer(v.as_array()[j], fmt::format("{}[{}]", list, j), src));
      }
      continue;
    }
    spec.options[k] = option_value(v, key + "." + kind + "." + k, at);
  }
  (*src.locations)[key] = at;
  return spec;
}

// The pipeline's cut against the model's units (its layers, a `repeat` counted as its
// repetitions).
void check_stages(const Deck& d) {
  const int units = static_cast<int>(nn::pipeline_units(d.model.layers).size());
  const int p = d.parallel.pipeline;
  const std::vector<int>& stages = d.parallel.stages;
  if (stages.empty()) {
    if (p > units) {
      throw input_error(fmt::format("parallel.pipeline = {} stages for a model of {} layer{} (a "
                                    "`repeat` counts as its repetitions): every stage needs at "
                                    "least one",
                                    p, units, units == 1 ? "" : "s"),
                        d.where("parallel.pipeline"));
    }
    return;
  }
  const std::string written = fmt::format("parallel.stages = [{}]", fmt::join(stages, ", "));
  if (static_cast<int>(stages.size()) != p) {
    throw input_error(fmt::format("{} gives {} stage{}, parallel.pipeline = {}", written,
                                  stages.size(), stages.size() == 1 ? "" : "s", p),
                      d.where("parallel.stages"));
  }
  for (size_t s = 0; s < stages.size(); ++s) {
    if (stages[s] == 0) {
      throw input_error(fmt::format("{} leaves stage {} empty: every stage needs at least one "
                                    "layer",
                                    written, s),
                        d.where("parallel.stages"));
    }
  }
  long long sum = 0;
  for (const int n : stages) {
    sum += n;
  }
  if (sum != units) {
    throw input_error(fmt::format("{} cuts {} layers, the model has {} (a `repeat` counts as its "
                                  "repetitions; `tessera check` lists them)",
                                  written, sum, units),
                      d.where("parallel.stages"));
  }
}

void parse_model(Section& s, Deck& d, const Source& src) {
  const std::vector<std::int64_t> input = s.integers("input", std::vector<std::int64_t>{}, 1);
  d.model.context = s.integer("context", 0, 1);
  if (d.model.context > 0 && input.empty()) {
    d.model.input = {d.model.context};  // a language model's sample: its context of tokens
  } else if (input.empty()) {
    throw s.missing("input");
  } else {
    d.model.input.assign(input.begin(), input.end());
  }
  if (d.model.context > 0 && d.model.input != Shape{d.model.context}) {
    throw s.error("input", s.find("input"),
                  fmt::format("model.input = [{}] but model.context = {}: a language model's "
                              "sample is its context of tokens (leave input out)",
                              fmt::join(d.model.input, ", "), d.model.context));
  }
  const toml::value* layers = s.find("layers");
  if (layers == nullptr) {
    throw s.missing("layers");
  }
  if (!layers->is_array() || layers->as_array().empty()) {
    throw s.error(
        "layers", layers,
        "model.layers must be a non-empty list of layers, e.g. [ { linear = { out = 10 } } ]");
  }
  const auto& list = layers->as_array();
  for (size_t i = 0; i < list.size(); ++i) {
    d.model.layers.push_back(parse_layer(list[i], fmt::format("model.layers[{}]", i), src));
  }
  const std::string loss = s.choice("loss", std::nullopt, {"softmax_cross_entropy", "mse"});
  d.model.loss = loss == "mse" ? LossKind::mse : LossKind::softmax_cross_entropy;
  if (d.parallel.sequence_parallel && d.model.context == 0) {
    throw input_error(
        "parallel.sequence_parallel = true cuts a language model's tokens over the "
        "tensor axis, but this model has none (no model.context)",
        d.where("parallel.sequence_parallel"));
  }
  if (d.parallel.sequence_parallel && d.model.context % d.parallel.tensor != 0) {
    throw input_error(
        fmt::format("parallel.sequence_parallel = true cuts the model.context = {} tokens into "
                    "equal slices over parallel.tensor = {} ranks, which does not divide them",
                    d.model.context, d.parallel.tensor),
        d.where("parallel.sequence_parallel"));
  }
  // Build the chain once: every layer's options and shapes are checked, each error located and
  // naming the layer by its key (model.layers[i]).
  // Their placements too: a layer that cannot take what the one before it gives (a whole layer
  // after a split one) is refused here, whatever the tensor size.
  nn::BuildContext context;
  context.with_sequence_parallel(d.parallel.sequence_parallel);
  const ShapeOnly shapes;  // the chain's shapes, not its storage
  const auto chain = nn::make_model(d.model.layers, d.model.input, context,
                                    [](size_t i) { return fmt::format("model.layers[{}]", i); });
  // The loss needs the output whole — except softmax_cross_entropy, which takes its classes split
  // over the tensor axis (a vocabulary-parallel head: nn::vocab_parallel_cross_entropy).
  const Layout& out = chain->output_layout();
  const int last = out.rank() - 1;
  const bool vocab_parallel = d.model.loss == LossKind::softmax_cross_entropy && last >= 0 &&
                              out.split_axes() == AxisSet{GridAxis::tensor} &&
                              out.dim_of(GridAxis::tensor) == last &&
                              out.placement(last).stride == 1 && out.partial_axes().empty();
  if (!vocab_parallel && out.rank() >= 2 && out.dim_of(GridAxis::tensor) == 0) {
    throw input_error(
        fmt::format("the model's output is {}: with parallel.sequence_parallel it ends on a token "
                    "slice, and {} needs every token; end with a linear with split = \"output\" "
                    "(a vocabulary-parallel head gathers the tokens)",
                    out.to_string(), loss_name(d.model.loss)),
        d.model.layers.back().where);
  }
  if (!out.is_replicated() && !vocab_parallel) {
    throw input_error(fmt::format("the model's output is {}: {} needs it whole (end the split with "
                                  "a linear with split = \"input\")",
                                  out.to_string(), loss_name(d.model.loss)),
                      d.model.layers.back().where);
  }
  check_stages(d);
}

void parse_optimizer(Section& s, Deck& d) {
  OptimizerConfig& o = d.optimizer;
  const std::string type = s.choice("type", std::nullopt, {"sgd", "adamw"});
  o.type = type == "sgd" ? OptimizerKind::sgd : OptimizerKind::adamw;
  o.lr = s.number("lr", std::nullopt, 0.0, kInf, true);
  const auto only_for = [&](const char* key, const char* kind) {
    if (s.has(key) && type != kind) {
      throw s.error(
          key, s.find(key),
          fmt::format("{} applies to type = \"{}\" only (this is \"{}\")", s.key(key), kind, type));
    }
  };
  only_for("momentum", "sgd");
  only_for("nesterov", "sgd");
  for (const char* k : {"beta1", "beta2", "eps"}) {
    only_for(k, "adamw");
  }
  if (o.type == OptimizerKind::sgd) {
    o.momentum = s.number("momentum", 0.0, 0.0, 1.0, false, true);
    o.nesterov = s.boolean("nesterov", false);
    if (o.nesterov && o.momentum == 0.0) {
      throw s.error("nesterov", s.find("nesterov"),
                    "optimizer.nesterov = true needs optimizer.momentum > 0");
    }
    o.weight_decay = s.number("weight_decay", 0.0, 0.0, kInf);
  } else {
    o.beta1 = s.number("beta1", 0.9, 0.0, 1.0, false, true);
    o.beta2 = s.number("beta2", 0.999, 0.0, 1.0, false, true);
    o.eps = s.number("eps", 1e-8, 0.0, kInf, true);
    o.weight_decay = s.number("weight_decay", 0.01, 0.0, kInf);
  }
  o.clip_grad_norm = s.number("clip_grad_norm", 0.0, 0.0, kInf);
  o.schedule.base_lr = o.lr;
  if (s.has("schedule") && s.find("schedule")->is_string()) {
    o.schedule.kind = optim::parse_schedule_kind(
        s.choice("schedule", std::nullopt, {"constant", "step", "cosine"}));
  } else {
    Section sch = s.table("schedule");
    o.schedule.kind = optim::parse_schedule_kind(
        sch.choice("type", std::string("constant"), {"constant", "step", "cosine"}));
    o.schedule.warmup_steps = sch.integer("warmup_steps", 0, 0);
    if (o.schedule.kind == optim::ScheduleKind::step) {
      o.schedule.step_size = sch.integer("step_size", std::nullopt, 1);
      o.schedule.gamma = sch.number("gamma", 0.1, 0.0, 1.0, true);
    }
    if (o.schedule.kind == optim::ScheduleKind::cosine) {
      o.schedule.min_lr = sch.number("min_lr", 0.0, 0.0, o.lr);
    }
    sch.finish();
  }
}

// The hyper-parameter leaves of [population.hyper], in the deck's order: a table holding one of
// values, grid, uniform, log_uniform, under its dotted key (quoted or nested tables alike).
void hyper_leaves(const toml::value& table, const std::string& key, const Source& src,
                  std::vector<std::pair<std::string, const toml::value*>>& out) {
  static const std::set<std::string> kHow{"values", "grid", "uniform", "log_uniform"};
  std::vector<std::pair<std::string, const toml::value*>> items;
  for (const auto& [k, v] : table.as_table()) {
    items.emplace_back(k, &v);
  }
  std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    return a.second->location().line() < b.second->location().line();
  });
  for (const auto& [k, v] : items) {
    const std::string full = key + "." + k;
    if (!v->is_table()) {
      throw input_error(
          fmt::format("{} must be a table holding one of values, grid, uniform, log_uniform "
                      "(optimizer.lr = {{ log_uniform = [1e-3, 1.0] }}), got {} ({})",
                      full, type_of(*v), show(*v)),
          src.at(full, v));
    }
    bool leaf = false;
    for (const auto& [name, e] : v->as_table()) {
      leaf = leaf || kHow.count(name) != 0;
    }
    if (leaf) {
      out.emplace_back(full, v);
    } else if (v->as_table().empty()) {
      throw input_error(fmt::format("{} must hold one of values, grid, uniform, log_uniform", full),
                        src.at(full, v));
    } else {
      hyper_leaves(*v, full, src, out);
    }
  }
}

// The resolved value of dotted `key` in `root`, or null. A part may index a list, as an override
// does ("model.layers[5].linear.out"): the key is split as an override's (split_key).
const toml::value* find_dotted(const toml::value& root, const std::string& key) {
  std::vector<std::string> parts;
  try {
    parts = split_key(key);
  } catch (const Error&) {
    return nullptr;  // no key an override could name either
  }
  const toml::value* v = &root;
  for (const std::string& p : parts) {
    if (p[0] == '[') {
      const size_t index = std::strtoul(p.c_str() + 1, nullptr, 10);
      if (!v->is_array() || index >= v->as_array().size()) {
        return nullptr;
      }
      v = &v->as_array()[index];
    } else if (!v->is_table() || !v->contains(p)) {
      return nullptr;
    } else {
      v = &v->at(p);
    }
  }
  return parts.empty() ? nullptr : v;
}

// Every dotted key of the resolved deck that holds a value (for "did you mean"); the tables in a
// list by index ("model.layers[5].linear.out").
void dotted_keys(const toml::value& v, const std::string& key, std::vector<std::string>& out) {
  for (const auto& [k, e] : v.as_table()) {
    const std::string full = key.empty() ? k : key + "." + k;
    if (e.is_table()) {
      dotted_keys(e, full, out);
    } else if (e.is_array() && !e.as_array().empty() &&
               std::all_of(e.as_array().begin(), e.as_array().end(),
                           [](const toml::value& x) { return x.is_table(); })) {
      for (size_t i = 0; i < e.as_array().size(); ++i) {
        dotted_keys(e.as_array()[i], fmt::format("{}[{}]", full, i), out);
      }
    } else {
      out.push_back(full);
    }
  }
}

// Layer options a trainer may vary without changing its parameters' shapes: models that differ
// only in these can still be averaged.
bool shape_neutral(const std::string& key) {
  const std::string last = key.substr(key.rfind('.') + 1);
  return key.rfind("model.", 0) != 0 ||
         (key.find('[') != std::string::npos &&
          (last == "p" || last == "eps" || last == "momentum" || last == "negative_slope"));
}

// Deterministic mode takes BatchNorm's statistics per sample group, the same groups at any data
// size; SyncBatchNorm's span the data axis's ranks, whose number would change them.
void refuse_sync_batchnorm(const std::vector<nn::LayerSpec>& layers) {
  for (const nn::LayerSpec& l : layers) {
    const auto sync = l.options.find("sync");
    if ((l.kind == "batchnorm2d" || l.kind == "batchnorm3d") && sync != l.options.end() &&
        std::holds_alternative<bool>(sync->second) && std::get<bool>(sync->second)) {
      throw input_error(
          fmt::format("{} '{}': sync = true with parallel.deterministic = true: deterministic "
                      "mode takes the statistics per sample group, the same at any data size, "
                      "and a synchronised BatchNorm's over the data axis's ranks would change "
                      "with their number (use sync = false)",
                      l.kind, l.where.key),
          l.where);
    }
    refuse_sync_batchnorm(l.layers);
  }
}

void parse_population(Section& s, Deck& d, const Source& src) {
  PopulationConfig& p = d.population;
  const int trainers = d.parallel.trainers;
  p.algorithm = s.choice("algorithm", std::string("independent"), {"independent", "ltfb", "pbt"});
  const bool tournament = p.algorithm != "independent";
  p.every = s.integer("every", 0, 0);
  p.timeout = s.number("timeout", 60.0, 0.0, 1e7, true);
  p.validation = s.string("validation", std::string());
  p.average_every = s.integer("average_every", 0, 0);
  p.combine = s.choice("combine", std::string("none"), {"none", "average", "soup"});
  p.recalibrate = s.integer("recalibrate", 0, 0);
  p.significance = s.number("significance", 2.0, 0.0, kInf);
  p.score_average = s.choice("score", std::string("model"), {"model", "average"}) == "average";
  p.fraction = s.number("fraction", 0.25, 0.0, 0.5, true);
  p.resample = s.number("resample", 0.25, 0.0, 1.0);
  p.seed = static_cast<std::uint64_t>(s.integer("seed", static_cast<std::int64_t>(d.run.seed), 0));
  if (const toml::value* v = s.find("perturb"); v != nullptr) {
    p.perturb.clear();
    if (v->is_array()) {
      for (const toml::value& e : v->as_array()) {
        if (e.is_floating() || e.is_integer()) {
          p.perturb.push_back(e.is_floating() ? e.as_floating()
                                              : static_cast<double>(e.as_integer()));
        }
      }
    }
    if (!v->is_array() || p.perturb.size() != v->as_array().size() || p.perturb.empty() ||
        std::any_of(p.perturb.begin(), p.perturb.end(),
                    [](double f) { return !(f > 0.0) || !std::isfinite(f); })) {
      throw s.error("perturb", v,
                    fmt::format("population.perturb = {} must be a non-empty list of positive "
                                "factors ([0.8, 1.25])",
                                show(*v)));
    }
  }
  if (trainers < 2) {  // nothing of the section would be used: refused, not ignored
    const std::string k = tournament            ? "algorithm"
                          : p.average_every > 0 ? "average_every"
                          : p.combine != "none" ? "combine"
                          : s.has("hyper")      ? "hyper"
                                                : "";
    throw k.empty()
        ? input_error(fmt::format("a [population] section needs parallel.trainers = 2 or more; "
                                  "parallel.trainers = {}",
                                  trainers),
                      d.where("parallel.trainers"))
        : s.error(k, s.find(k),
                  fmt::format("population.{} needs two trainers or more; parallel.trainers = {}", k,
                              trainers));
  }
  // Keys only some algorithms read: given to another, said (one deck serves every algorithm
  // through population.algorithm=... on the command line, so not refused).
  for (const auto& [k, pbt_only] :
       {std::pair{"every", false}, std::pair{"significance", false}, std::pair{"score", false},
        std::pair{"fraction", true}, std::pair{"perturb", true}, std::pair{"resample", true}}) {
    if (s.has(k) && (pbt_only ? p.algorithm != "pbt" : !tournament)) {
      d.notes.push_back(
          Error(fmt::format("population.{} is not used by population.algorithm = \"{}\" ({} "
                            "only): ignored",
                            k, p.algorithm, pbt_only ? "pbt" : "ltfb and pbt"),
                src.at(s.key(k), s.find(k)))
              .what());
    }
  }
  if (tournament && p.every == 0) {
    const bool given = s.find("every") != nullptr;
    throw s.error(given ? "every" : "algorithm", s.find(given ? "every" : "algorithm"),
                  fmt::format("population.algorithm = \"{}\" needs population.every{}, the steps "
                              "between tournaments",
                              p.algorithm, given ? " >= 1 (it is 0)" : ""));
  }
  if (p.recalibrate > 0 && p.combine == "none") {
    throw s.error("recalibrate", s.find("recalibrate"),
                  fmt::format("population.recalibrate = {} re-estimates the BatchNorm statistics "
                              "of a combined model: it needs population.combine = \"average\" or "
                              "\"soup\"",
                              p.recalibrate));
  }
  if ((tournament || p.combine == "soup") && p.validation.empty()) {
    const char* k = tournament ? "algorithm" : "combine";
    throw s.error(k, s.find(k),
                  fmt::format("population.{} = \"{}\" needs population.validation = "
                              "\"file.h5:/split\": each trainer scores models on its slice of it",
                              k, tournament ? p.algorithm : p.combine));
  }
  const size_t colon = p.validation.rfind(':');
  if (!p.validation.empty() &&
      (colon == std::string::npos || colon == 0 || colon + 1 == p.validation.size())) {
    throw s.error(
        "validation", s.find("validation"),
        fmt::format("population.validation = \"{}\" must be \"file.h5:/split\"", p.validation));
  }

  // The hyper-parameters: checked against the resolved deck, so a key is known (defaults too)
  // and its type is the schema's.
  const toml::value* hyper = s.find("hyper");
  if (hyper != nullptr && !hyper->is_table()) {
    throw s.error(
        "hyper", hyper,
        fmt::format("population.hyper must be a table of deck keys, got {}", type_of(*hyper)));
  }
  std::vector<std::pair<std::string, const toml::value*>> leaves;
  if (hyper != nullptr) {
    hyper_leaves(*hyper, "population.hyper", src, leaves);
  }
  std::istringstream resolved_text(to_toml(d));
  const toml::value resolved = toml::parse(resolved_text, "resolved deck");
  std::vector<std::string> known;
  dotted_keys(resolved, "", known);
  const std::string prefix = "population.hyper.";
  size_t grid_points = 1;
  bool has_grid = false;
  std::map<std::string, DeckLocation> seen;  // a key written twice ("a.b" and a = { b = ... })
  for (const auto& leaf : leaves) {
    const std::string& full = leaf.first;  // not a structured binding: the lambdas below use it
    const toml::value* v = leaf.second;
    HyperSpec h;
    h.key = full.substr(prefix.size());
    h.where = src.at(full, v);
    auto bad = [&](const std::string& what) { return input_error(full + ": " + what, h.where); };
    if (const auto [it, first] = seen.emplace(h.key, h.where); !first) {
      const DeckLocation& other = it->second;
      const bool command_line = other.file == "command line" || h.where.file == "command line";
      throw bad(fmt::format(
          "{} is given twice (also {}){}", h.key,
          other.file == "command line" ? std::string("on the command line")
                                       : fmt::format("at {}:{}", other.file, other.line),
          command_line ? fmt::format(": an override names a deck's entry as the deck writes it "
                                     "(quoted: population.hyper.\"{}\".values=[...]; nested: "
                                     "population.hyper.{}.values=[...])",
                                     h.key, h.key)
                       : std::string()));
    }
    const toml::value* target = find_dotted(resolved, h.key);
    if (target == nullptr) {
      const std::string near = closest_match(h.key, known);
      throw bad(fmt::format("the deck has no key {}{}", h.key,
                            near.empty() ? "" : " (did you mean " + near + "?)"));
    }
    if (!target->is_integer() && !target->is_floating()) {
      throw bad(fmt::format("{} is {} ({}), not a number: only numeric deck keys can vary", h.key,
                            type_of(*target), show(*target)));
    }
    if (h.key.rfind("parallel.", 0) == 0 || h.key == "run.steps" || h.key == "run.epochs" ||
        h.key.rfind("population.", 0) == 0) {
      throw bad(fmt::format("{} cannot vary: every trainer has the same grid and length", h.key));
    }
    if (tournament && h.key.rfind("optimizer.", 0) != 0) {
      throw bad(
          fmt::format("with population.algorithm = \"{}\" only optimizer keys can vary "
                      "(they travel with the weights)",
                      p.algorithm));
    }
    if (!shape_neutral(h.key) && (p.average_every > 0 || p.combine != "none")) {
      throw bad(fmt::format(
          "{} changes the model's shapes, but {} averages the trainers' weights, which must "
          "have one shape: vary it with population.combine = \"none\" and no average_every",
          h.key,
          p.average_every > 0 ? fmt::format("population.average_every = {}", p.average_every)
                              : fmt::format("population.combine = \"{}\"", p.combine)));
    }
    h.integer = target->is_integer();
    std::vector<std::string> given;
    for (const auto& [name, e] : v->as_table()) {
      given.push_back(name);
    }
    std::sort(given.begin(), given.end());
    if (given.size() != 1) {
      throw bad(
          fmt::format("give one of values, grid, uniform, log_uniform (got {})", join(given)));
    }
    h.how = given[0];
    const toml::value& list = v->as_table().at(h.how);
    std::vector<double> xs;
    if (list.is_array()) {
      for (const toml::value& e : list.as_array()) {
        if (e.is_floating() || e.is_integer()) {
          xs.push_back(e.is_floating() ? e.as_floating() : static_cast<double>(e.as_integer()));
        }
      }
    }
    if (!list.is_array() || xs.size() != list.as_array().size() || xs.empty() ||
        std::any_of(xs.begin(), xs.end(), [](double x) { return !std::isfinite(x); })) {
      throw bad(fmt::format("{} = {} must be a non-empty list of numbers", h.how, show(list)));
    }
    if (h.how == "values" || h.how == "grid") {
      h.values = xs;
      if (h.how == "values" && xs.size() != static_cast<size_t>(trainers)) {
        throw bad(
            fmt::format("values holds {} value{} but parallel.trainers = {} (one per "
                        "trainer)",
                        xs.size(), xs.size() == 1 ? "" : "s", trainers));
      }
      if (h.how == "grid") {
        has_grid = true;
        grid_points *= xs.size();
      }
    } else {
      if (xs.size() != 2) {
        throw bad(fmt::format("{} = {} must be [low, high]", h.how, show(list)));
      }
      h.low = xs[0];
      h.high = xs[1];
      if (h.low > h.high) {
        throw bad(fmt::format("{} = {}: low {} > high {}", h.how, show(list), h.low, h.high));
      }
      if (h.how == "log_uniform" && !(h.low > 0.0)) {
        throw bad(fmt::format("log_uniform = {}: the range must be positive", show(list)));
      }
    }
    p.hyper.push_back(h);
  }
  if (has_grid && grid_points != static_cast<size_t>(trainers)) {
    throw s.error("hyper", hyper,
                  fmt::format("population.hyper: the grid holds {} points but parallel.trainers = "
                              "{} (one trainer per point)",
                              grid_points, trainers));
  }
  // Every trainer's deck must be a valid deck: a value out of a key's range is an error now.
  for (int k = 0; k < trainers; ++k) {
    for (const HyperSpec& h : p.hyper) {
      const double x = hyper_value(p, h, k, trainers);
      if (h.integer && std::abs(x) > 9e15) {
        throw input_error(
            fmt::format("population.hyper.{}: trainer {}'s value {} is out of range", h.key, k, x),
            h.where);
      }
    }
  }
}

}  // namespace

Deck parse(const std::string& text, const std::string& file,
           const std::vector<std::string>& overrides) {
  Deck d;
  d.file = file;
  check_text(text, file);
  check_nesting(text, file);
  toml::value root;
  try {
    std::istringstream in(text);
    root = toml::parse(in, file);
  } catch (const toml::syntax_error& e) {
    // toml11's message is several lines; the first says what, the location says where.
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    const std::string prefix = "[error] ";
    if (what.rfind(prefix, 0) == 0) {
      what = what.substr(prefix.size());
    }
    // ... and names toml11's parsing function ("toml::parse_key_value_pair: "): not for users.
    if (what.rfind("toml::", 0) == 0 && what.find(": ") != std::string::npos) {
      what = what.substr(what.find(": ") + 2);
    }
    throw input_error("TOML syntax error: " + what,
                      {file, static_cast<int>(e.location().line()), ""});
  }
  std::set<std::string> asked;
  Source src{file, {}, {}, &d.locations, &asked};
  std::vector<std::string> absent;  // key= overrides of keys the deck does not hold
  std::map<std::string, std::string> last_override;  // of each key
  for (const std::string& o : overrides) {
    apply_override(root, o, src.overridden, src.created, absent);
    const std::string key = override_key(o);
    if (const auto before = last_override.find(key);
        before != last_override.end() && before->second != o) {
      d.notes.push_back(
          fmt::format("command line: {} is given twice ('{}', then '{}'): the last "
                      "is used",
                      key, printable(before->second), printable(o)));
    }
    last_override[key] = o;
  }
  check_values(root, "", file);
  // run.epochs and run.steps are two ways to say one thing: overriding one replaces the other.
  if (root.contains("run") && root.at("run").is_table()) {
    auto& run_table = root.as_table()["run"].as_table();
    for (const auto& [given, other] :
         {std::pair<std::string, std::string>{"run.steps", "epochs"},
          std::pair<std::string, std::string>{"run.epochs", "steps"}}) {
      if (src.overridden.count(given) != 0 && src.overridden.count("run." + other) == 0) {
        run_table.erase(other);
      }
    }
  }

  Section top(&root, "", src);
  top.expect_keys({"run", "parallel", "data", "model", "optimizer", "checkpoint", "population"});
  Section run = top.table("run");
  const std::string stem = std::filesystem::path(file).stem().string();
  d.run.name = run.string("name", stem);
  if (d.run.name.empty() || d.run.name == "." || d.run.name == ".." ||
      d.run.name.find('/') != std::string::npos) {
    throw run.error("name", run.find("name"),
                    fmt::format("run.name = \"{}\" must be a plain name (not empty, no '/', not "
                                "'.' or '..'): it names the run's folder, runs/<name> by default",
                                d.run.name));
  }
  d.run.seed = static_cast<std::uint64_t>(run.integer("seed", 0, 0));
  d.run.epochs = run.integer("epochs", 1, 1);
  d.run.steps = run.integer("steps", 0, 1);
  if (run.has("epochs") && run.has("steps")) {
    throw run.error("steps", run.find("steps"), "run.epochs and run.steps both given: set one");
  }
  d.run.log_every = run.integer("log_every", 50, 1);
  d.run.eval_every = run.integer("eval_every", 0, 0);
  d.run.output = run.string("output", "runs/" + d.run.name);
  if (d.run.output.empty()) {
    throw run.error("output", run.find("output"),
                    "run.output must not be empty (leave it out for runs/<run.name>)");
  }
  d.run.blas_threads = static_cast<int>(run.integer("blas_threads", 1, 1, 256));
  d.run.precision = run.choice("precision", "fp32", {"fp32", "bf16"});
  d.run.device = run.choice("device", std::string(build_device()), {"cpu", "cuda"});
  if (const std::string why = device_mismatch(d.run.device); !why.empty()) {
    throw run.error("device", run.find("device"),
                    fmt::format("run.device = \"{}\": {}", d.run.device, why));
  }
  d.run.watchdog_s = run.number("watchdog_s", 300.0, 0.0, 1e7, false);
  if (d.run.watchdog_s > 0.0 && d.run.watchdog_s < 1.0) {
    // A limit below a second ends healthy jobs at their first slow collective.
    throw run.error("watchdog_s", run.find("watchdog_s"),
                    fmt::format("run.watchdog_s = {} must be 0 (off) or at least 1 (seconds a rank "
                                "may wait in one collective)",
                                show(*run.find("watchdog_s"))));
  }
  d.run.check_collectives = run.boolean("check_collectives", false);
  d.run.nonfinite = run.choice("nonfinite", "stop", {"stop", "skip"});
  d.run.skip_limit = run.integer("skip_limit", 10, 1);
  d.run.check_replicas = run.integer("check_replicas", 0, 0);
  d.run.activation_limit_mb = run.number("activation_limit_mb", 0.0, 0.0, 1e12);
  d.run.peak_tflops = run.number("peak_tflops", 0.0, 0.0, 1e6);
  run.finish();

  Section par = top.table("parallel");
  d.parallel.trainers = static_cast<int>(par.integer("trainers", 1, 1, INT_MAX));
  d.parallel.data = static_cast<int>(par.integer("data", 0, 0, INT_MAX));
  d.parallel.tensor = static_cast<int>(par.integer("tensor", 1, 1, INT_MAX));
  d.parallel.pipeline = static_cast<int>(par.integer("pipeline", 1, 1, INT_MAX));
  const std::vector<std::int64_t> spatial =
      par.integers("spatial", std::vector<std::int64_t>{1, 1}, 1);
  d.parallel.spatial.assign(spatial.begin(), spatial.end());
  if (spatial.size() != 2 && spatial.size() != 3) {
    throw par.error(
        "spatial", par.find("spatial"),
        fmt::format("parallel.spatial = [{}] must have 2 or 3 entries", fmt::join(spatial, ", ")));
  }
  if (const toml::value* v = par.find("stages"); v != nullptr && !v->is_string()) {
    for (const std::int64_t n : par.integers("stages", std::nullopt, 0)) {
      d.parallel.stages.push_back(static_cast<int>(std::min<std::int64_t>(n, INT_MAX)));
    }
  } else if (v != nullptr) {
    (void)par.choice("stages", std::string("auto"), {"auto"});
  }
  d.parallel.schedule = par.choice("schedule", std::string("1f1b"), {"1f1b", "gpipe"});
  d.parallel.bucket_mb = par.number("bucket_mb", 4.0, 0.0, 1024.0, true);
  d.parallel.reduce = par.choice("reduce", std::string("auto"), {"auto", "mpi", "shared"});
  d.parallel.zero = static_cast<int>(par.integer("zero", 0, 0, 1));
  d.parallel.sequence_parallel = par.boolean("sequence_parallel", false);
  d.parallel.deterministic = par.boolean("deterministic", false);
  d.parallel.sample_groups = static_cast<int>(par.integer("sample_groups", 0, 0, INT_MAX));
  if (d.parallel.deterministic && d.parallel.sample_groups == 0) {
    throw par.error("deterministic", par.find("deterministic"),
                    "parallel.deterministic = true needs parallel.sample_groups, the fixed number "
                    "of groups the global batch is cut into (a multiple of every data-parallel "
                    "size to reproduce on)");
  }
  if (!d.parallel.deterministic && d.parallel.sample_groups != 0) {
    throw par.error("sample_groups", par.find("sample_groups"),
                    "parallel.sample_groups is used only with parallel.deterministic = true");
  }
  par.finish();

  Section data = top.table("data");
  d.data.train = data.string("train", std::nullopt);
  d.data.test = data.string("test", std::string());
  d.data.batch = data.integer("batch", std::nullopt, 1, INT_MAX);
  d.data.shuffle = data.boolean("shuffle", true);
  d.data.drop_last = data.boolean("drop_last", false);
  d.data.cache = data.boolean("cache", false);
  d.data.prefetch = static_cast<int>(data.integer("prefetch", 2, 0, 64));
  d.data.micro_batches = static_cast<int>(data.integer("micro_batches", 1, 1, INT_MAX));
  if (d.parallel.deterministic && d.data.micro_batches != 1) {
    throw data.error("micro_batches", data.find("micro_batches"),
                     fmt::format("data.micro_batches = {} with parallel.deterministic = true: "
                                 "deterministic mode accumulates parallel.sample_groups groups "
                                 "already (leave micro_batches at 1)",
                                 d.data.micro_batches));
  }
  if (d.parallel.deterministic && d.data.batch % d.parallel.sample_groups != 0) {
    throw data.error("batch", data.find("batch"),
                     fmt::format("data.batch = {} is not a multiple of parallel.sample_groups = "
                                 "{} (deterministic mode cuts the global batch into equal groups)",
                                 d.data.batch, d.parallel.sample_groups));
  }
  for (const char* k : {"train", "test"}) {
    const std::string spec = data.string(k, std::string());
    const size_t colon = spec.rfind(':');
    if (data.has(k) && (colon == std::string::npos || colon == 0 || colon + 1 == spec.size())) {
      throw data.error(
          k, data.find(k),
          fmt::format(
              "data.{} = \"{}\" must be \"file.h5:/split\"{}", k, spec,
              std::string(k) == "test"
                  ? " (leave data.test out, or give data.test= on the command line, for none)"
                  : ""));
    }
  }
  data.finish();

  Section model = top.table("model");
  if (!top.has("model")) {
    throw input_error("section [model] is required", {file, 0, "model"});
  }
  parse_model(model, d, src);
  if (d.parallel.deterministic) {
    refuse_sync_batchnorm(d.model.layers);
  }
  model.finish();

  Section opt = top.table("optimizer");
  if (!top.has("optimizer")) {
    throw input_error("section [optimizer] is required", {file, 0, "optimizer"});
  }
  parse_optimizer(opt, d);
  opt.finish();

  Section ck = top.table("checkpoint");
  d.checkpoint.enabled = top.has("checkpoint");
  d.checkpoint.dir = ck.string("dir", d.run.output + "/ckpt");
  d.checkpoint.every_steps = ck.integer("every_steps", 0, 0);
  d.checkpoint.every_seconds = ck.number("every_seconds", 0.0, 0.0, kInf);
  d.checkpoint.keep = static_cast<int>(ck.integer("keep", 3, 1, 1000000));
  d.checkpoint.at_end = ck.boolean("at_end", true);
  d.checkpoint.at_start = ck.boolean("at_start", false);
  d.checkpoint.restart = ck.string("restart", std::string());
  if (d.checkpoint.dir.empty()) {
    throw ck.error("dir", ck.find("dir"), "checkpoint.dir must not be empty");
  }
  if (d.parallel.trainers > 1 && !d.checkpoint.restart.empty() && d.checkpoint.restart != "auto") {
    throw ck.error("restart", ck.find("restart"),
                   fmt::format("checkpoint.restart = \"{}\": a population restarts with \"auto\" "
                               "(each trainer from its own folder, at its newest checkpoint "
                               "consistent with the population's rounds and averages)",
                               d.checkpoint.restart));
  }
  ck.finish();
  Section pop = top.table("population");
  d.population.enabled = top.has("population");
  d.population.seed = d.run.seed;
  if (d.population.enabled) {
    parse_population(pop, d, src);
  }
  pop.finish();
  top.finish();
  // Entry i of parallel.spatial splits the samples' spatial dimension i: a list of another length
  // would split other dimensions than it says (a 3-entry list on (C, H, W) samples).
  const std::vector<int>& tiles = d.parallel.spatial;
  const size_t dims = d.model.input.size() >= 3 ? d.model.input.size() - 1 : 0;
  if (dims > 0 && tiles.size() != dims &&
      std::any_of(tiles.begin(), tiles.end(), [](int t) { return t > 1; })) {
    throw input_error(
        fmt::format("parallel.spatial = [{}] has {} entries, but the samples "
                    "(model.input = [{}]) have {} spatial dimensions: give {}",
                    fmt::join(tiles, ", "), tiles.size(), fmt::join(d.model.input, ", "), dims,
                    dims == 2 ? "[py, pz] (H, W)" : "[px, py, pz] (D, H, W)"),
        d.where("parallel.spatial"));
  }
  // A key= of a key the deck leaves out is fine (data.test= on a deck without data.test); of a key
  // no deck has, it is a misspelling. Keys inside lists (layers) and population.hyper's own are
  // not looked up by name: left to their own checks.
  for (const std::string& key : absent) {
    const bool population = key.rfind("population.", 0) == 0;
    if (asked.count(key) == 0 && key.find('[') == std::string::npos &&
        key.rfind("population.hyper.", 0) != 0 && !(population && !d.population.enabled)) {
      const std::string near = closest_match(key, {asked.begin(), asked.end()});
      throw input_error(
          fmt::format("command line: '{}=' removes {}, a key this deck does not read{}", key, key,
                      near.empty() ? "" : " (did you mean " + near + "?)"));
    }
  }
  return d;
}

namespace {
// A double in [0, 1) from the top 53 of the 64 bits of two random words.
double unit_interval(std::uint32_t high, std::uint32_t low) {
  return static_cast<double>(((static_cast<std::uint64_t>(high) << 32) | low) >> 11) * 0x1.0p-53;
}

// The point a fraction u in [0, 1) along a uniform range, or a log-uniform one in log space.
double point_in_range(const HyperSpec& spec, double u) {
  if (spec.how == "uniform") {
    return spec.low + u * (spec.high - spec.low);
  }
  return std::exp(std::log(spec.low) + u * (std::log(spec.high) - std::log(spec.low)));
}
}  // namespace

double hyper_value(const PopulationConfig& population, const HyperSpec& spec, int trainer,
                   int trainers) {
  if (spec.how == "values") {
    return spec.values.at(static_cast<size_t>(trainer));
  }
  if (spec.how == "grid") {
    // The grid keys in deck order, the first varying slowest (row-major over the points).
    size_t stride = 1;
    bool after = false;
    for (const HyperSpec& h : population.hyper) {
      if (&h == &spec) {
        after = true;
      } else if (after && h.how == "grid") {
        stride *= h.values.size();
      }
    }
    return spec.values[(static_cast<size_t>(trainer) / stride) % spec.values.size()];
  }
  // Latin hypercube: the range cut into `trainers` equal parts (in log space for log_uniform),
  // dealt to the trainers in an order drawn per key, and a uniform draw within the part: a small
  // population covers the range as a grid would, and two keys are not varied in lockstep. Random
  // numbers from the counter-based stream of (population.seed, key).
  const rng::CounterRng gen(population.seed, rng::hash_name(spec.key));
  std::vector<int> part(static_cast<size_t>(trainers));
  for (int i = 0; i < trainers; ++i) {
    part[static_cast<size_t>(i)] = i;
  }
  for (int i = trainers - 1; i > 0; --i) {  // Fisher-Yates, from counters past the draws' own
    const rng::Philox4x32 r = gen.bits(std::uint64_t{1} << 40 | static_cast<std::uint64_t>(i));
    std::swap(part[static_cast<size_t>(i)], part[r.v[0] % static_cast<std::uint32_t>(i + 1)]);
  }
  const rng::Philox4x32 r = gen.bits(static_cast<std::uint64_t>(trainer));
  const double u = (part[static_cast<size_t>(trainer)] + unit_interval(r.v[0], r.v[1])) /
                   static_cast<double>(trainers);
  return point_in_range(spec, u);
}

double explore_value(const PopulationConfig& population, const HyperSpec& spec, double value,
                     const std::uint32_t (&bits)[4]) {
  const bool listed = spec.how == "values" || spec.how == "grid";
  const double lo = listed ? *std::min_element(spec.values.begin(), spec.values.end()) : spec.low;
  const double hi = listed ? *std::max_element(spec.values.begin(), spec.values.end()) : spec.high;
  const double pick = bits[0] * 0x1.0p-32;  // in [0, 1)
  double x = 0.0;
  if (pick < population.resample) {
    const double u = unit_interval(bits[1], bits[2]);
    if (listed) {
      x = spec.values[std::min(spec.values.size() - 1,
                               static_cast<size_t>(u * static_cast<double>(spec.values.size())))];
    } else {
      x = point_in_range(spec, u);
    }
  } else {
    x = std::clamp(value * population.perturb[bits[3] % population.perturb.size()], lo, hi);
  }
  return spec.integer ? std::round(x) : x;
}

std::string hyper_text(const HyperSpec& spec, double value) {
  if (spec.integer) {
    return fmt::format("{}", static_cast<std::int64_t>(std::llround(value)));
  }
  std::string t = fmt::format("{:.17g}", value);
  if (t.find_first_of(".eEn") == std::string::npos) {
    t += ".0";  // a TOML float
  }
  return t;
}

std::vector<std::string> trainer_overrides(const Deck& deck, int trainer) {
  std::vector<std::string> out;
  bool seed = false;
  for (const HyperSpec& h : deck.population.hyper) {
    out.push_back(h.key + "=" +
                  hyper_text(h, hyper_value(deck.population, h, trainer, deck.parallel.trainers)));
    seed = seed || h.key == "run.seed";
  }
  if (!seed) {
    out.push_back(fmt::format("run.seed={}", deck.run.seed + static_cast<std::uint64_t>(trainer)));
  }
  return out;
}

std::string read_text(const std::string& file) {
  std::error_code ec;
  const auto status = std::filesystem::status(file, ec);
  if (!std::filesystem::exists(status)) {
    throw input_error(fmt::format("{}: cannot read the deck: no such file", file));
  }
  if (std::filesystem::is_directory(status)) {
    throw input_error(fmt::format("{}: cannot read the deck: it is a folder, not a file", file));
  }
  if (std::filesystem::is_character_file(status) || std::filesystem::is_block_file(status)) {
    throw input_error(fmt::format("{}: cannot read the deck: it is a device, not a file", file));
  }
  // A file or a pipe (a shell's <(...)); read in pieces up to a bound no deck comes near, so that
  // an endless stream is refused instead of read forever. Opened without blocking: a named pipe
  // no writer has open would otherwise block the open itself; read, it then gives end of file.
  constexpr size_t kMaxDeckBytes = size_t{16} << 20;
  const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    throw input_error(fmt::format("{}: cannot read the deck: {}", file, std::strerror(errno)));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // a connected pipe: wait for its text
  std::string text;
  std::vector<char> piece(size_t{1} << 16);
  for (;;) {
    const ssize_t n = ::read(fd, piece.data(), piece.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      throw input_error(fmt::format("{}: cannot read the deck: {}", file, std::strerror(error)));
    }
    if (n == 0) {
      break;
    }
    text.append(piece.data(), static_cast<size_t>(n));
    if (text.size() > kMaxDeckBytes) {
      ::close(fd);
      throw input_error(
          fmt::format("{}: cannot read the deck: it is larger than {} MiB, which no deck is", file,
                      kMaxDeckBytes >> 20));
    }
  }
  ::close(fd);
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw input_error(fmt::format("{}: the deck is empty", file));
  }
  return text;
}

namespace {
// Refuses a folder the run writes into that it could not create or write: `key` = `path`.
void check_folder(const Deck& d, const std::string& key, const std::string& path) {
  namespace fs = std::filesystem;
  const auto fail = [&](const std::string& why) {
    throw input_error(fmt::format("{} = \"{}\" {}", key, path, why), d.where(key));
  };
  if (path.size() > PATH_MAX - 1) {
    fail(fmt::format("is {} bytes long: paths are at most {}", path.size(), PATH_MAX - 1));
  }
  for (const fs::path& part : fs::path(path)) {
    if (part.native().size() > NAME_MAX) {
      fail(fmt::format("has a component of {} bytes: names are at most {}", part.native().size(),
                       NAME_MAX));
    }
  }
  // Walk down from the root: every existing part must be a folder; the deepest must be writable.
  fs::path so_far;
  fs::path deepest = ".";
  bool whole = true;
  for (const fs::path& part : fs::path(path)) {
    so_far /= part;
    std::error_code ec;
    const fs::file_status status = fs::status(so_far, ec);
    if (!fs::exists(status)) {
      whole = false;
      break;
    }
    if (!fs::is_directory(status)) {
      fail(so_far == fs::path(path)
               ? "exists and is not a folder"
               : fmt::format("cannot be created: {} is a file, not a folder", so_far.string()));
    }
    deepest = so_far;
  }
  const auto refuse = [&](int error) {
    fail(whole
             ? fmt::format("is not writable ({})", std::strerror(error))
             : fmt::format("cannot be created in {}: {}", deepest.string(), std::strerror(error)));
  };
  if (::access(deepest.c_str(), W_OK | X_OK) != 0) {
    refuse(errno);
  }
  // access() answers from the permission bits, and yes to root everywhere: a folder of /proc or
  // /sys, or a read-only mount's, passes it. Creating (and removing) a folder there tells.
  std::string probe = (deepest / ".tessera-probe-XXXXXX").string();
  if (::mkdtemp(probe.data()) == nullptr) {
    refuse(errno);
  }
  ::rmdir(probe.c_str());
}
}  // namespace

void check_folders(const Deck& d) {
  check_folder(d, "run.output", d.run.output);
  if (d.checkpoint.enabled) {
    check_folder(d, "checkpoint.dir", d.checkpoint.dir);
  }
}

Deck load(const std::string& file, const std::vector<std::string>& overrides) {
  return parse(read_text(file), file, overrides);
}

namespace {
std::string toml_string(const std::string& s) {
  return nn::to_toml(nn::OptionValue(s));
}
std::string real(double x) {
  return nn::to_toml(nn::OptionValue(x));
}

// `{ kind = { options } }`, a composite's children on lines of their own under `indent`.
std::string layer_toml(const nn::LayerSpec& l, const std::string& indent) {
  std::vector<std::string> opts;
  for (const auto& [k, v] : l.options) {
    opts.push_back(k + " = " + nn::to_toml(v));
  }
  if (!l.layers.empty()) {
    std::string list = "layers = [\n";
    for (const nn::LayerSpec& c : l.layers) {
      list += indent + "    " + layer_toml(c, indent + "    ") + ",\n";
    }
    opts.push_back(list + indent + "  ]");
  }
  return fmt::format("{{ {} = {{{}{}{}}} }}", l.kind, opts.empty() ? "" : " ", join(opts),
                     opts.empty() ? "" : " ");
}

}  // namespace

struct DeckText::Root {
  std::optional<toml::value> value;  // nothing when the text does not parse
};

DeckText::DeckText(const std::string& text) : m_root(std::make_unique<Root>()) {
  try {
    std::istringstream in(text);
    m_root->value = toml::parse(in, "deck");
  } catch (const std::exception&) {
    // not a deck: nothing known
  }
}

DeckText::~DeckText() = default;

namespace {
const toml::value* value_at(const std::optional<toml::value>& root, const std::string& key) {
  return root ? find_dotted(*root, key) : nullptr;
}
}  // namespace

std::optional<std::int64_t> DeckText::integer(const std::string& key) const {
  const toml::value* v = value_at(m_root->value, key);
  return v && v->is_integer() ? std::optional<std::int64_t>(v->as_integer()) : std::nullopt;
}

std::optional<bool> DeckText::boolean(const std::string& key) const {
  const toml::value* v = value_at(m_root->value, key);
  return v && v->is_boolean() ? std::optional<bool>(v->as_boolean()) : std::nullopt;
}

std::optional<std::string> DeckText::string(const std::string& key) const {
  const toml::value* v = value_at(m_root->value, key);
  return v && v->is_string() ? std::optional<std::string>(v->as_string().str) : std::nullopt;
}

namespace {
// An integer or float as a double (3 and 3.0 are the same value); nothing for any other value.
std::optional<double> number(const toml::value* v) {
  if (v != nullptr && v->is_floating()) {
    return v->as_floating();
  }
  if (v != nullptr && v->is_integer()) {
    return static_cast<double>(v->as_integer());
  }
  return std::nullopt;
}

// A value as a deck would write it, short: numbers and booleans as they are, strings quoted.
std::string short_value(const toml::value* v) {
  if (v == nullptr) {
    return "(none)";
  }
  if (v->is_floating()) {
    return fmt::format("{}", v->as_floating());
  }
  if (v->is_integer()) {
    return fmt::format("{}", v->as_integer());
  }
  if (v->is_boolean()) {
    return v->as_boolean() ? "true" : "false";
  }
  if (v->is_string()) {
    return toml_string(v->as_string().str);
  }
  std::string text = toml::format(*v, 0);
  text.erase(std::remove(text.begin(), text.end(), '\n'), text.end());
  return text.size() > 40 ? std::string(v->is_array() ? "(another list)" : "(another table)")
                          : text;
}
}  // namespace

std::vector<std::string> DeckText::changed(const DeckText& now,
                                           const std::vector<std::string>& under) const {
  const std::optional<toml::value>& a = m_root->value;
  const std::optional<toml::value>& b = now.m_root->value;
  if (!a || !b || !a->is_table() || !b->is_table()) {
    return {};
  }
  std::vector<std::string> keys;
  dotted_keys(*a, "", keys);
  dotted_keys(*b, "", keys);
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<std::string> out;
  for (const std::string& key : keys) {
    const bool wanted = std::any_of(under.begin(), under.end(), [&](const std::string& u) {
      return key == u || key.rfind(u + ".", 0) == 0 || key.rfind(u + "[", 0) == 0;
    });
    const toml::value* x = find_dotted(*a, key);
    const toml::value* y = find_dotted(*b, key);
    const bool same = number(x) && number(y) ? *number(x) == *number(y)
                                             : x != nullptr && y != nullptr && *x == *y;
    if (wanted && !same) {
      out.push_back(fmt::format("{} = {} → {}", key, short_value(x), short_value(y)));
    }
  }
  return out;
}

std::string to_toml(const Deck& d) {
  std::string o;
  o += fmt::format("# Resolved from {} (defaults and command-line overrides applied).\n", d.file);
  o += fmt::format("[run]\nname = {}\nseed = {}\n", toml_string(d.run.name), d.run.seed);
  if (d.run.steps > 0) {
    o += fmt::format("steps = {}\n", d.run.steps);
  } else {
    o += fmt::format("epochs = {}\n", d.run.epochs);
  }
  o += fmt::format(
      "log_every = {}\neval_every = {}\noutput = {}\nblas_threads = {}\nprecision = {}\n"
      "device = {}\nwatchdog_s = {}\ncheck_collectives = {}\nnonfinite = {}\nskip_limit = {}\n"
      "check_replicas = {}\nactivation_limit_mb = {}\npeak_tflops = {}\n\n",
      d.run.log_every, d.run.eval_every, toml_string(d.run.output), d.run.blas_threads,
      toml_string(d.run.precision), toml_string(d.run.device), real(d.run.watchdog_s),
      d.run.check_collectives, toml_string(d.run.nonfinite), d.run.skip_limit, d.run.check_replicas,
      real(d.run.activation_limit_mb), real(d.run.peak_tflops));
  o += fmt::format(
      "[parallel]\ntrainers = {}\ndata = {}\ntensor = {}\npipeline = {}\nspatial = [{}]\n"
      "sequence_parallel = {}\nbucket_mb = {}\nreduce = {}\nzero = {}\ndeterministic = {}\n",
      d.parallel.trainers, d.parallel.data, d.parallel.tensor, d.parallel.pipeline,
      fmt::join(d.parallel.spatial, ", "), d.parallel.sequence_parallel, real(d.parallel.bucket_mb),
      toml_string(d.parallel.reduce), d.parallel.zero, d.parallel.deterministic);
  if (d.parallel.deterministic) {
    o += fmt::format("sample_groups = {}\n", d.parallel.sample_groups);
  }
  if (d.parallel.pipeline > 1) {
    o += fmt::format("stages = {}\nschedule = {}\n",
                     d.parallel.stages.empty()
                         ? std::string("\"auto\"")
                         : fmt::format("[{}]", fmt::join(d.parallel.stages, ", ")),
                     toml_string(d.parallel.schedule));
  }
  o += "\n";
  o += fmt::format("[data]\ntrain = {}\n", toml_string(d.data.train));
  if (!d.data.test.empty()) {
    o += fmt::format("test = {}\n", toml_string(d.data.test));
  }
  o += fmt::format(
      "batch = {}\nshuffle = {}\ndrop_last = {}\ncache = {}\nprefetch = {}\nmicro_batches = {}\n\n",
      d.data.batch, d.data.shuffle, d.data.drop_last, d.data.cache, d.data.prefetch,
      d.data.micro_batches);
  o += fmt::format("[model]\ninput = [{}]\n", fmt::join(d.model.input, ", "));
  if (d.model.context > 0) {
    o += fmt::format("context = {}\n", d.model.context);
  }
  o += "layers = [\n";
  for (const nn::LayerSpec& l : d.model.layers) {
    o += "  " + layer_toml(l, "  ") + ",\n";
  }
  o += fmt::format("]\nloss = \"{}\"\n\n", loss_name(d.model.loss));
  const OptimizerConfig& p = d.optimizer;
  o += fmt::format("[optimizer]\ntype = \"{}\"\nlr = {}\n",
                   p.type == OptimizerKind::sgd ? "sgd" : "adamw", real(p.lr));
  if (p.type == OptimizerKind::sgd) {
    o += fmt::format("momentum = {}\nnesterov = {}\n", real(p.momentum), p.nesterov);
  } else {
    o += fmt::format("beta1 = {}\nbeta2 = {}\neps = {}\n", real(p.beta1), real(p.beta2),
                     real(p.eps));
  }
  o += fmt::format("weight_decay = {}\nclip_grad_norm = {}\n", real(p.weight_decay),
                   real(p.clip_grad_norm));
  o += fmt::format("schedule = {{ type = \"{}\", warmup_steps = {}",
                   optim::schedule_name(p.schedule.kind), p.schedule.warmup_steps);
  if (p.schedule.kind == optim::ScheduleKind::step) {
    o += fmt::format(", step_size = {}, gamma = {}", p.schedule.step_size, real(p.schedule.gamma));
  }
  if (p.schedule.kind == optim::ScheduleKind::cosine) {
    o += fmt::format(", min_lr = {}", real(p.schedule.min_lr));
  }
  o += " }\n";
  if (d.checkpoint.enabled) {
    const CheckpointConfig& c = d.checkpoint;
    o += fmt::format(
        "\n[checkpoint]\ndir = {}\nevery_steps = {}\nevery_seconds = {}\nkeep = {}\nat_end = {}\n"
        "at_start = {}\nrestart = {}\n",
        toml_string(c.dir), c.every_steps, real(c.every_seconds), c.keep, c.at_end, c.at_start,
        toml_string(c.restart));
  }
  if (d.population.enabled) {
    const PopulationConfig& pop = d.population;
    o += fmt::format(
        "\n[population]\nalgorithm = {}\nevery = {}\ntimeout = {}\nvalidation = {}\n"
        "average_every = {}\ncombine = {}\nrecalibrate = {}\nsignificance = {}\nscore = {}\n"
        "fraction = {}\nperturb = [{}]\nresample = {}\nseed = {}\n",
        toml_string(pop.algorithm), pop.every, real(pop.timeout), toml_string(pop.validation),
        pop.average_every, toml_string(pop.combine), pop.recalibrate, real(pop.significance),
        toml_string(pop.score_average ? "average" : "model"), real(pop.fraction),
        fmt::join(pop.perturb, ", "), real(pop.resample), pop.seed);
    if (!pop.hyper.empty()) {
      o += "\n[population.hyper]\n";
    }
    for (const HyperSpec& h : pop.hyper) {
      std::vector<std::string> xs;
      for (double x :
           h.how == "values" || h.how == "grid" ? h.values : std::vector<double>{h.low, h.high}) {
        xs.push_back(real(x));
      }
      o += fmt::format("{} = {{ {} = [{}] }}\n", toml_string(h.key), h.how, fmt::join(xs, ", "));
    }
  }
  return o;
}

}  // namespace tessera::deck
