// SIGBUS guard for shared file mappings (see mapped_file_guard.h). The handler may run on any
// thread at any time, so the table is a fixed array of atomics: no locks, no allocation.
#include "dualkv/mapped_file_guard.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace dualkv {
namespace {

struct Slot {
  std::atomic<uintptr_t> addr{0};  // published last: 0 = free
  std::atomic<size_t> bytes{0};
  std::atomic<int> fd{-1};
};

// One slot per open bucket: a process opens a handful (three per emulated node).
constexpr int kNumSlots = 256;
Slot g_slots[kNumSlots];
struct sigaction g_previous;
std::mutex g_install_mu;

void chain(int sig, siginfo_t* info, void* ctx) {
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, ctx);
    return;
  }
  if (g_previous.sa_handler == SIG_IGN) return;
  if (g_previous.sa_handler != SIG_DFL) {
    g_previous.sa_handler(sig);
    return;
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(sig, &dfl, nullptr);
  if (info->si_code <= 0) raise(sig);  // sent by a process: deliver it again
  // a fault: returning re-runs the access, which now meets the default action
}

void on_sigbus(int sig, siginfo_t* info, void* ctx) {
  uintptr_t at = reinterpret_cast<uintptr_t>(info->si_addr);
  if (info->si_code > 0) {  // a fault, not a kill(): si_addr is meaningful
    for (Slot& slot : g_slots) {
      uintptr_t base = slot.addr.load(std::memory_order_acquire);
      if (base == 0 || at < base || at >= base + slot.bytes.load()) continue;
      if (ftruncate(slot.fd.load(), off_t(slot.bytes.load())) == 0) return;  // retry it
      break;
    }
  }
  chain(sig, info, ctx);
}

// (Re)installs the handler unless it is the current one: a handler installed after ours
// (Python's faulthandler enabled later) would otherwise see the fault first.
void install() {
  std::lock_guard<std::mutex> lock(g_install_mu);
  struct sigaction current {};
  sigaction(SIGBUS, nullptr, &current);
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == &on_sigbus) return;
  struct sigaction mine {};
  mine.sa_sigaction = &on_sigbus;
  mine.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&mine.sa_mask);
  sigaction(SIGBUS, &mine, &g_previous);
}

}  // namespace

bool guard_mapping(void* addr, size_t bytes, int fd) {
  install();
  for (Slot& slot : g_slots) {
    if (slot.addr.load() != 0 || slot.fd.load() != -1) continue;
    int free_fd = -1;
    if (!slot.fd.compare_exchange_strong(free_fd, fd)) continue;  // claimed by the fd
    slot.bytes.store(bytes);
    slot.addr.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_release);
    return true;
  }
  return false;
}

void unguard_mapping(void* addr) {
  for (Slot& slot : g_slots) {
    if (slot.addr.load() != reinterpret_cast<uintptr_t>(addr)) continue;
    slot.addr.store(0, std::memory_order_release);
    slot.bytes.store(0);
    slot.fd.store(-1);
    return;
  }
}

}  // namespace dualkv
