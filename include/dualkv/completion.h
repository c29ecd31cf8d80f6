// Completion: the state behind one submit() handle, and HandleTable, the id -> completion map
// that every async verb set (agent, traffic manager) shares: submit -> poll -> wait -> release.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "dualkv/clock.h"
#include "dualkv/status.h"

namespace dualkv {

class Completion {
 public:
  // The first finish wins: a deadline expiry and a late transport callback may both call it.
  bool finish(Status status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return false;
      done_ = true;
      status_ = std::move(status);
    }
    cv_.notify_all();
    return true;
  }

  bool is_done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  // kInProgress while running, else the final status.
  Status poll() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_ ? status_ : make_status(Code::kInProgress, "in progress");
  }

  Status wait(int64_t deadline_ns) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      int64_t left = deadline_ns - now_ns();
      if (left <= 0) return make_status(Code::kTimedOut, "wait passed its deadline; still in flight");
      cv_.wait_for(lock, std::chrono::nanoseconds(left));
    }
    return status_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Status status_;
};

class HandleTable {
 public:
  uint64_t add(std::shared_ptr<Completion> completion) {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t id = next_id_++;
    table_[id] = std::move(completion);
    return id;
  }

  std::shared_ptr<Completion> find(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = table_.find(id);
    return it == table_.end() ? nullptr : it->second;
  }

  bool erase(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    return table_.erase(id) > 0;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return table_.size();
  }

  Status poll(uint64_t id) {
    auto c = find(id);
    return c ? c->poll() : unknown(id);
  }

  Status wait(uint64_t id, int64_t deadline_ns) {
    auto c = find(id);
    return c ? c->wait(deadline_ns) : unknown(id);
  }

 private:
  static Status unknown(uint64_t id) {
    return make_status(Code::kNotFound, "unknown or released handle " + std::to_string(id));
  }
  std::mutex mu_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<Completion>> table_;
};

}  // namespace dualkv
