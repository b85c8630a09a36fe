#pragma once
// BlockAllocator: the blocks of a paged pool handed to sequences. A free list, one block
// table row per sequence slot grown as its tokens grow, and free_sequence to give a slot's
// blocks back. Growing is all or nothing: where the pool cannot hold what a batch needs,
// nothing is allocated and the error says how many blocks were needed and free. Host
// memory; a KVCache copies the tables to the device when they change.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"

namespace ekv {

class BlockAllocator {
 public:
  BlockAllocator() = default;
  // num_blocks in the pool, max_sequences slots, at most max_blocks_per_seq blocks each.
  BlockAllocator(int num_blocks, int max_sequences, int max_blocks_per_seq, int block_len)
      : num_blocks_(num_blocks), max_sequences_(max_sequences), max_blocks_(max_blocks_per_seq), block_len_(block_len) {
    if (num_blocks < 1 || max_sequences < 1 || max_blocks_per_seq < 1 || block_len < 1) {
      throw Error("BlockAllocator: num_blocks=" + std::to_string(num_blocks) + ", max_sequences=" +
                  std::to_string(max_sequences) + ", max_blocks_per_seq=" + std::to_string(max_blocks_per_seq) +
                  " and block_len=" + std::to_string(block_len) + " must all be at least 1");
    }
    tables_.assign(static_cast<std::size_t>(max_sequences) * max_blocks_per_seq, -1);
    lengths_.assign(max_sequences, 0);
    free_.resize(num_blocks);
    // a stack whose top is block 0: blocks are handed out lowest first on a fresh pool
    for (int i = 0; i < num_blocks; ++i) free_[i] = num_blocks - 1 - i;
  }

  // Sets the token counts of sequences [0, new_lengths.size()) and gives each the blocks
  // it needs; a shorter length keeps its blocks (free_sequence returns them). Throws
  // ekv::Error, changing nothing, for more sequences than slots, a negative length, a
  // length past max_blocks_per_seq x block_len, or a pool without enough free blocks.
  void grow(Span<const std::int32_t> new_lengths) {
    if (new_lengths.size() > static_cast<std::size_t>(max_sequences_)) {
      throw Error("BlockAllocator::grow: " + std::to_string(new_lengths.size()) + " sequences; the cache holds " +
                  std::to_string(max_sequences_) + " (max_batch_size)");
    }
    std::int64_t needed = 0;
    for (std::size_t s = 0; s < new_lengths.size(); ++s) {
      const std::int32_t len = new_lengths[s];
      if (len < 0 || static_cast<std::int64_t>(len) > std::int64_t{max_blocks_} * block_len_) {
        throw Error("BlockAllocator::grow: sequence " + std::to_string(s) + " length " + std::to_string(len) +
                    " not supported; supported: 0 to " + std::to_string(std::int64_t{max_blocks_} * block_len_) +
                    " tokens (" + std::to_string(max_blocks_) + " blocks of " + std::to_string(block_len_) + ")");
      }
      needed += std::max(0, sequence_blocks(len, block_len_) - blocks_of(static_cast<int>(s)));
    }
    if (needed > static_cast<std::int64_t>(free_.size())) {
      throw Error("BlockAllocator::grow: the pool is full: the batch needs " + std::to_string(needed) +
                  " more blocks, " + std::to_string(free_.size()) + " of " + std::to_string(num_blocks_) +
                  " are free (free_sequence returns a sequence's blocks; max_block_num sizes the pool)");
    }
    for (std::size_t s = 0; s < new_lengths.size(); ++s) {
      const int seq = static_cast<int>(s);
      for (int b = blocks_of(seq); b < sequence_blocks(new_lengths[s], block_len_); ++b) {
        tables_[row(seq) + b] = free_.back();
        free_.pop_back();
      }
      lengths_[s] = std::max(lengths_[s], new_lengths[s]);
    }
  }

  // Returns the slot's blocks to the pool; its length becomes 0.
  void free_sequence(int seq) {
    check_seq(seq, "free_sequence");
    for (int b = blocks_of(seq) - 1; b >= 0; --b) {
      free_.push_back(tables_[row(seq) + b]);
      tables_[row(seq) + b] = -1;
    }
    lengths_[seq] = 0;
  }

