// README's first snippet (a stream, a buffer, a fill and a graph), as written, then the
// buffer read back: the graph's fill of 2 came after the direct fill of 1.
// @README-INCLUDES@

#include <doctest/doctest.h>

#include <algorithm>
#include <vector>

TEST_CASE("README: a stream-ordered buffer filled directly, then by a captured graph") {
  // @README graph@
  std::vector<float> host(buffer.size(), -1.0f);
  buffer.copy_to(host, stream);
  stream.synchronize();
  CHECK(std::count(host.begin(), host.end(), 2.0f) == static_cast<std::ptrdiff_t>(host.size()));
}
