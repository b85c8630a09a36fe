#pragma once
// ekv's version; CMake reads the project version from this line.

namespace ekv {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace ekv
