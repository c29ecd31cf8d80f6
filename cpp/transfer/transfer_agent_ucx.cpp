// Agent lifecycle: UCP context and worker, memory registration, and peers (endpoints with
// peer error handling and their imported rkeys). The progress thread is in
// transfer_progress_ucx.cpp, the data path (batches, notices) in transfer_batch_ucx.cpp.
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <random>

#include "dualkv/transfer.h"
#include "transfer_internal.h"

namespace dualkv {

Agent::Agent(AgentConfig config) : config_(std::move(config)) {
  handles_.set_spin_ns(config_.spin_us * 1000);
  std::random_device rd;
  uid_ = (uint64_t(rd()) << 32) ^ rd() ^ uint64_t(now_ns());
  if (uid_ == 0) uid_ = 1;
}

Agent::~Agent() { close(); }

Status Agent::init() {
  ucp_config_t* cfg = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &cfg);
  if (s != UCS_OK) return ucx_error("ucp_config_read", s);
  // Zero-copy one-sided puts over TCP: with a finite rendezvous threshold UCX (1.22) builds
  // the endpoint's lanes for rendezvous AM and runs ucp_put over tcp as "software emulation"
  // (AM messages the target's progress applies); with rendezvous off it selects tcp's
  // put_zcopy, as NIXL's UCX backend does (UCX_PROTO_INFO=y shows both tables). Our AM
  // traffic is only small notices, which never take rendezvous. UCX 1.13 has no tcp RMA
  // protocol at all, so there puts stay emulated whatever the setting. Options from the
  // config below override this default.
  s = ucp_config_modify(cfg, "RNDV_THRESH", "inf");
  if (s != UCS_OK) {
    ucp_config_release(cfg);
    return ucx_error("ucp_config_modify RNDV_THRESH", s);
  }
  for (const auto& [name, value] : config_.ucx_options) {
    s = ucp_config_modify(cfg, name.c_str(), value.c_str());
    if (s != UCS_OK) {
      ucp_config_release(cfg);
      return make_status(Code::kInvalidArgument,
                         "UCX option " + name + "=" + value + ": " + ucs_status_string(s));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = config_.name.c_str();
  s = ucp_init(&params, cfg, &context_);
  ucp_config_release(cfg);
  if (s != UCS_OK) return ucx_error("ucp_init", s);

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // every call holds worker_mu_
  s = ucp_worker_create(context_, &wparams, &worker_);
  if (s != UCS_OK) return ucx_error("ucp_worker_create", s);

  ucp_address_t* address = nullptr;
  size_t address_bytes = 0;
  s = ucp_worker_get_address(worker_, &address, &address_bytes);
  if (s != UCS_OK) return ucx_error("ucp_worker_get_address", s);
  worker_address_.assign(reinterpret_cast<const char*>(address), address_bytes);
  ucp_worker_release_address(worker_, address);

  ucp_am_handler_param_t am{};
  am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                  UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  am.id = kNoticeAmId;
  am.flags = UCP_AM_FLAG_WHOLE_MSG;
  am.cb = &Agent::on_am;
  am.arg = this;
  s = ucp_worker_set_am_recv_handler(worker_, &am);
  if (s != UCS_OK) return ucx_error("ucp_worker_set_am_recv_handler", s);

  s = ucp_worker_get_efd(worker_, &worker_fd_);
  if (s != UCS_OK) return ucx_error("ucp_worker_get_efd", s);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || epoll_fd_ < 0) return make_status(Code::kInternal, "eventfd/epoll failed");
  for (int fd : {worker_fd_, wake_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0)
      return make_status(Code::kInternal, "epoll_ctl failed");
  }
  last_active_ns_ = now_ns();
  thread_ = std::thread([this] { progress_loop(); });
  return Status::Ok();
}

// ---- memory ----------------------------------------------------------------------------

Status Agent::register_region(uint64_t base, int64_t size, RegionInfo* out) {
  if (base == 0 || size <= 0)
    return make_status(Code::kInvalidArgument, "register needs a non-null address and size > 0");
  return map_region(base, size, out);
}

// UCX allocates the memory itself (shared memory on one host), so peers on the same machine
// reach it with true one-sided copies instead of messages their progress thread must apply.
Status Agent::alloc_region(int64_t size, RegionInfo* out) {
  if (size <= 0) return make_status(Code::kInvalidArgument, "alloc needs size > 0");
  return map_region(0, size, out);
}

Status Agent::map_region(uint64_t base, int64_t size, RegionInfo* out) {
  return run_sync([this, base, size, out] {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = reinterpret_cast<void*>(base);
    mp.length = size_t(size);
    mp.flags = base == 0 ? UCP_MEM_MAP_ALLOCATE : 0;
    ucp_mem_h memh = nullptr;
    ucs_status_t s = ucp_mem_map(context_, &mp, &memh);
    if (s != UCS_OK) return ucx_error("ucp_mem_map", s);
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    s = ucp_mem_query(memh, &attr);
    if (s != UCS_OK) {
      ucp_mem_unmap(context_, memh);
      return ucx_error("ucp_mem_query", s);
    }
    void* packed = nullptr;
    size_t packed_bytes = 0;
    s = ucp_rkey_pack(context_, memh, &packed, &packed_bytes);
    if (s != UCS_OK) {
      ucp_mem_unmap(context_, memh);
      return ucx_error("ucp_rkey_pack", s);
    }
    auto region = std::make_unique<Region>();
    region->memh = memh;
    region->info.base = reinterpret_cast<uint64_t>(attr.address);
    region->info.size = size;
    region->info.rkey.assign(static_cast<const char*>(packed), packed_bytes);
    ucp_rkey_buffer_release(packed);
    std::lock_guard<std::mutex> lock(state_mu_);
    region->info.id = next_region_id_++;
    *out = region->info;
    regions_[region->info.id] = std::move(region);
    return Status::Ok();
  }, deadline_after(config_.op_timeout_s));
}

Status Agent::deregister_region(uint64_t region_id, int64_t deadline_ns) {
  while (true) {
    Status st = run_sync([this, region_id] {
      std::unique_ptr<Region> region;
      {
        std::lock_guard<std::mutex> lock(state_mu_);
        auto it = regions_.find(region_id);
        if (it == regions_.end())
          return make_status(Code::kNotFound, "unknown region " + std::to_string(region_id));
        if (it->second->inflight.load() > 0)
          return make_status(Code::kInProgress, "region has transfers in flight");
        region = std::move(it->second);
        regions_.erase(it);
        regions_gen_.fetch_add(1, std::memory_order_release);
      }
      ucp_mem_unmap(context_, region->memh);
      for (auto& [id, peer] : peers_)  // peers' rkeys for it are stale from now on
        if (peer->ep != nullptr) send_control(peer.get(), kRevokeRegion, 0, int64_t(region_id));
      return Status::Ok();
    }, deadline_ns);
    if (st.code != Code::kInProgress) return st;
    if (now_ns() > deadline_ns)
      return make_status(Code::kTimedOut, "region still has transfers in flight at the deadline");
    usleep(1000);
  }
}

std::vector<RegionInfo> Agent::regions() {
  std::lock_guard<std::mutex> lock(state_mu_);
  std::vector<RegionInfo> out;
  for (auto& [id, region] : regions_) out.push_back(region->info);
  return out;
}

// ---- peers -----------------------------------------------------------------------------

Status Agent::connect(uint64_t uid, const std::string& address,
                      const std::vector<RegionInfo>& remote, uint64_t* peer_id) {
  if (address.empty()) return make_status(Code::kInvalidArgument, "empty worker address");
  return run_sync([this, uid, address, remote, peer_id] {
    for (auto& [id, peer] : peers_) {
      if (peer->uid == uid && peer->failure.ok()) {  // refresh: new and revoked regions
        *peer_id = id;
        return import_regions(peer.get(), remote);
      }
    }
    ucp_ep_params_t ep_params{};
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = &Agent::on_peer_error;
    ep_params.err_handler.arg = this;
    auto peer = std::make_unique<Peer>();
    peer->uid = uid;
    ucs_status_t s = ucp_ep_create(worker_, &ep_params, &peer->ep);
    if (s != UCS_OK) return ucx_error("ucp_ep_create", s);
    Status st = import_regions(peer.get(), remote);
    if (!st.ok()) {
      close_endpoint(peer.get());
      return st;
    }
    std::lock_guard<std::mutex> lock(state_mu_);
    peer->id = next_peer_id_++;
    *peer_id = peer->id;
    peers_[peer->id] = std::move(peer);
    return Status::Ok();
  }, deadline_after(config_.op_timeout_s));
}

Status Agent::import_regions(Peer* peer, const std::vector<RegionInfo>& remote) {
  std::map<uint64_t, RemoteRegion> fresh;
  for (const auto& info : remote) {
    auto old = peer->regions.find(info.id);
    if (old != peer->regions.end() && old->second.packed == info.rkey && !old->second.is_stale) {
      fresh[info.id] = old->second;
      old->second.rkey = nullptr;  // moved, not retired
      continue;
    }
    RemoteRegion r{info.base, info.size, info.rkey, nullptr, false};
    ucs_status_t s = ucp_ep_rkey_unpack(peer->ep, info.rkey.data(), &r.rkey);
    if (s != UCS_OK) {
      for (auto& [id, f] : fresh) peer->retired.push_back(f.rkey);
      return ucx_error("ucp_ep_rkey_unpack", s);
    }
    fresh[info.id] = r;
  }
  std::lock_guard<std::mutex> lock(state_mu_);
  for (auto& [id, old] : peer->regions) {
    if (old.rkey != nullptr) peer->retired.push_back(old.rkey);  // in-flight ops may use it
    if (fresh.count(id) == 0) {
      old.is_stale = true;  // regions the peer no longer lists: rejected before posting
      old.rkey = nullptr;
      fresh[id] = old;
    }
  }
  peer->regions = std::move(fresh);
  regions_gen_.fetch_add(1, std::memory_order_release);
  return Status::Ok();
}

Status Agent::watch_process(uint64_t peer_id, int pidfd) {
  if (pidfd < 0) return make_status(Code::kInvalidArgument, "watch_process needs a pidfd");
  // The command owns the fd: it keeps it on the peer or closes it, whenever it runs.
  return run_sync([this, peer_id, pidfd] {
    Peer* peer = find_peer(peer_id);
    if (peer == nullptr || peer->pidfd >= 0 || peer->ep == nullptr) {
      ::close(pidfd);  // unknown, failed, or watched already (a refresh of a known peer)
      return peer == nullptr ? make_status(Code::kNotFound, "unknown peer") : Status::Ok();
    }
    epoll_event ev{};
    ev.events = EPOLLIN;  // readable once the process exits: wakes a sleeping progress thread
    ev.data.fd = pidfd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, pidfd, &ev) != 0) {
      ::close(pidfd);
      return make_status(Code::kInvalidArgument, "epoll_ctl on a pidfd failed");
    }
    peer->pidfd = pidfd;
    return Status::Ok();
  }, deadline_after(config_.op_timeout_s));
}

