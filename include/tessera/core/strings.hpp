#pragma once
// Small string helpers for messages users read.
#include <string>
#include <vector>

namespace tessera {

/// Levenshtein distance between a and b.
std::size_t edit_distance(const std::string& a, const std::string& b);
/// The entry of `known` closest to `word` if it is a plausible misspelling (distance at most 2,
/// and less than the word's length), else "".
std::string closest_match(const std::string& word, const std::vector<std::string>& known);
/// "a, b, c".
std::string join(const std::vector<std::string>& items, const std::string& separator = ", ");

/// The length of the valid UTF-8 sequence that starts at `text[i]`, 0 if none does.
std::size_t utf8_length(const std::string& text, std::size_t i);

/// `text` safe to print in a message: control bytes and bytes that are not UTF-8 as \xNN (text read
/// from a file or the command line must not drive the terminal).
std::string printable(const std::string& text);

/// "48 B", "1.5 KiB", "3.25 MiB", "1.00 GiB", "2.50 TiB", "1.91 PiB".
std::string human_bytes(double bytes);

}  // namespace tessera
