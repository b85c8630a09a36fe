#pragma once
// TierTable: where each block of a two-tier cache lives, and the moves between the tiers.
// Host code; TieredKVCache (cpu/tiered_cache.cuh) runs the copies it plans.
//
// The host pool is every block's home: block i of sequence b is host block
// b x max_blocks_per_seq + i, and holds the block once it has been written there (a
// prefilled block at once, an appended block when it fills and is copied back). The GPU
// pool holds copies of at most gpu_slots blocks, one per slot. A block is *resident* when
// its GPU copy is whole and current; a step attends a resident block on the GPU and any
// other on the host (or copies it in), so a step sees either home, never a half-copied one:
//   host only --plan_promotions--> moving --complete--> resident --(victim)--> host only
// A block being appended to lives on the GPU only (resident, its host copy not yet valid);
// each sequence's sinks and window (TierPolicy) are placed first and never demoted, so its
// partial last block is always resident.
//
// Ordering the copies is the caller's part: a promotion's copy into a slot must run after
// every step that may still read the slot's last block (the steps enqueued before
// plan_promotions returned), and complete() only after the copy has finished, or at once
// where the copy is ordered before every later read of the slot (one stream: a step that
// copies a block in for itself promotes it so, TieredKVCache's in-step promotions).

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cache/placement.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/span.hpp"

namespace ekv {

// How blocks move. Promotion: a host-only block the step selected gets a GPU slot (a free
// one, else the slot of the resident block selected least recently), at most
// max_moves_per_step a step. A resident block is a victim only when it is not pinned,
// its host copy is valid and no step selected it in its last min_idle_steps steps.
struct TierPolicy {
  int sink_blocks = 1;         // each sequence's first blocks stay on the GPU
  int window_blocks = 4;       // and its newest (at least 1: the block appends write)
  int max_moves_per_step = 32;  // promotions started per step (each a block's K and V)
  int min_idle_steps = 4;      // steps a resident block must go unselected to be demoted

  Support validate() const {
    if (sink_blocks < 0 || window_blocks < 1 || max_moves_per_step < 0 || min_idle_steps < 1) {
      return {false, "TierPolicy: needs sink_blocks >= 0, window_blocks >= 1, max_moves_per_step >= 0 and "
                         "min_idle_steps >= 1, got sink_blocks=" + std::to_string(sink_blocks) + ", window_blocks=" +
                         std::to_string(window_blocks) + ", max_moves_per_step=" + std::to_string(max_moves_per_step) +
                         ", min_idle_steps=" + std::to_string(min_idle_steps)};
    }
    return {};
  }
};

// A block of a sequence.
struct BlockRef {
  int seq = 0;
  int block = 0;
};

// A promotion: block (seq, block) copied from its host block into GPU slot `slot`. The
// slot was free (victim.seq < 0) or held victim, which is host only from now on.
struct TierMove {
  BlockRef block;
  int slot = 0;
  BlockRef victim{-1, -1};
};

// A block given a GPU slot without a copy from the host: a new block appends start.
struct TierSlot {
  BlockRef block;
  int slot = 0;
};

class TierTable {
 public:
  enum class State : std::uint8_t { kHostOnly, kMoving, kResident };

  // Throws ekv::Error for batch < 0, max_blocks_per_seq < 1, gpu_slots < 0 or a policy
  // validate() refuses.
  TierTable(int batch, int max_blocks_per_seq, int gpu_slots, const TierPolicy& policy)
      : batch_(batch), max_blocks_(max_blocks_per_seq), policy_(policy) {
    if (Support s = policy.validate(); !s) throw Error("TierTable: " + s.why);
    if (batch < 0 || max_blocks_per_seq < 1 || gpu_slots < 0) {
      throw Error("TierTable: needs batch >= 0, max_blocks_per_seq >= 1 and gpu_slots >= 0, got batch=" +
                  std::to_string(batch) + ", max_blocks_per_seq=" + std::to_string(max_blocks_per_seq) +
                  ", gpu_slots=" + std::to_string(gpu_slots));
    }
    const std::size_t blocks = static_cast<std::size_t>(batch) * max_blocks_per_seq;
    entries_.assign(blocks, Entry{});
    lengths_.assign(batch, 0);
    owner_.assign(gpu_slots, -1);
    slot_last_.assign(gpu_slots, kNever);
    for (int s = gpu_slots - 1; s >= 0; --s) free_.push_back(s);
  }

