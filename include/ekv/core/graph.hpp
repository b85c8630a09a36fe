#pragma once
// Graph: GPU work captured once from a stream and replayed with one launch, which is
// how a decode step of many small kernels avoids paying launch latency each time.

#include <cuda_runtime_api.h>

#include <exception>
#include <utility>

#include "ekv/core/error.hpp"
#include "ekv/core/stream.hpp"

namespace ekv {

class Graph {
 public:
  Graph() = default;

  // Runs issue(stream) under stream capture and instantiates what it enqueued. The
  // stream must not be the legacy default stream. If `issue` throws, the capture is
  // ended and discarded, the stream is usable again, and the exception propagates.
  template <typename Issue>
  static Graph capture(const Stream& stream, Issue&& issue) {
    Graph graph;
    graph.recapture(stream, std::forward<Issue>(issue));
    return graph;
  }

  Graph(const Graph&) = delete;  // two owners would destroy the graph twice
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&& other) noexcept
      : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}
  Graph& operator=(Graph&& other) noexcept {
    if (this != &other) {
      reset();
      graph_ = std::exchange(other.graph_, nullptr);
      exec_ = std::exchange(other.exec_, nullptr);
    }
    return *this;
  }
  ~Graph() { reset(); }

  bool empty() const noexcept { return exec_ == nullptr; }
  cudaGraphExec_t exec() const noexcept { return exec_; }

  void launch(const Stream& stream) const {
    if (exec_ == nullptr) throw Error("Graph::launch: nothing was captured");
    EKV_CUDA_CHECK(cudaGraphLaunch(exec_, stream.get()), "Graph::launch: the graph failed to launch");
  }

  // Captures again (new pointers or launch parameters). The executable graph is updated
  // in place where CUDA allows it (same topology), otherwise instantiated anew.
  template <typename Issue>
  void recapture(const Stream& stream, Issue&& issue) {
    if (stream.get() == nullptr) {
      throw Error("Graph::capture: the legacy default stream cannot be captured; use an ekv::Stream");
    }
    EKV_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal),
                   "Graph::capture: cannot begin stream capture");
    cudaGraph_t captured = nullptr;
    try {
      issue(stream);
    } catch (...) {
      cudaStreamEndCapture(stream.get(), &captured);
      if (captured != nullptr) cudaGraphDestroy(captured);
      cudaGetLastError();
      throw;
    }
    EKV_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &captured),
                   "Graph::capture: capture failed (did the work synchronise or allocate?)");
    adopt(captured);
  }

 private:
  void adopt(cudaGraph_t captured) {
    if (exec_ != nullptr) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(exec_, captured, &info) == cudaSuccess) {
        replace_graph(captured);
        return;
      }
      cudaGetLastError();
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, captured, 0);
    if (status != cudaSuccess) {
      cudaGraphDestroy(captured);
      EKV_CUDA_CHECK(status, "Graph::capture: cannot instantiate the captured graph");
    }
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    exec_ = exec;
    replace_graph(captured);
  }
  void replace_graph(cudaGraph_t captured) noexcept {
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    graph_ = captured;
  }
  void reset() noexcept {
    if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
    if (graph_ != nullptr) cudaGraphDestroy(graph_);
    exec_ = nullptr;
    graph_ = nullptr;
  }

  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace ekv
