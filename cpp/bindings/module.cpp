// The one native module, dualkv._C. Each component registers its own bindings.
//
// cpp/<layer>/ (common, index, storage, pool, transfer, traffic) is plain C++ that never
// includes pybind11; every binding lives here in cpp/bindings/ as <component>_bind.cpp.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace dualkv {
void register_errors(py::module_& m);
void register_build_info(py::module_& m);
void register_key_chain(py::module_& m);
void register_index(py::module_& m);
void register_pool(py::module_& m);
void register_storage(py::module_& m);
void register_traffic(py::module_& m);
#ifdef DUALKV_HAVE_UCX
void register_transfer(py::module_& m);
#endif
}  // namespace dualkv

PYBIND11_MODULE(_C, m) {
  m.doc() = "dualkv native core: memory, I/O, transports, completion tracking";
  dualkv::register_errors(m);
  dualkv::register_build_info(m);
  dualkv::register_key_chain(m);
  dualkv::register_index(m);
  dualkv::register_pool(m);
  dualkv::register_storage(m);
  dualkv::register_traffic(m);  // before transfer: Agent derives from its BatchPoster
#ifdef DUALKV_HAVE_UCX
  dualkv::register_transfer(m);
#endif
}
