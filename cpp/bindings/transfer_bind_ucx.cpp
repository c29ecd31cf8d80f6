// Bindings of the UCX agent. Every call that may block (registration, connect, waits) runs
// with the GIL released; descriptor batches cross as int64 arrays in one call.
#include <pybind11/stl.h>

#include "bind_util.h"
#include <uct/api/uct.h>

#include "dualkv/transfer.h"
#include "dualkv/transfer_pingpong.h"
#include "dualkv/transfer_prepared.h"

namespace dualkv {

static py::dict region_dict(const RegionInfo& r) {
  py::dict d;
  d["id"] = r.id;
  d["base"] = r.base;
  d["size"] = r.size;
  d["rkey"] = py::bytes(r.rkey);
  return d;
}

static std::vector<RegionInfo> regions_from(const py::list& items) {
  std::vector<RegionInfo> out;
  for (const auto& item : items) {
    auto d = item.cast<py::dict>();
    out.push_back({d["id"].cast<uint64_t>(), d["base"].cast<uint64_t>(),
                   d["size"].cast<int64_t>(), d["rkey"].cast<std::string>()});
  }
  return out;
}

template <class Fn>
static void unlocked(Fn&& fn) {
  Status st;
  {
    py::gil_scoped_release release;
    st = fn();
  }
  throw_if_error(st);
}

// Names of the UCT components that have at least one memory domain on this host ("ib"
// only where InfiniBand / RoCE devices exist), so Python adds IB settings only where used.
static std::vector<std::string> ucx_components() {
  std::vector<std::string> out;
  uct_component_h* components = nullptr;
  unsigned num = 0;
  if (uct_query_components(&components, &num) != UCS_OK) return out;
  for (unsigned i = 0; i < num; ++i) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME | UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[i], &attr) == UCS_OK && attr.md_resource_count > 0)
      out.push_back(attr.name);
  }
  uct_release_component_list(components);
  return out;
}

// A prepared post of at most this many bytes keeps the GIL: it never waits for a lock (the
// worker is only try-locked) and its shared-memory copy is shorter than two GIL hand-offs.
// Larger layers, or a worker held by another thread, post with the GIL released.
constexpr int64_t kPostWithGilBytes = 256 << 10;

static void bind_prepared(py::module_& m) {
  py::class_<PreparedTransfer>(m, "PreparedTransfer")
      .def("post", [](PreparedTransfer& self, int64_t layer) {
        if (self.layer_bytes() <= kPostWithGilBytes) {
          Status st = self.post(layer, false);
          if (st.code != Code::kInProgress) return throw_if_error(st);
        }
        unlocked([&] { return self.post(layer, true); });
      }, py::arg("layer"))
      .def("wait", [](PreparedTransfer& self, double timeout_s) {
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        unlocked([&] { return self.wait(deadline); });
      }, py::arg("timeout"))
      .def_property_readonly("num_pending", &PreparedTransfer::num_pending)
      .def_property_readonly("layer_bytes", &PreparedTransfer::layer_bytes)
      .def_property_readonly("num_layers", [](PreparedTransfer& s) { return s.spec().num_layers; })
      .def_property_readonly("request_id", [](PreparedTransfer& s) { return s.spec().request_id; })
      .def_property_readonly("peer", [](PreparedTransfer& s) { return s.spec().peer; });
}

