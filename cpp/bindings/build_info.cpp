// What this build was compiled with, so `dualkv info` can say which backends are in.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace dualkv {

void register_build_info(py::module_& m) {
  py::dict info;
#ifdef DUALKV_HAVE_URING
  info["io_uring"] = true;
#else
  info["io_uring"] = false;
#endif
#ifdef DUALKV_HAVE_UCX
  info["ucx"] = true;
#else
  info["ucx"] = false;
#endif
#ifdef DUALKV_HAVE_CRYPTO
  info["crypto"] = true;  // libcrypto SHA-256 for key chains; hashlib otherwise
#else
  info["crypto"] = false;
#endif
  info["compiler"] = __VERSION__;
  m.attr("build_info") = info;
}

}  // namespace dualkv
