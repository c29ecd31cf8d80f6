// Binding of PrefixIndex as dualkv._C.PrefixIndex: validates numpy arguments, releases the GIL
// around every call into the index, and returns keys as (n, key_bytes) uint8 arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dualkv/prefix_index.h"

namespace py = pybind11;

namespace dualkv {

namespace {

using Bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

[[noreturn]] void invalid(const std::string& message) {
  throw StatusError(make_status(Code::kInvalidArgument, message));
}

// (n, key_bytes) C-contiguous uint8; anything else goes through dualkv.store.keys.as_keys,
// which accepts lists of bytes or hex strings and raises InvalidArgument for the rest.
py::array keys_arg(const py::object& obj, size_t key_bytes) {
  if (py::isinstance<py::array_t<uint8_t>>(obj)) {
    py::array arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.ndim() == 2 && static_cast<size_t>(arr.shape(1)) == key_bytes &&
        (arr.flags() & py::array::c_style)) {
      return arr;
    }
  }
  return py::module_::import("dualkv.store.keys").attr("as_keys")(obj, key_bytes);
}

size_t num_keys(const py::array& keys) { return static_cast<size_t>(keys.shape(0)); }
const uint8_t* key_data(const py::array& keys) {
  return static_cast<const uint8_t*>(keys.data());
}

// One key: bytes, a hex string or a 1-D uint8 array (as_keys reads each of these).
py::array single_key_arg(const py::object& obj, size_t key_bytes) {
  py::list one;
  one.append(obj);
  return keys_arg(one, key_bytes);
}

// block_bytes: one int for every block, or an int64 array of n.
std::vector<uint64_t> block_bytes_arg(const py::object& obj, size_t n) {
  std::vector<uint64_t> out(n);
  if (!py::isinstance<py::array>(obj) && PyIndex_Check(obj.ptr())) {
    const int64_t value = obj.cast<int64_t>();
    if (value < 0) invalid("block_bytes must be >= 0");
    std::fill(out.begin(), out.end(), static_cast<uint64_t>(value));
    return out;
  }
  py::array raw = py::array::ensure(obj);
  const char kind = raw ? raw.dtype().kind() : '?';
  if (!raw || (kind != 'i' && kind != 'u') || raw.ndim() != 1 ||
      static_cast<size_t>(raw.shape(0)) != n) {
    invalid("block_bytes must be an int or an integer array with one entry per key");
  }
  auto arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(raw);
  for (size_t i = 0; i < n; ++i) {
    if (arr.data()[i] < 0) invalid("block_bytes must be >= 0");
    out[i] = static_cast<uint64_t>(arr.data()[i]);
  }
  return out;
}

py::array_t<uint8_t> keys_result(const std::vector<uint8_t>& bytes, size_t key_bytes) {
  const size_t n = bytes.size() / key_bytes;
  py::array_t<uint8_t> out({n, key_bytes});
  if (!bytes.empty()) std::memcpy(out.mutable_data(), bytes.data(), bytes.size());
  return out;
}

py::dict stats_dict(const IndexStats& s) {
  py::dict d;
  d["num_blocks"] = s.num_blocks;
  d["bytes"] = s.bytes;
  d["capacity_bytes"] = s.capacity_bytes;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["evictions"] = s.evictions;
  d["evicted_bytes"] = s.evicted_bytes;
  d["removed"] = s.removed;
  d["pinned"] = s.pinned;
  d["orphans"] = s.orphans;
  d["memory_bytes"] = s.memory_bytes;
  d["reserved_ids"] = s.reserved_ids;
  return d;
}

std::unique_ptr<PrefixIndex> make_index(int64_t key_bytes, int64_t capacity_bytes) {
  if (capacity_bytes < 0) invalid("capacity_bytes must be >= 0 (0 = unbounded)");
  if (key_bytes < 0) invalid("key_bytes must be in [16, 64]");
  throw_if_error(PrefixIndex::validate_key_bytes(static_cast<size_t>(key_bytes)));
  return std::make_unique<PrefixIndex>(static_cast<size_t>(key_bytes),
                                       static_cast<uint64_t>(capacity_bytes));
}

}  // namespace