void register_transfer(py::module_& m) {
  bind_prepared(m);
  m.def("ucx_components", &ucx_components);
  py::class_<Agent, BatchPoster, std::shared_ptr<Agent>> agent(m, "Agent");
  agent
      .def(py::init([](const std::string& name,
                       std::vector<std::pair<std::string, std::string>> ucx_options,
                       double op_timeout_s, int64_t spin_us) {
             AgentConfig config;
             config.name = name;
             config.ucx_options = std::move(ucx_options);
             config.op_timeout_s = op_timeout_s;
             config.spin_us = spin_us;
             auto a = std::make_shared<Agent>(config);
             unlocked([&] { return a->init(); });
             return a;
           }), py::arg("name"), py::arg("ucx_options"), py::arg("op_timeout_s"),
           py::arg("spin_us"))
      .def_property_readonly("uid", &Agent::uid)
      .def_property_readonly("num_refused_notices", &Agent::num_refused_notices)
      .def_property_readonly("num_out_of_range_notices", &Agent::num_out_of_range_notices)
      .def_property_readonly("worker_address",
                             [](Agent& self) { return py::bytes(self.worker_address()); })
      .def("register", [](Agent& self, uint64_t ptr, int64_t size) {
        RegionInfo info;
        unlocked([&] { return self.register_region(ptr, size, &info); });
        return region_dict(info);
      }, py::arg("ptr"), py::arg("size"))
      .def("alloc", [](Agent& self, int64_t size) {
        RegionInfo info;
        unlocked([&] { return self.alloc_region(size, &info); });
        return region_dict(info);
      }, py::arg("size"))
      .def("deregister", [](Agent& self, uint64_t region_id, double timeout_s) {
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        unlocked([&] { return self.deregister_region(region_id, deadline); });
      }, py::arg("region_id"), py::arg("timeout"))
      .def("regions", [](Agent& self) {
        py::list out;
        for (const auto& r : self.regions()) out.append(region_dict(r));
        return out;
      })
      .def("connect", [](Agent& self, uint64_t uid, const std::string& address, py::list regions) {
        auto remote = regions_from(regions);
        uint64_t peer = 0;
        unlocked([&] { return self.connect(uid, address, remote, &peer); });
        return peer;
      }, py::arg("uid"), py::arg("address"), py::arg("regions"))
      .def("watch_process", [](Agent& self, uint64_t peer, int pidfd) {
        unlocked([&] { return self.watch_process(peer, pidfd); });
      }, py::arg("peer"), py::arg("pidfd"),
         "Takes ownership of pidfd (os.pidfd_open of the peer's process): its exit fails "
         "the peer with PeerDisconnected at once.")
      .def("disconnect", [](Agent& self, uint64_t peer, double timeout_s) {
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        unlocked([&] { return self.disconnect(peer, deadline); });
      }, py::arg("peer"), py::arg("timeout"))
      .def("peers", &Agent::peer_ids)
      .def("check_peer", [](Agent& self, uint64_t peer) { throw_if_error(self.peer_status(peer)); })
      .def("submit", [](Agent& self, uint64_t peer, uint64_t local_region, uint64_t remote_region,
                        bool is_get, py::array loc, py::array rem, py::array len,
                        int64_t request_id, int64_t layer, int64_t block_bytes) {
        RmaBatch batch = make_rma_batch(peer, local_region, remote_region, is_get, loc, rem, len,
                                        request_id, layer);
        uint64_t handle = 0;
        unlocked([&] { return self.submit(std::move(batch), block_bytes, &handle); });
        return handle;
      })
      .def("prepare", [](std::shared_ptr<Agent> self, uint64_t peer, uint64_t local_region,
                         uint64_t remote_region, bool is_get, py::array loc, py::array rem,
                         py::array len, int64_t request_id, int64_t num_layers,
                         int64_t local_layer_stride, int64_t remote_layer_stride,
                         int64_t block_bytes) {
        PreparedSpec spec{peer, local_region, remote_region, is_get, rma_descs(loc, rem, len),
                          request_id, num_layers, local_layer_stride, remote_layer_stride,
                          block_bytes};
        std::unique_ptr<PreparedTransfer> out;
        unlocked([&] { return PreparedTransfer::create(self, spec, &out); });
        return out;
      })
      .def("send_notice", [](Agent& self, uint64_t peer, int64_t request_id, int64_t layer) {
        uint64_t handle = 0;
        unlocked([&] { return self.send_notice(peer, request_id, layer, &handle); });
        return handle;
      })
      .def("wait_notice", [](Agent& self, int64_t request_id, int64_t layer, double timeout_s,
                             uint64_t peer) {
        seconds_or_throw(timeout_s);
        // Already arrived (an engine waiting for a layer that landed during compute): answer
        // with the GIL held; only a real wait (spin, then sleep) releases it.
        if (self.has_notice(request_id, layer)) return;
        int64_t deadline = deadline_after(timeout_s);
        unlocked([&] { return self.wait_notice(request_id, layer, peer, deadline); });
      }, py::arg("request_id"), py::arg("layer"), py::arg("timeout"), py::arg("peer") = 0)
      .def("notices", [](Agent& self, int64_t request_id) {
        auto v = self.notices(request_id);
        py::array_t<int64_t> out(v.size());
        std::copy(v.begin(), v.end(), out.mutable_data());
        return out;
      })
      .def("clear_notices", &Agent::clear_notices)
      .def("pingpong", [](Agent& self, uint64_t peer, uint64_t local_region,
                          uint64_t remote_region, int64_t size, int64_t iters, bool is_initiator,
                          double timeout_s) {
        PingPong pp{peer, local_region, remote_region, size, iters, is_initiator};
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        std::vector<int64_t> rtt_ns;
        unlocked([&] { return run_pingpong(self, pp, deadline, &rtt_ns); });
        py::array_t<int64_t> out(rtt_ns.size());
        std::copy(rtt_ns.begin(), rtt_ns.end(), out.mutable_data());
        return out;
      }, py::arg("peer"), py::arg("local_region"), py::arg("remote_region"), py::arg("size"),
         py::arg("iters"), py::arg("is_initiator"), py::arg("timeout"))
      .def("close", [](Agent& self) {
        py::gil_scoped_release release;
        self.close();
      });
  bind_handle_verbs(agent);
}

}  // namespace dualkv