  int batch() const { return batch_; }
  int max_blocks_per_seq() const { return max_blocks_; }
  int gpu_slots() const { return static_cast<int>(owner_.size()); }
  int free_slots() const { return static_cast<int>(free_.size()); }
  const TierPolicy& policy() const { return policy_; }
  int length(int seq) const { return lengths_[check_seq(seq)]; }
  int blocks(int seq) const { return sequence_blocks(length(seq), block_len_); }
  int block_len() const { return block_len_; }

  // The host block of (seq, block): its home.
  std::int32_t host_block(int seq, int block) const { return static_cast<std::int32_t>(at(seq, block)); }
  // The GPU slot of a resident block; -1 for any other.
  int gpu_slot(int seq, int block) const {
    const std::size_t i = at(seq, block);
    return entries_[i].state == State::kResident ? entries_[i].slot : -1;
  }
  State state(int seq, int block) const { return entries_[at(seq, block)].state; }
  bool host_valid(int seq, int block) const { return entries_[at(seq, block)].host_valid != 0; }
  // Sinks and window at the sequence's current length.
  bool pinned(int seq, int block) const {
    return block < policy_.sink_blocks || block >= blocks(seq) - policy_.window_blocks;
  }
  int resident_blocks() const { return gpu_slots() - free_slots() - moving_; }

  // The first placement, after a prefill written to the host pool (every block's host copy
  // valid): place_blocks with the policy's sinks and window and the slots' budget, scores
  // as there (null: newest first). Returns the blocks now resident and their slots, whose
  // copies the caller makes before the first step. Throws ekv::Error once any length was set.
  std::vector<TierSlot> place(Span<const std::int32_t> lengths, int block_len, const float* scores = nullptr) {
    if (placed_) throw Error("TierTable::place: the table is placed already");
    if (static_cast<int>(lengths.size()) != batch_ || block_len < 1) {
      throw Error("TierTable::place: needs " + std::to_string(batch_) + " lengths and block_len >= 1, got " +
                  std::to_string(lengths.size()) + " and " + std::to_string(block_len));
    }
    for (int b = 0; b < batch_; ++b) {
      if (lengths[b] < 0 || std::int64_t{lengths[b]} > std::int64_t{block_len} * max_blocks_) {
        throw Error("TierTable::place: sequence " + std::to_string(b) + " has length " + std::to_string(lengths[b]) +
                    ", outside 0 .. " + std::to_string(std::int64_t{block_len} * max_blocks_));
      }
    }
    block_len_ = block_len;
    placed_ = true;
    const Placement placement = place_blocks({policy_.sink_blocks, policy_.window_blocks}, lengths, block_len,
                                             max_blocks_, 1, owner_.size(), scores);
    std::vector<TierSlot> out;
    for (int b = 0; b < batch_; ++b) {
      lengths_[b] = lengths[b];
      for (int i = 0; i < blocks(b); ++i) {
        const std::size_t g = at(b, i);
        entries_[g].host_valid = 1;
        if (placement.locations[g] != BlockLocation::kGpu) continue;
        out.push_back({{b, i}, take_free(g)});
        entries_[g].state = State::kResident;
      }
    }
    check_window_resident("TierTable::place");
    return out;
  }

  // Sequence seq grows by `tokens` (appends, on the GPU): each new block gets a slot, a
  // free one or a victim's, and is resident at once (its host copy invalid until
  // mark_written). `filled` receives the blocks this append filled, whose host copies the
  // caller writes and then marks. Returns the new blocks' slots. Throws ekv::Error, having
  // changed nothing, past max_blocks_per_seq or when no slot can be had (every slot holds a
  // pinned, unwritten or recently selected block: the budget is too small).
  std::vector<TierSlot> append(int seq, int tokens, std::int64_t step, std::vector<BlockRef>* filled = nullptr) {
    check_seq(seq);
    std::vector<int> grow(batch_, 0);
    grow[seq] = tokens;
    return append(grow, step, filled);
  }

