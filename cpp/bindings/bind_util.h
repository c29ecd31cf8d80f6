// Helpers shared by binding files: descriptor arrays must arrive as contiguous 1-D int64
// numpy arrays (STYLE.md), anything else is an InvalidArgument, never a silent copy.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "dualkv/clock.h"
#include "dualkv/completion.h"
#include "dualkv/rma.h"
#include "dualkv/status.h"

namespace dualkv {

namespace py = pybind11;

inline const int64_t* int64_column(const py::array& a, const char* name, py::ssize_t expected) {
  if (!a.dtype().is(py::dtype::of<int64_t>()))
    throw StatusError(make_status(Code::kInvalidArgument, std::string(name) + " must be int64"));
  if (a.ndim() != 1 || !(a.flags() & py::array::c_style))
    throw StatusError(
        make_status(Code::kInvalidArgument, std::string(name) + " must be a contiguous 1-D array"));
  if (expected >= 0 && a.shape(0) != expected)
    throw StatusError(make_status(Code::kInvalidArgument,
                                  std::string(name) + " has a different length than the others"));
  return static_cast<const int64_t*>(a.data());
}

inline double seconds_or_throw(double timeout_s) {
  if (!(timeout_s >= 0))
    throw StatusError(make_status(Code::kInvalidArgument, "timeout must be >= 0 seconds"));
  return timeout_s;
}

inline std::vector<RmaDesc> rma_descs(const py::array& loc, const py::array& rem,
                                      const py::array& len) {
  const int64_t* a = int64_column(loc, "local_offsets", -1);
  const int64_t* b = int64_column(rem, "remote_offsets", loc.shape(0));
  const int64_t* c = int64_column(len, "lengths", loc.shape(0));
  std::vector<RmaDesc> out(loc.shape(0));
  for (size_t i = 0; i < out.size(); ++i) out[i] = {a[i], b[i], c[i]};
  return out;
}

inline RmaBatch make_rma_batch(uint64_t peer, uint64_t local_region, uint64_t remote_region,
                        bool is_get, const py::array& loc, const py::array& rem,
                        const py::array& len, int64_t request_id, int64_t layer) {
  RmaBatch batch;
  batch.peer = peer;
  batch.local_region = local_region;
  batch.remote_region = remote_region;
  batch.is_get = is_get;
  batch.descs = rma_descs(loc, rem, len);
  batch.has_notice = layer >= 0;
  batch.request_id = request_id;
  batch.layer = layer;
  return batch;
}

// poll/wait/release over a HandleTable, the one async verb set (STYLE.md).
template <class Owner, class... Extra>
void bind_handle_verbs(py::class_<Owner, Extra...>& cls) {
  cls.def("poll", [](Owner& self, uint64_t handle) {
       Status st = self.handles().poll(handle);
       if (st.code == Code::kInProgress) return false;
       throw_if_error(st);
       return true;
     })
      .def("wait", [](Owner& self, uint64_t handle, double timeout_s) {
        int64_t deadline = deadline_after(seconds_or_throw(timeout_s));
        Status st;
        {
          py::gil_scoped_release release;
          st = self.handles().wait(handle, deadline);
        }
        throw_if_error(st);
      }, py::arg("handle"), py::arg("timeout"))
      .def("release", [](Owner& self, uint64_t handle) { return self.handles().erase(handle); })
      .def_property_readonly("num_handles", [](Owner& self) { return self.handles().size(); });
}

}  // namespace dualkv
