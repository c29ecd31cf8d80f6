// Agent: one UCP context + worker per traffic class of an engine process, with a native
// progress thread. Callers register memory once, connect to peers from their worker address
// and packed rkeys, and submit descriptor batches. The worker is serialized by `worker_mu_`:
// a submitting thread posts its puts/gets and the notice itself (over shared memory they
// complete inline, no thread hand-off), a thread waiting for a notice progresses the worker
// itself for `spin_us`, and the progress thread completes everything else, so Python never
// polls.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "dualkv/completion.h"
#include "dualkv/rma.h"

namespace dualkv {

struct AgentConfig {
  std::string name = "dualkv";
  // UCX settings applied with ucp_config_modify (e.g. {"TLS","tcp"}, {"IB_SL","1"}); Python
  // builds them from TransferConfig, C++ never reads the environment.
  std::vector<std::pair<std::string, std::string>> ucx_options;
  double op_timeout_s = 30.0;  // a batch unfinished after this fails its peer (TimedOut)
  // Busy-poll this long (the progress thread after activity, a notice waiter before it sleeps
  // on the condition variable) instead of paying a thread wake-up per message.
  int64_t spin_us = 200;
};

struct RegionInfo {
  uint64_t id;
  uint64_t base;
  int64_t size;
  std::string rkey;  // packed remote key, opaque bytes
};

struct NoticeHeader {
  uint32_t magic;
  uint32_t kind;
  uint64_t sender_uid;
  int64_t request_id;
  int64_t layer;  // or the revoked region id
  // What the put before a layer notice wrote, so the receiver checks it against its own
  // registration (the initiator checked it only against the sizes the peer declared):
  // region 0 for a notice without data, else [lo, hi) bytes of that region.
  uint64_t region_id;
  int64_t lo;
  int64_t hi;
};

class Agent : public BatchPoster {
 public:
  explicit Agent(AgentConfig config);
  ~Agent() override;
  Status init();
  void close();

  uint64_t uid() const { return uid_; }
  const std::string& worker_address() const { return worker_address_; }

  Status register_region(uint64_t base, int64_t size, RegionInfo* out);
  Status alloc_region(int64_t size, RegionInfo* out);  // freed by deregister_region
  Status deregister_region(uint64_t region_id, int64_t deadline_ns);
  std::vector<RegionInfo> regions();

  // Creates (or refreshes) the endpoint to the agent `uid` and imports its regions; regions it
  // no longer lists become stale.
  Status connect(uint64_t uid, const std::string& address, const std::vector<RegionInfo>& remote,
                 uint64_t* peer_id);
  // Watches a same-host peer's process through `pidfd` (pidfd_open; the agent owns it from
  // now on): its exit fails the peer with PeerDisconnected at once. Shared-memory transports
  // of UCX 1.13 report no dead peer, so without this only op_timeout_s would.
  Status watch_process(uint64_t peer_id, int pidfd);
  Status disconnect(uint64_t peer_id, int64_t deadline_ns);
  Status peer_status(uint64_t peer_id);
  std::vector<uint64_t> peer_ids();

  Status validate(const RmaBatch& batch, int64_t block_bytes) override;
  Status post(RmaBatch batch, DoneCallback done) override;
  Status submit(RmaBatch batch, int64_t block_bytes, uint64_t* handle);
  // Posts a batch validated earlier (PreparedTransfer): `*checked_gen` is the regions
  // generation it was checked against; when regions or rkeys changed since, it is validated
  // again (and `*checked_gen` advanced) before anything is posted. Without `may_block`, a
  // worker busy with another thread returns kInProgress with nothing posted, so a caller
  // holding the GIL can release it and retry with `may_block`.
  Status post_prepared(const RmaBatch& rma, int64_t block_bytes, uint64_t* checked_gen,
                       DoneCallback done, bool may_block);
  uint64_t regions_gen() const { return regions_gen_.load(std::memory_order_acquire); }
  HandleTable& handles() { return handles_; }

  Status wait_notice(int64_t request_id, int64_t layer, uint64_t peer_id, int64_t deadline_ns);
  bool has_notice(int64_t request_id, int64_t layer);  // arrived already (never blocks long)
  std::vector<int64_t> notices(int64_t request_id);
  void clear_notices(int64_t request_id);
  Status send_notice(uint64_t peer_id, int64_t request_id, int64_t layer, uint64_t* handle);
  // Notices (and region revocations) refused because their sender is no connected peer.
  int64_t num_refused_notices() const {
    return num_refused_notices_.load(std::memory_order_relaxed);
  }
  // Layer notices refused because the put they close wrote outside this agent's region
  // (the sender imported altered region info): the layer never counts as landed.
  int64_t num_out_of_range_notices() const {
    return num_out_of_range_notices_.load(std::memory_order_relaxed);
  }