  // Every sequence b grows by tokens[b] at once, all or nothing: throws ekv::Error, having
  // changed nothing, where any sequence would pass its capacity or the new blocks together
  // cannot have slots. Returns the new blocks' slots, sequence by sequence.
  std::vector<TierSlot> append(Span<const int> tokens, std::int64_t step, std::vector<BlockRef>* filled = nullptr) {
    if (!placed_) throw Error("TierTable::append: place() first");
    if (static_cast<int>(tokens.size()) != batch_) {
      throw Error("TierTable::append: needs " + std::to_string(batch_) + " token counts, got " +
                  std::to_string(tokens.size()));
    }
    std::vector<int> grown(batch_);
    int need = 0, first_seq = -1;
    for (int b = 0; b < batch_; ++b) {
      const int old_len = lengths_[b];
      if (tokens[b] < 0 || std::int64_t{old_len} + tokens[b] > std::int64_t{block_len_} * max_blocks_) {
        throw Error("TierTable::append: sequence " + std::to_string(b) + " of " + std::to_string(old_len) +
                    " tokens cannot take " + std::to_string(tokens[b]) + " more (capacity " +
                    std::to_string(std::int64_t{block_len_} * max_blocks_) + ")");
      }
      grown[b] = sequence_blocks(old_len + tokens[b], block_len_);
      const int more = grown[b] - blocks(b);
      if (more > 0 && first_seq < 0) first_seq = b;
      need += more;
    }
    // victims first (judged at the grown lengths), so a failure changes nothing
    std::vector<int> victims = pick_victims(need - free_slots(), step, &grown);
    if (static_cast<int>(victims.size()) + free_slots() < need) {
      throw Error("TierTable::append: no GPU slot for sequence " + std::to_string(first_seq) + "'s block " +
                  std::to_string(blocks(first_seq)) + ": all " + std::to_string(gpu_slots()) +
                  " slots hold pinned, unwritten or recently selected blocks; raise the GPU budget");
    }
    for (int victim : victims) free_slot(victim);
    std::vector<TierSlot> out;
    for (int b = 0; b < batch_; ++b) grow_one(b, tokens[b], step, out, filled);
    return out;
  }

  // The host copy of a full block has been written (after append's `filled`).
  void mark_written(BlockRef b) { entries_[at(b.seq, b.block)].host_valid = 1; }

  // Step `step` attended (seq, block): its recency, for the choice of victims. Returns its
  // GPU slot where resident (gpu_slot), -1 otherwise.
  int note_selected(BlockRef b, std::int64_t step) {
    const std::size_t g = at(b.seq, b.block);
    std::int64_t& last = entries_[g].last;
    last = std::max(last, step);
    const int s = entries_[g].slot;
    if (s >= 0) slot_last_[s] = last;
    return entries_[g].state == State::kResident ? s : -1;
  }

  // After step `step`, which attended the host-only blocks `wanted` (each once, in the
  // order to promote): starts up to max_moves_per_step promotions (or `limit`, where given),
  // taking free slots, then victims coldest first (see TierPolicy). A victim is host only on
  // return. Blocks not host only are skipped. Every block step `step` selected must have been
  // noted (note_selected) before, so that none of them is a victim.
  std::vector<TierMove> plan_promotions(Span<const BlockRef> wanted, std::int64_t step, int limit = -1) {
    if (limit < 0) limit = policy_.max_moves_per_step;
    std::vector<BlockRef> todo;
    for (const BlockRef& b : wanted) {
      if (static_cast<int>(todo.size()) == limit) break;
      const Entry& e = entries_[at(b.seq, b.block)];
      if (e.state == State::kHostOnly && e.host_valid) todo.push_back(b);
    }
    const int need = static_cast<int>(todo.size()) - free_slots();
    std::vector<int> victims = pick_victims(need, step, nullptr);
    std::vector<TierMove> moves;
    std::size_t v = 0;
    for (const BlockRef& b : todo) {
      TierMove move;
      move.block = b;
      if (free_.empty()) {
        if (v == victims.size()) break;
        const int slot = victims[v++];
        const std::int64_t g = owner_[slot];
        move.victim = {static_cast<int>(g / max_blocks_), static_cast<int>(g % max_blocks_)};
        free_slot(slot);
      }
      const std::size_t g = at(b.seq, b.block);
      move.slot = take_free(g);
      entries_[g].state = State::kMoving;
      ++moving_;
      moves.push_back(move);
    }
    return moves;
  }

