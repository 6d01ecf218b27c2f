#pragma once
// Check macros that throw tessera::Error with a formatted message (fmt).
#include "tessera/core/error.hpp"

#include <fmt/format.h>

#include <string>

/// TESSERA_CHECK(cond, "fmt {}", args...): throw tessera::Error with the formatted message when
/// `cond` is false. The message is for the user; file:line and the condition are appended for us.
#define TESSERA_CHECK(cond, ...)                                          \
  do {                                                                    \
    if (!(cond)) {                                                        \
      ::tessera::detail::throw_check_failure(__FILE__, __LINE__, #cond,   \
                                             ::fmt::format(__VA_ARGS__)); \
    }                                                                     \
  } while (false)

/// TESSERA_THROW("fmt {}", args...): throw tessera::Error with the formatted message.
#define TESSERA_THROW(...) throw ::tessera::Error(::fmt::format(__VA_ARGS__))