  // Blocks a sequence holds (by its length).
  int blocks_of(int seq) const { return sequence_blocks(lengths_[seq], block_len_); }
  // The pool block of logical block `block` of `seq`; throws past the sequence's blocks.
  std::int32_t block_id(int seq, int block) const {
    check_seq(seq, "block_id");
    if (block < 0 || block >= blocks_of(seq)) {
      throw Error("BlockAllocator::block_id: block " + std::to_string(block) + " of sequence " + std::to_string(seq) +
                  " not held; it holds " + std::to_string(blocks_of(seq)));
    }
    return tables_[row(seq) + block];
  }

  // int32 [max_sequences][max_blocks_per_seq]: pool block ids, -1 where none is held.
  const std::vector<std::int32_t>& tables() const { return tables_; }
  // int32 [max_sequences]: tokens of each slot.
  const std::vector<std::int32_t>& lengths() const { return lengths_; }
  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int used_blocks() const { return num_blocks_ - free_blocks(); }
  int max_sequences() const { return max_sequences_; }
  int max_blocks_per_seq() const { return max_blocks_; }
  int block_len() const { return block_len_; }

  // The free list as it stands (top last): with tables and lengths, the whole state, for
  // a cache file; restore() takes it back after checking it.
  const std::vector<std::int32_t>& free_list() const { return free_; }
  // Replaces the state with tables, lengths and a free list that must describe this pool:
  // every block exactly once, in a table (within its sequence's blocks) or free. Throws
  // ekv::Error, changing nothing, otherwise.
  void restore(std::vector<std::int32_t> tables, std::vector<std::int32_t> lengths, std::vector<std::int32_t> free) {
    if (tables.size() != tables_.size() || lengths.size() != lengths_.size()) {
      throw Error("BlockAllocator::restore: tables or lengths of the wrong size");
    }
    std::vector<char> seen(num_blocks_, 0);
    const auto take = [&](std::int32_t id, const char* where) {
      if (id < 0 || id >= num_blocks_ || seen[id]) {
        throw Error(std::string("BlockAllocator::restore: ") + where + " holds block " + std::to_string(id) +
                    ", out of range or held twice");
      }
      seen[id] = 1;
    };
    for (int s = 0; s < max_sequences_; ++s) {
      if (lengths[s] < 0 || static_cast<std::int64_t>(lengths[s]) > std::int64_t{max_blocks_} * block_len_) {
        throw Error("BlockAllocator::restore: sequence " + std::to_string(s) + " length " + std::to_string(lengths[s]) +
                    " out of range");
      }
      const int held = sequence_blocks(lengths[s], block_len_);
      for (int b = 0; b < max_blocks_; ++b) {
        const std::int32_t id = tables[static_cast<std::size_t>(s) * max_blocks_ + b];
        if (b < held) take(id, "a block table");
        else if (id != -1) throw Error("BlockAllocator::restore: a table entry past its sequence's blocks is not -1");
      }
    }
    for (std::int32_t id : free) take(id, "the free list");
    if (std::count(seen.begin(), seen.end(), 1) != num_blocks_) {
      throw Error("BlockAllocator::restore: some blocks are neither held nor free");
    }
    tables_ = std::move(tables);
    lengths_ = std::move(lengths);
    free_ = std::move(free);
  }

 private:
  std::size_t row(int seq) const { return static_cast<std::size_t>(seq) * max_blocks_; }
  void check_seq(int seq, const char* what) const {
    if (seq < 0 || seq >= max_sequences_) {
      throw Error(std::string("BlockAllocator::") + what + ": sequence " + std::to_string(seq) +
                  " not supported; supported: 0 to " + std::to_string(max_sequences_ - 1));
    }
  }

  int num_blocks_ = 0, max_sequences_ = 0, max_blocks_ = 0, block_len_ = 1;
  std::vector<std::int32_t> tables_, lengths_, free_;
};

}  // namespace ekv