  // The copy of `move` has finished: its block is resident.
  void complete(const TierMove& move) {
    const std::size_t g = at(move.block.seq, move.block.block);
    if (entries_[g].state != State::kMoving || entries_[g].slot != move.slot) {
      throw Error("TierTable::complete: sequence " + std::to_string(move.block.seq) + "'s block " +
                  std::to_string(move.block.block) + " is not moving into slot " + std::to_string(move.slot));
    }
    entries_[g].state = State::kResident;
    --moving_;
  }

  // Checks the bookkeeping: every slot's owner points back to it, free slots are unowned,
  // pinned blocks of every sequence are resident. Throws ekv::Error naming the first fault.
  void check() const {
    std::vector<int> seen(owner_.size(), 0);
    for (int s : free_) {
      if (owner_[s] != -1) throw Error("TierTable::check: free slot " + std::to_string(s) + " has an owner");
      ++seen[s];
    }
    for (std::size_t s = 0; s < owner_.size(); ++s) {
      if (owner_[s] >= 0) {
        const std::int64_t g = owner_[s];
        if (entries_[g].slot != static_cast<int>(s) || entries_[g].state == State::kHostOnly) {
          throw Error("TierTable::check: slot " + std::to_string(s) + "'s owner does not hold it");
        }
        if (slot_last_[s] != entries_[g].last) {
          throw Error("TierTable::check: slot " + std::to_string(s) + "'s recency is not its owner's");
        }
        ++seen[s];
      }
      if (seen[s] != 1) throw Error("TierTable::check: slot " + std::to_string(s) + " is free and owned, or neither");
    }
    for (std::size_t g = 0; g < entries_.size(); ++g) {
      if (entries_[g].state == State::kHostOnly && entries_[g].slot != -1) {
        throw Error("TierTable::check: host-only block " + std::to_string(g) + " keeps a slot");
      }
      if (entries_[g].state != State::kResident && !entries_[g].host_valid &&
          static_cast<int>(g % max_blocks_) < blocks(static_cast<int>(g / max_blocks_))) {
        throw Error("TierTable::check: block " + std::to_string(g) + " is valid in neither tier");
      }
    }
    check_window_resident("TierTable::check");
  }

 private:
  static constexpr std::int64_t kNever = -(std::int64_t{1} << 62);

