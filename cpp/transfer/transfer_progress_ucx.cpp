// The agent's progress thread: it runs commands that need the worker (registration,
// connect), progresses the worker while no notice waiter does, checks deadlines every
// millisecond, and sleeps on the worker's event fd when idle. Every worker call holds
// worker_mu_, so submitting callers and notice waiters use the worker between its turns.
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <sched.h>

#include "dualkv/transfer.h"
#include "transfer_internal.h"

namespace dualkv {

bool Agent::progress_worker() {
  bool busy = false;
  while (ucp_worker_progress(worker_) != 0) busy = true;
  return busy;
}

void Agent::progress_loop() {
  int64_t last_check = 0;
  while (!stop_.load()) {
    bool busy;
    int64_t now;
    {
      std::lock_guard<std::recursive_mutex> lock(worker_mu_);
      busy = drain_commands();
      // A notice waiter is progressing the worker itself: competing with it for the lock (and,
      // on a small machine, for the core) would only delay the notice it waits for.
      if (num_drivers_.load() == 0) busy |= progress_worker();
      now = now_ns();
      if (now - last_check > 1000000) {  // deadlines and orphan cleanup, once a millisecond
        check_deadlines();
        last_check = now;
      }
    }
    if (num_drivers_.load() > 0) {
      wait_for_wake(1);  // a waking thread would preempt the driver: wake rarely
      continue;
    }
    if (busy) {
      last_active_ns_.store(now);
      continue;
    }
    if (now - last_active_ns_.load() < config_.spin_us * 1000) {
      sched_yield();  // a spinning thread must not starve the others on a small machine
      continue;
    }
    sleep_on_worker();
  }
}

// Sleeps up to timeout_ms or until wake(), without arming the worker (a notice waiter is
// progressing it).
void Agent::wait_for_wake(int timeout_ms) {
  sleeping_.store(true);
  bool has_commands;
  {
    std::lock_guard<std::mutex> lock(cmd_mu_);
    has_commands = !commands_.empty();
  }
  if (!has_commands) {
    pollfd pfd{wake_fd_, POLLIN, 0};
    poll(&pfd, 1, timeout_ms);
  }
  sleeping_.store(false);
  uint64_t value;
  while (read(wake_fd_, &value, sizeof(value)) > 0) {
  }
}

void Agent::sleep_on_worker() {
  sleeping_.store(true);
  {
    std::lock_guard<std::mutex> lock(cmd_mu_);
    if (!commands_.empty()) {
      sleeping_.store(false);
      return;
    }
  }
  ucs_status_t armed;
  {
    std::lock_guard<std::recursive_mutex> lock(worker_mu_);
    armed = ucp_worker_arm(worker_);
  }
  if (armed == UCS_OK) {
    epoll_event events[2];
    epoll_wait(epoll_fd_, events, 2, 5);  // wakes at least every 5 ms for deadline checks
  }
  sleeping_.store(false);
  uint64_t value;
  while (read(wake_fd_, &value, sizeof(value)) > 0) {
  }
}

void Agent::wake() {
  last_active_ns_.store(now_ns());
  if (sleeping_.load()) {
    uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof(one));
    (void)ignored;
  }
}

void Agent::run_later(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(cmd_mu_);
    commands_.push_back(std::move(fn));
  }
  wake();
}

bool Agent::drain_commands() {
  std::deque<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(cmd_mu_);
    batch.swap(commands_);
  }
  for (auto& fn : batch) fn();
  return !batch.empty();
}

Status Agent::run_sync(std::function<Status()> fn, int64_t deadline_ns) {
  if (closed_ || !thread_.joinable()) return make_status(Code::kUnavailable, "agent is closed");
  auto done = std::make_shared<Completion>();
  run_later([done, fn = std::move(fn)] { done->finish(fn()); });
  return done->wait(deadline_ns);
}

}  // namespace dualkv
