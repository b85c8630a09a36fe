#include <doctest/doctest.h>

#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/error.hpp"

TEST_CASE("Error carries the message, CUDA code, expression and location") {
  const ekv::Error e("DeviceBuffer: cannot allocate 8 bytes", cudaErrorMemoryAllocation, "cudaMalloc(&p, 8)",
                     "buffer.hpp", 42);
  CHECK(e.message() == "DeviceBuffer: cannot allocate 8 bytes");
  CHECK(e.code() == cudaErrorMemoryAllocation);
  CHECK(e.expression() == "cudaMalloc(&p, 8)");
  CHECK(e.file() == "buffer.hpp");
  CHECK(e.line() == 42);
  const std::string what = e.what();
  CHECK(what.rfind("DeviceBuffer: cannot allocate 8 bytes [cudaErrorMemoryAllocation: ", 0) == 0);
  CHECK(what.find("in `cudaMalloc(&p, 8)` at buffer.hpp:42") != std::string::npos);
}

TEST_CASE("Error without a CUDA failure is only its sentence") {
  const ekv::Error e("head_dim=96 not supported by decode; supported: [64, 128, 256]");
  CHECK(std::string(e.what()) == "head_dim=96 not supported by decode; supported: [64, 128, 256]");
  CHECK(e.code() == cudaSuccess);
  CHECK(e.expression().empty());
}

TEST_CASE("EKV_CUDA_CHECK throws on failure with the call and its location") {
  CHECK_NOTHROW(EKV_CUDA_CHECK(cudaSuccess));
  const int line = __LINE__ + 2;
  try {
    EKV_CUDA_CHECK(cudaErrorInvalidValue, "Stream::synchronize: work on the stream failed");
    FAIL("no exception");
  } catch (const ekv::Error& e) {
    CHECK(e.code() == cudaErrorInvalidValue);
    CHECK(e.expression() == "cudaErrorInvalidValue");
    CHECK(e.message() == "Stream::synchronize: work on the stream failed");
    CHECK(e.line() == line);
    CHECK(e.file().find("error_test.cpp") != std::string::npos);
  }
  CHECK_THROWS_AS(EKV_CUDA_CHECK(cudaErrorNotReady), ekv::Error);
}

TEST_CASE("device_count never throws and DeviceInfo rejects a missing device") {
  int count = -1;
  CHECK_NOTHROW(count = ekv::device_count());
  CHECK(count >= 0);
  CHECK_THROWS_AS(ekv::DeviceInfo::query(count + 1000), ekv::Error);
}

TEST_CASE("architecture families follow compute capability") {
  CHECK(ekv::arch_family(7, 0) == ekv::ArchFamily::kVolta);
  CHECK(ekv::arch_family(7, 5) == ekv::ArchFamily::kTuring);
  CHECK(ekv::arch_family(8, 0) == ekv::ArchFamily::kAmpere);
  CHECK(ekv::arch_family(8, 6) == ekv::ArchFamily::kAmpere);
  CHECK(ekv::arch_family(8, 9) == ekv::ArchFamily::kAda);
  CHECK(ekv::arch_family(9, 0) == ekv::ArchFamily::kHopper);
  CHECK(ekv::arch_family(10, 0) == ekv::ArchFamily::kBlackwell);
  CHECK(ekv::arch_family(12, 0) == ekv::ArchFamily::kBlackwell);
  CHECK(ekv::arch_family(6, 1) == ekv::ArchFamily::kUnknown);
  CHECK(std::string(ekv::to_string(ekv::ArchFamily::kHopper)) == "Hopper");
}