  // The checks inline; their throws do not (at() runs once per selected block a step).
  [[noreturn]] __attribute__((noinline, cold)) static void outside(const char* what, int value, int last) {
    throw Error(std::string("TierTable: ") + what + " " + std::to_string(value) + " outside 0 .. " +
                std::to_string(last));
  }
  int check_seq(int seq) const {
    if (seq < 0 || seq >= batch_) outside("sequence", seq, batch_ - 1);
    return seq;
  }
  std::size_t at(int seq, int block) const {
    check_seq(seq);
    if (block < 0 || block >= max_blocks_) outside("block", block, max_blocks_ - 1);
    return static_cast<std::size_t>(seq) * max_blocks_ + block;
  }
  int take_free(std::size_t g) {
    const int s = free_.back();
    free_.pop_back();
    owner_[s] = static_cast<std::int64_t>(g);
    entries_[g].slot = s;
    slot_last_[s] = entries_[g].last;
    return s;
  }
  void free_slot(int s) {
    const std::int64_t g = owner_[s];
    entries_[g].state = State::kHostOnly;
    entries_[g].slot = -1;
    owner_[s] = -1;
    free_.push_back(s);
  }
  // Sequence seq grows by tokens, its new blocks taking free slots (there are enough).
  void grow_one(int seq, int tokens, std::int64_t step, std::vector<TierSlot>& out, std::vector<BlockRef>* filled) {
    const int old_len = lengths_[seq], new_len = old_len + tokens;
    const int first_new = sequence_blocks(old_len, block_len_), last_new = sequence_blocks(new_len, block_len_);
    lengths_[seq] = new_len;
    if (tokens > 0 && old_len % block_len_ != 0) entries_[at(seq, old_len / block_len_)].host_valid = 0;  // stale now
    for (int i = first_new; i < last_new; ++i) {
      const std::size_t g = at(seq, i);
      entries_[g].last = step;
      out.push_back({{seq, i}, take_free(g)});
      entries_[g].state = State::kResident;
      entries_[g].host_valid = 0;
    }
    if (filled != nullptr) {
      for (int i = old_len / block_len_; i < new_len / block_len_; ++i) filled->push_back({seq, i});
    }
  }
  // Up to n slots of demotable resident blocks, coldest first (then lower block id).
  // grown: each sequence's block count about to be (appends), whose windows are judged at
  // it; null: the current lengths.
  std::vector<int> pick_victims(int n, std::int64_t step, const std::vector<int>* grown) const {
    if (n <= 0) return {};
    std::vector<int> seq_blocks(static_cast<std::size_t>(batch_));
    for (int b = 0; b < batch_; ++b) seq_blocks[b] = grown != nullptr ? (*grown)[b] : blocks(b);
    std::vector<std::pair<std::int64_t, int>>& cold = cold_;  // kept: no allocation per call
    cold.clear();
    const std::int64_t idle_since = step - policy_.min_idle_steps;
    for (std::size_t s = 0; s < owner_.size(); ++s) {  // slot order: the recent ones cost no block lookup
      if (slot_last_[s] > idle_since) continue;
      const std::int64_t g = owner_[s];
      if (g < 0 || entries_[g].state != State::kResident || !entries_[g].host_valid) continue;
      const int block = static_cast<int>(g % max_blocks_);
      if (block < policy_.sink_blocks || block >= seq_blocks[g / max_blocks_] - policy_.window_blocks) continue;
      cold.push_back({slot_last_[s], static_cast<int>(s)});
    }
    // the k coldest in order (the pairs are distinct: nth_element, then sort the front)
    const std::size_t k = std::min<std::size_t>(cold.size(), static_cast<std::size_t>(n));
    const auto front = cold.begin() + static_cast<std::ptrdiff_t>(k);
    if (k < cold.size()) std::nth_element(cold.begin(), front, cold.end());
    std::sort(cold.begin(), front);
    std::vector<int> out;
    out.reserve(k);
    for (std::size_t i = 0; i < k; ++i) out.push_back(cold[i].second);
    return out;
  }
  void check_window_resident(const char* what) const {
    for (int b = 0; b < batch_; ++b) {
      const int n = blocks(b);
      if (n > 0 && entries_[at(b, n - 1)].state != State::kResident) {
        throw Error(std::string(what) + ": sequence " + std::to_string(b) + "'s last block is not on the GPU; the "
                    "GPU budget of " + std::to_string(gpu_slots()) + " blocks is below the sinks and windows");
      }
    }
  }

  int batch_ = 0;
  int max_blocks_ = 1;
  int block_len_ = 1;
  bool placed_ = false;
  int moving_ = 0;
  TierPolicy policy_;
  // A block's state, GPU slot (-1: none), host copy's validity and last selection, together:
  // a step's bookkeeping touches one cache line per block it selected.
  struct Entry {
    std::int64_t last = kNever;
    std::int32_t slot = -1;
    State state = State::kHostOnly;
    std::uint8_t host_valid = 0;
  };
  std::vector<Entry> entries_;
  std::vector<int> lengths_;
  std::vector<std::int64_t> owner_;  // slot -> block (seq x max_blocks_per_seq + block), -1 free
  std::vector<std::int64_t> slot_last_;  // slot -> its owner's last selection (stale for a free slot)
  std::vector<int> free_;
  mutable std::vector<std::pair<std::int64_t, int>> cold_;  // pick_victims' scratch
};

}  // namespace ekv
