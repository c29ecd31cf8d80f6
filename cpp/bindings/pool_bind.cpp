// Python binding of HostPool. The pool exposes the buffer protocol (the whole slot area as
// bytes), so numpy and torch views are zero-copy and keep the pool alive while they exist.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "dualkv/host_pool.h"

namespace py = pybind11;

namespace dualkv {
namespace {

CudaRegister parse_cuda_mode(const std::string& mode) {
  if (mode == "off") return CudaRegister::kOff;
  if (mode == "auto") return CudaRegister::kAuto;
  if (mode == "required") return CudaRegister::kRequired;
  throw StatusError(make_status(Code::kInvalidArgument,
                                "cuda must be 'auto', 'off' or 'required', got '" + mode + "'"));
}

std::shared_ptr<HostPool> make_pool(int64_t num_slots, int64_t slot_bytes, bool huge_pages,
                                    const std::string& cuda) {
  if (num_slots <= 0 || slot_bytes <= 0) {
    throw StatusError(make_status(Code::kInvalidArgument, "num_slots and slot_bytes must be > 0"));
  }
  CudaRegister mode = parse_cuda_mode(cuda);
  std::unique_ptr<HostPool> pool;
  Status s;
  {
    py::gil_scoped_release release;
    s = HostPool::create(static_cast<size_t>(num_slots), static_cast<size_t>(slot_bytes),
                         huge_pages, mode, &pool);
  }
  throw_if_error(s);
  return std::shared_ptr<HostPool>(std::move(pool));
}

py::array_t<int64_t> alloc_slots(HostPool& pool, int64_t n) {
  if (n < 0) throw StatusError(make_status(Code::kInvalidArgument, "alloc(n) needs n >= 0"));
  py::array_t<int64_t> ids(n);
  throw_if_error(pool.alloc(static_cast<size_t>(n), ids.mutable_data()));
  return ids;
}

void free_slots(HostPool& pool, py::array ids) {
  if (ids.dtype().kind() != 'i' || ids.ndim() != 1) {
    throw StatusError(make_status(Code::kInvalidArgument, "free(ids) needs a 1-D int array"));
  }
  auto contiguous = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ids);
  throw_if_error(pool.free(contiguous.data(), static_cast<size_t>(contiguous.size())));
}

}  // namespace

void register_pool(py::module_& m) {
  py::class_<HostPool, std::shared_ptr<HostPool>>(m, "HostPool", py::buffer_protocol())
      .def(py::init(&make_pool), py::arg("num_slots"), py::arg("slot_bytes"),
           py::arg("huge_pages") = true, py::arg("cuda") = "auto")
      .def_buffer([](HostPool& p) {
        return py::buffer_info(p.base(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {p.num_slots() * p.slot_bytes()}, {1});
      })
      .def("alloc", &alloc_slots, py::arg("n"))
      .def("free", &free_slots, py::arg("ids"))
      .def("ptr", [](HostPool& p, int64_t slot) {
        throw_if_error(p.check_slot(slot));
        return reinterpret_cast<uintptr_t>(p.slot_ptr(slot));
      }, py::arg("slot"))
      .def_property_readonly("base_ptr", [](HostPool& p) {
        return reinterpret_cast<uintptr_t>(p.base());
      })
      .def_property_readonly("size_bytes", &HostPool::size_bytes)
      .def_property_readonly("slot_bytes", &HostPool::slot_bytes)
      .def_property_readonly("num_slots", &HostPool::num_slots)
      .def_property_readonly("num_free", &HostPool::num_free)
      .def_property_readonly("page_kind", &HostPool::page_kind)
      .def_property_readonly("is_cuda_registered", &HostPool::is_cuda_registered)
      .def_property_readonly("cuda_note", &HostPool::cuda_note);
}

}  // namespace dualkv
