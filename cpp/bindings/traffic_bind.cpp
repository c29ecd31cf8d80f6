// Bindings of the traffic manager and the shared token buckets (always built: they need no
// transport; RMA jobs take any BatchPoster, i.e. a UCX Agent when UCX is compiled in).
#include <pybind11/stl.h>

#include "bind_util.h"
#include "dualkv/traffic.h"

namespace dualkv {

static std::vector<CopyDesc> copy_descs(const py::array& dst, const py::array& src,
                                        const py::array& len) {
  const int64_t* d = int64_column(dst, "dst_ptrs", -1);
  const int64_t* s = int64_column(src, "src_ptrs", dst.shape(0));
  const int64_t* l = int64_column(len, "lengths", dst.shape(0));
  std::vector<CopyDesc> out(dst.shape(0));
  for (size_t i = 0; i < out.size(); ++i) out[i] = {d[i], s[i], l[i]};
  return out;
}

void register_traffic(py::module_& m) {
  m.def("copy_ranges", [](py::array dst, py::array src, py::array len) {
    auto descs = copy_descs(dst, src, len);
    Status st;
    {
      py::gil_scoped_release release;
      st = copy_ranges(descs);
    }
    throw_if_error(st);
  }, py::arg("dst"), py::arg("src"), py::arg("lengths"));
  py::class_<BatchPoster, std::shared_ptr<BatchPoster>>(m, "BatchPoster");

  py::class_<TokenBucket, std::shared_ptr<TokenBucket>>(m, "TokenBucket")
      .def(py::init([](const std::string& path, double bytes_per_s, int64_t burst_bytes,
                       double max_backlog_s) {
             std::unique_ptr<TokenBucket> bucket;
             if (!(max_backlog_s > 0 && max_backlog_s <= 1e6))  // NaN fails too
               throw_if_error(make_status(Code::kInvalidArgument,
                                          "max_backlog_s must be in (0, 1e6] seconds"));
             int64_t max_backlog_ns = int64_t(max_backlog_s * 1e9);
             throw_if_error(
                 TokenBucket::open(path, bytes_per_s, burst_bytes, max_backlog_ns, &bucket));
             return std::shared_ptr<TokenBucket>(std::move(bucket));
           }), py::arg("path"), py::arg("bytes_per_s"), py::arg("burst_bytes"),
           py::arg("max_backlog_s") = 60.0)
      .def("acquire", [](TokenBucket& self, int64_t num_bytes, double timeout_s) {
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        Status st;
        {
          py::gil_scoped_release release;
          st = self.acquire(num_bytes, deadline);
        }
        throw_if_error(st);
      }, py::arg("num_bytes"), py::arg("timeout"))
      .def("debit", [](TokenBucket& self, int64_t num_bytes) {
        throw_if_error(self.debit(num_bytes));
      }, py::arg("num_bytes"))
      .def_property_readonly("num_repairs", &TokenBucket::num_repairs,
                             "Times this process found the shared state damaged and reset it.")
      .def_property_readonly("max_backlog_s", [](const TokenBucket& self) {
        return double(self.max_backlog_ns()) / 1e9;
      })
      .def("reserve_until", [](TokenBucket& self, int64_t num_bytes) {
        if (num_bytes < 0) throw_if_error(make_status(Code::kInvalidArgument,
                                                      "reserve of a negative byte count"));
        return double(self.reserve_until(num_bytes)) / 1e9;
      }, py::arg("num_bytes"),
         "Queues num_bytes behind earlier traffic; returns when the last byte has gone "
         "(seconds of time.monotonic()), without waiting.")
      .def_property_readonly("backlog_s", [](const TokenBucket& self) {
        return double(self.backlog_ns()) / 1e9;
      }, "Seconds of traffic queued and not yet through the NIC.")
      .def_property_readonly("bytes_per_s", &TokenBucket::bytes_per_s)
      .def_property_readonly("burst_bytes", &TokenBucket::burst_bytes)
      .def_property_readonly("path", &TokenBucket::path);

  py::class_<TrafficManager, std::shared_ptr<TrafficManager>> tm(m, "TrafficManager");
  tm.def(py::init([](int64_t chunk_bytes, int kv_window, std::shared_ptr<TokenBucket> cnic,
                     double kv_min_share) {
          TrafficConfig config;
          config.chunk_bytes = chunk_bytes;
          config.kv_window = kv_window;
          config.kv_min_share = kv_min_share;
          return std::make_shared<TrafficManager>(config, std::move(cnic));
        }), py::arg("chunk_bytes"), py::arg("kv_window"), py::arg("cnic") = nullptr,
         py::arg("kv_min_share") = 0.1)
      .def("submit_copy", [](TrafficManager& self, py::array dst, py::array src, py::array len,
                             int cls) {
        auto descs = copy_descs(dst, src, len);
        uint64_t handle = 0;
        Status st;
        {
          py::gil_scoped_release release;  // a model-class copy runs right here
          st = self.submit_copy(std::move(descs), TrafficClass(cls), &handle);
        }
        throw_if_error(st);
        return handle;
      })
      .def("submit_rma", [](TrafficManager& self, BatchPoster& poster, uint64_t peer,
                            uint64_t local_region, uint64_t remote_region, bool is_get,
                            py::array loc, py::array rem, py::array len, int64_t request_id,
                            int64_t layer, int64_t block_bytes, int cls) {
        RmaBatch batch = make_rma_batch(peer, local_region, remote_region, is_get, loc, rem, len,
                                        request_id, layer);
        uint64_t handle = 0;
        Status st;
        {
          py::gil_scoped_release release;
          st = self.submit_rma(&poster, std::move(batch), block_bytes, TrafficClass(cls), &handle);
        }
        throw_if_error(st);
        return handle;
      })
      .def("stats", [](TrafficManager& self) {
        TrafficStats s = self.stats();
        py::dict d;
        d["model_bytes"] = s.model_bytes;
        d["kv_chunks_beside_model"] = s.kv_chunks_beside_model;
        d["kv_bytes"] = s.kv_bytes;
        d["kv_chunks"] = s.kv_chunks;
        d["model_jobs"] = s.model_jobs;
        d["kv_jobs"] = s.kv_jobs;
        return d;
      })
      .def("close", [](TrafficManager& self) {
        py::gil_scoped_release release;
        self.close();
      });
  bind_handle_verbs(tm);
}

}  // namespace dualkv
