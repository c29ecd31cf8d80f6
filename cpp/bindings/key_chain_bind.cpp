// Binding of the block-key chain: one call per prompt, GIL released while hashing. Registered
// only when libcrypto was found; dualkv.store.keys falls back to hashlib otherwise.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "dualkv/key_chain.h"

namespace py = pybind11;

namespace dualkv {

#ifdef DUALKV_HAVE_CRYPTO
// tokens: C-contiguous int32 (dualkv.store.keys validates and converts before calling).
static py::array_t<uint8_t> chain_keys_binding(const py::array& tokens, int64_t block_tokens,
                                               const py::object& prior) {
  if (tokens.ndim() != 1 || !py::isinstance<py::array_t<int32_t>>(tokens) ||
      !(tokens.flags() & py::array::c_style)) {
    throw StatusError(make_status(Code::kInvalidArgument,
                                  "tokens must be a C-contiguous 1-D int32 array"));
  }
  if (block_tokens <= 0) {
    throw StatusError(make_status(Code::kInvalidArgument, "block_tokens must be >= 1"));
  }
  std::string prior_bytes;
  if (!prior.is_none()) {
    prior_bytes = py::bytes(prior).cast<std::string>();
    if (prior_bytes.size() != kChainKeyBytes) {
      throw StatusError(make_status(Code::kInvalidArgument,
                                    "prior must be 32 bytes, got " +
                                        std::to_string(prior_bytes.size())));
    }
  }
  const size_t num_tokens = static_cast<size_t>(tokens.shape(0));
  const size_t num_blocks = num_tokens / static_cast<size_t>(block_tokens);
  py::array_t<uint8_t> keys({num_blocks, kChainKeyBytes});
  const auto* token_ptr = static_cast<const int32_t*>(tokens.data());
  const uint8_t* prior_ptr =
      prior_bytes.empty() ? nullptr : reinterpret_cast<const uint8_t*>(prior_bytes.data());
  uint8_t* out = keys.mutable_data();
  Status status;
  {
    py::gil_scoped_release release;
    status = chain_keys_sha256(token_ptr, num_tokens, static_cast<size_t>(block_tokens),
                               prior_ptr, out);
  }
  throw_if_error(status);
  return keys;
}
#endif

void register_key_chain(py::module_& m) {
#ifdef DUALKV_HAVE_CRYPTO
  m.def("chain_keys", &chain_keys_binding, py::arg("tokens"), py::arg("block_tokens"),
        py::arg("prior") = py::none(),
        "SHA-256 key chain of the full blocks of an int32 token array: (n, 32) uint8.");
#else
  (void)m;
#endif
}

}  // namespace dualkv