// Under worker_mu_: one poll() over every watched process (only when there is one).
void Agent::check_processes() {
  std::vector<pollfd> fds;
  std::vector<Peer*> owners;
  for (auto& [id, peer] : peers_) {
    if (peer->pidfd < 0) continue;
    fds.push_back({peer->pidfd, POLLIN, 0});
    owners.push_back(peer.get());
  }
  if (fds.empty() || poll(fds.data(), fds.size(), 0) <= 0) return;
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].revents == 0) continue;
    Peer* peer = owners[i];
    unwatch(peer);
    fail_peer(peer, make_status(Code::kPeerDisconnected, "the peer's process exited"));
    uint64_t peer_id = peer->id;  // closed from the command queue, as after a deadline
    run_later([this, peer_id] {
      if (Peer* p = find_peer(peer_id)) close_endpoint(p);
    });
  }
}

void Agent::unwatch(Peer* peer) {
  if (peer->pidfd < 0) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, peer->pidfd, nullptr);
  ::close(peer->pidfd);
  peer->pidfd = -1;
}

Status Agent::disconnect(uint64_t peer_id, int64_t deadline_ns) {
  return run_sync([this, peer_id] {
    Peer* peer = find_peer(peer_id);
    if (peer == nullptr) return make_status(Code::kNotFound, "unknown peer");
    fail_peer(peer, make_status(Code::kPeerDisconnected, "peer was disconnected locally"));
    close_endpoint(peer);
    std::lock_guard<std::mutex> lock(state_mu_);
    for (auto& batch : peer->in_order) orphans_.push_back(batch);
    num_pending_.fetch_sub(int64_t(peer->in_order.size()));
    peers_.erase(peer_id);
    return Status::Ok();
  }, deadline_ns);
}