void register_index(py::module_& m) {
  using Index = PrefixIndex;
  py::class_<Index>(m, "PrefixIndex", "Trie over chained block keys: match, pin, LRU evict.")
      .def(py::init(&make_index), py::arg("key_bytes") = 32, py::arg("capacity_bytes") = 0)
      .def_property_readonly("key_bytes", &Index::key_bytes)
      .def("insert_chain",
           [](Index& self, const py::object& keys_obj, const py::object& parent_key,
              const py::object& block_bytes_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             py::array parent;
             if (!parent_key.is_none()) parent = single_key_arg(parent_key, self.key_bytes());
             auto block_bytes = block_bytes_arg(block_bytes_obj, num_keys(keys));
             std::vector<uint8_t> evicted;
             Status status;
             {
               py::gil_scoped_release release;
               status = self.insert_chain(key_data(keys), num_keys(keys),
                                          parent_key.is_none() ? nullptr : key_data(parent),
                                          block_bytes.data(), &evicted);
             }
             throw_if_error(status);
             return keys_result(evicted, self.key_bytes());
           },
           py::arg("keys"), py::arg("parent_key") = py::none(), py::arg("block_bytes") = 0)
      .def("insert_edges",
           [](Index& self, const py::object& keys_obj, const py::object& parents_obj,
              const py::object& has_parent_obj, const py::object& block_bytes_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             py::array parents = keys_arg(parents_obj, self.key_bytes());
             auto has_parent = Bytes::ensure(has_parent_obj);
             const size_t n = num_keys(keys);
             if (num_keys(parents) != n || !has_parent || has_parent.ndim() != 1 ||
                 static_cast<size_t>(has_parent.shape(0)) != n) {
               invalid("keys, parent_keys and has_parent must have one entry per block");
             }
             auto block_bytes = block_bytes_arg(block_bytes_obj, n);
             std::vector<uint8_t> evicted;
             Status status;
             {
               py::gil_scoped_release release;
               status = self.insert_edges(key_data(keys), key_data(parents), has_parent.data(), n,
                                          block_bytes.data(), &evicted);
             }
             throw_if_error(status);
             return keys_result(evicted, self.key_bytes());
           },
           py::arg("keys"), py::arg("parent_keys"), py::arg("has_parent"),
           py::arg("block_bytes") = 0)
      .def("match",
           [](Index& self, const py::object& keys_obj, bool touch, bool pin) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             py::gil_scoped_release release;
             return self.match(key_data(keys), num_keys(keys), touch, pin);
           },
           py::arg("keys"), py::arg("touch") = true, py::arg("pin") = false)
      .def("contains",
           [](Index& self, const py::object& keys_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             py::array_t<bool> out(num_keys(keys));
             auto* out_ptr = reinterpret_cast<uint8_t*>(out.mutable_data());
             py::gil_scoped_release release;
             self.contains(key_data(keys), num_keys(keys), out_ptr);
             return out;
           },
           py::arg("keys"))
      .def("pin",
           [](Index& self, const py::object& keys_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             py::array_t<bool> out(num_keys(keys));
             auto* out_ptr = reinterpret_cast<uint8_t*>(out.mutable_data());
             Status status;
             {
               py::gil_scoped_release release;
               status = self.pin(key_data(keys), num_keys(keys), out_ptr);
             }
             throw_if_error(status);
             return out;
           },
           py::arg("keys"))
      .def("unpin",
           [](Index& self, const py::object& keys_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             Status status;
             {
               py::gil_scoped_release release;
               status = self.unpin(key_data(keys), num_keys(keys));
             }
             throw_if_error(status);
           },
           py::arg("keys"))
      .def("remove",
           [](Index& self, const py::object& keys_obj) {
             py::array keys = keys_arg(keys_obj, self.key_bytes());
             std::vector<uint8_t> removed;
             {
               py::gil_scoped_release release;
               self.remove(key_data(keys), num_keys(keys), &removed);
             }
             return keys_result(removed, self.key_bytes());
           },
           py::arg("keys"))
      .def("evict",
           [](Index& self, int64_t num_bytes) {
             if (num_bytes < 0) invalid("num_bytes must be >= 0");
             std::vector<uint8_t> evicted;
             {
               py::gil_scoped_release release;
               self.evict(static_cast<uint64_t>(num_bytes), &evicted);
             }
             return keys_result(evicted, self.key_bytes());
           },
           py::arg("num_bytes"))
      .def("drop_orphans",
           [](Index& self) {
             std::vector<uint8_t> removed;
             {
               py::gil_scoped_release release;
               self.drop_orphans(&removed);
             }
             return keys_result(removed, self.key_bytes());
           })
      .def("compact",
           [](Index& self) {
             Status status;
             {
               py::gil_scoped_release release;
               status = self.compact();
             }
             throw_if_error(status);
           },
           "Lays the nodes out again so each chain's blocks are consecutive in memory: faster "
           "matches after a rebuild or on an index grown a few blocks at a time.")
      .def("stats",
           [](Index& self) {
             IndexStats s;
             {
               py::gil_scoped_release release;
               s = self.stats();
             }
             return stats_dict(s);
           })
      .def("__len__", [](Index& self) { return self.stats().num_blocks; });
}

}  // namespace dualkv
