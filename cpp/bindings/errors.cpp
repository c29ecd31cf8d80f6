// Maps StatusError to the Python exception classes of dualkv.errors, looked up at throw time
// so the C++ side never duplicates the Python hierarchy.
#include <pybind11/pybind11.h>

#include "dualkv/status.h"

namespace py = pybind11;

namespace dualkv {

static const char* exception_name(Code code) {
  switch (code) {
    case Code::kInvalidArgument: return "InvalidArgument";
    case Code::kOutOfMemory: return "OutOfMemory";
    case Code::kNotFound: return "NotFound";
    case Code::kPeerDisconnected: return "PeerDisconnected";
    case Code::kTimedOut: return "TimedOut";
    case Code::kStorageError: return "StorageError";
    case Code::kUnavailable: return "Unavailable";
    default: return "DualKVError";
  }
}

void register_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      py::object errors = py::module_::import("dualkv.errors");
      py::object cls = errors.attr(exception_name(e.status().code));
      py::object exc = e.status().code == Code::kStorageError
                           ? cls(e.status().sys_errno, e.status().message)
                           : cls(e.status().message);
      PyErr_SetObject(cls.ptr(), exc.ptr());
    }
  });
}

}  // namespace dualkv