Status Agent::peer_status(uint64_t peer_id) {
  std::lock_guard<std::mutex> lock(state_mu_);
  auto it = peers_.find(peer_id);
  if (it == peers_.end()) return make_status(Code::kNotFound, "unknown peer " + std::to_string(peer_id));
  return it->second->failure;
}

std::vector<uint64_t> Agent::peer_ids() {
  std::lock_guard<std::mutex> lock(state_mu_);
  std::vector<uint64_t> out;
  for (auto& [id, peer] : peers_) out.push_back(id);
  return out;
}

Agent::Peer* Agent::find_peer(uint64_t peer_id) {
  auto it = peers_.find(peer_id);
  return it == peers_.end() ? nullptr : it->second.get();
}

void Agent::on_peer_error(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<Agent*>(arg);
  for (auto& [id, peer] : self->peers_) {
    if (peer->ep != ep) continue;
    self->fail_peer(peer.get(), ucx_error("peer endpoint", status));
    uint64_t peer_id = id;  // closing inside the error callback is not allowed: defer it
    self->run_later([self, peer_id] {
      if (Peer* p = self->find_peer(peer_id)) self->close_endpoint(p);
    });
  }
}

void Agent::fail_peer(Peer* peer, Status why) {
  {
    std::lock_guard<std::mutex> lock(state_mu_);
    if (!peer->failure.ok()) return;
    if (why.code != Code::kTimedOut) why.code = Code::kPeerDisconnected;
    peer->failure = why;
  }
  for (auto& batch : peer->in_order) finish_batch(batch.get(), why);
  { std::lock_guard<std::mutex> lock(notice_mu_); }
  notice_cv_.notify_all();
}