 private:
  struct Region {
    RegionInfo info;
    ucp_mem_h memh = nullptr;
    std::atomic<int64_t> inflight{0};
  };
  struct RemoteRegion {
    uint64_t base;
    int64_t size;
    std::string packed;
    ucp_rkey_h rkey = nullptr;
    bool is_stale = false;
  };
  struct Batch;
  struct Peer {
    uint64_t id;
    uint64_t uid;
    ucp_ep_h ep = nullptr;
    Status failure;  // ok while connected
    std::map<uint64_t, RemoteRegion> regions;
    std::deque<std::shared_ptr<Batch>> in_order;  // under worker_mu_: notice order
    std::vector<ucp_rkey_h> retired;  // replaced rkeys, destroyed when the endpoint closes
    int pidfd = -1;  // the peer's process on this host (watch_process), or -1
  };

  Status map_region(uint64_t base, int64_t size, RegionInfo* out);
  // Under state_mu_: the checks of validate(), and resolving a validated batch's regions
  // into `batch` (pinning the local one).
  Status validate_locked(const RmaBatch& batch, int64_t block_bytes);
  Status resolve_locked(const RmaBatch& rma, Batch* batch);

  // Progress thread and its command queue.
  void progress_loop();
  void run_later(std::function<void()> fn);
  void wake();
  void reap_closing();
  Peer* find_peer(uint64_t peer_id);
  void send_control(Peer* peer, uint32_t kind, int64_t request_id, int64_t value);
  Status run_sync(std::function<Status()> fn, int64_t deadline_ns);
  bool drain_commands();
  void sleep_on_worker();
  void wait_for_wake(int timeout_ms);
  void check_deadlines();
  void check_processes();  // fails peers whose watched process exited
  void unwatch(Peer* peer);

  // A notice waiter progresses the worker (try-locking worker_mu_) until `arrived()`, for at
  // most spin_us; false if it did not arrive by then.
  template <class Arrived>
  bool drive_until_notice(const Arrived& arrived, int64_t deadline_ns);
  bool notice_arrived_locked(int64_t request_id, int64_t layer) const;  // under notice_mu_

  // Under worker_mu_ (the progress thread, a submitting caller or a notice waiter).
  bool progress_worker();
  void start_batch(const std::shared_ptr<Batch>& batch);
  void complete_in_order(Peer* peer);
  void finish_batch(Batch* batch, Status status);
  void fail_peer(Peer* peer, Status why);
  void close_endpoint(Peer* peer);
  void record_notice(uint64_t sender_uid, int64_t request_id, int64_t layer);
  bool is_connected(uint64_t uid);  // a peer with this uid is in peers_ (takes state_mu_)
  bool is_inside_region(const NoticeHeader& h);  // the put's range, against regions_
  void mark_stale(uint64_t sender_uid, uint64_t region_id);
  Status import_regions(Peer* peer, const std::vector<RegionInfo>& remote);

  static void on_flushed(void* request, ucs_status_t status, void* user_data);
  static void on_notice_sent(void* request, ucs_status_t status, void* user_data);
  static void on_peer_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);

  AgentConfig config_;
  uint64_t uid_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string worker_address_;
  int worker_fd_ = -1, wake_fd_ = -1, epoll_fd_ = -1;

  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  std::atomic<int64_t> last_active_ns_{0};
  std::mutex cmd_mu_;
  std::deque<std::function<void()>> commands_;
  std::vector<void*> closing_;  // ep close requests still running (under worker_mu_)
  // Serializes every call on worker_ (UCS_THREAD_MODE_SERIALIZED). Recursive: a completion
  // callback run inside progress may post the next batch (the traffic manager does).
  std::recursive_mutex worker_mu_;
  std::atomic<int> num_drivers_{0};  // notice waiters progressing the worker themselves
  std::atomic<int64_t> num_pending_{0};  // batches queued on peers, not finished yet
  std::atomic<uint64_t> notice_seq_{0};  // bumped per recorded notice: cheap spin check
  std::atomic<int64_t> num_refused_notices_{0};
  std::atomic<int64_t> num_out_of_range_notices_{0};

  // Tables read by callers (validation) and written under worker_mu_.
  std::mutex state_mu_;
  std::map<uint64_t, std::unique_ptr<Region>> regions_;
  std::map<uint64_t, std::unique_ptr<Peer>> peers_;
  std::vector<std::shared_ptr<Batch>> orphans_;  // batches of removed peers awaiting callbacks
  uint64_t next_region_id_ = 1, next_peer_id_ = 1;
  // Bumped (under state_mu_) whenever a local region goes or a peer's regions change, so a
  // prepared batch re-validates only then.
  std::atomic<uint64_t> regions_gen_{0};

  std::mutex notice_mu_;
  std::condition_variable notice_cv_;
  std::unordered_map<int64_t, std::vector<int64_t>> arrived_;
  std::unordered_map<int64_t, std::unordered_set<int64_t>> arrived_set_;

  HandleTable handles_;
  std::atomic<bool> closed_{false};
};

}  // namespace dualkv
