#pragma once
// ekv::Error and EKV_CUDA_CHECK: the one way host code reports failure.

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace ekv {

// What every host API throws. A failure that is not a CUDA call's (bad arguments, an
// unsupported shape) has code() == cudaSuccess and an empty expression().
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, cudaError_t code = cudaSuccess,
                 std::string expression = {}, std::string file = {}, int line = 0)
      : std::runtime_error(format(message, code, expression, file, line)),
        message_(message),
        code_(code),
        expression_(std::move(expression)),
        file_(std::move(file)),
        line_(line) {}

  // The sentence for the user, without the CUDA details that what() appends.
  const std::string& message() const noexcept { return message_; }
  cudaError_t code() const noexcept { return code_; }
  const std::string& expression() const noexcept { return expression_; }
  const std::string& file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

 private:
  static std::string format(const std::string& message, cudaError_t code,
                            const std::string& expression, const std::string& file, int line) {
    std::string text = message;
    if (code != cudaSuccess) {
      text += std::string(" [") + cudaGetErrorName(code) + ": " + cudaGetErrorString(code) + "]";
    }
    if (!expression.empty()) text += " in `" + expression + "`";
    if (!file.empty()) text += " at " + file + ":" + std::to_string(line);
    return text;
  }

  std::string message_;
  cudaError_t code_;
  std::string expression_;
  std::string file_;
  int line_;
};

namespace detail {

[[noreturn]] inline void throw_cuda(cudaError_t code, const char* expression, const char* file, int line,
                                   const std::string& context = {}) {
  // A failed call leaves a non-sticky error behind; clear it so the next check
  // reports its own call, not this one.
  cudaGetLastError();
  throw Error(context.empty() ? std::string("CUDA call failed") : context, code, expression, file,
              line);
}

}  // namespace detail
}  // namespace ekv

// Throws ekv::Error naming the call, its CUDA error and file:line. An optional second
// argument is the sentence a user reads first, e.g. which object failed and why; it is
// evaluated only on failure, so checks on a decode step's path build no strings.
#define EKV_CUDA_CHECK(expr, ...)                                                         \
  [&](cudaError_t ekv_status_) {                                                           \
    if (ekv_status_ != cudaSuccess) {                                                      \
      ::ekv::detail::throw_cuda(ekv_status_, #expr, __FILE__, __LINE__, ##__VA_ARGS__);   \
    }                                                                                      \
  }(expr)