void Agent::close_endpoint(Peer* peer) {
  unwatch(peer);
  if (peer->ep == nullptr) return;
  for (auto& [id, r] : peer->regions) {
    if (r.rkey) peer->retired.push_back(r.rkey);
    r.rkey = nullptr;
    r.is_stale = true;
  }
  for (ucp_rkey_h rkey : peer->retired) ucp_rkey_destroy(rkey);
  peer->retired.clear();
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(peer->ep, &param);
  if (req != nullptr && !UCS_PTR_IS_ERR(req)) closing_.push_back(req);
  std::lock_guard<std::mutex> lock(state_mu_);
  peer->ep = nullptr;
}

// ---- shutdown --------------------------------------------------------------------------

void Agent::close() {
  if (closed_.exchange(true)) return;
  if (thread_.joinable()) {
    stop_.store(true);
    wake();
    thread_.join();
  }
  std::lock_guard<std::recursive_mutex> lock(worker_mu_);  // notice waiters stop driving
  if (worker_ != nullptr) {
    drain_commands();
    for (auto& [id, peer] : peers_) {
      fail_peer(peer.get(), make_status(Code::kPeerDisconnected, "agent closed"));
      close_endpoint(peer.get());
    }
    int64_t until = now_ns() + 1000000000LL;  // close requests finish within a second
    while (!closing_.empty() && now_ns() < until) {
      progress_worker();
      reap_closing();
    }
    // Destroying the worker purges requests still pending (a flush towards a dead peer) and
    // runs their callbacks, which reach their batch and its peer: keep both alive until then.
    ucp_worker_destroy(worker_);
    worker_ = nullptr;
    for (auto& [id, region] : regions_) ucp_mem_unmap(context_, region->memh);
    regions_.clear();
    peers_.clear();
    orphans_.clear();
  }
  if (context_ != nullptr) ucp_cleanup(context_);
  context_ = nullptr;
  for (int fd : {wake_fd_, epoll_fd_})
    if (fd >= 0) ::close(fd);
  wake_fd_ = epoll_fd_ = -1;
}

void Agent::reap_closing() {
  for (size_t i = 0; i < closing_.size();) {
    if (ucp_request_check_status(closing_[i]) != UCS_INPROGRESS) {
      ucp_request_free(closing_[i]);
      closing_[i] = closing_.back();
      closing_.pop_back();
    } else {
      ++i;
    }
  }
}

}  // namespace dualkv
