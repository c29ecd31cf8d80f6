// Python binding of BlockIO (batched block loads/stores with handles) and of the directory
// scan. Batches cross as contiguous numpy arrays; every blocking call releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <unistd.h>

#include <fstream>

#include "dualkv/block_io.h"
#include "dualkv/block_scan.h"
#include "dualkv/crc32c.h"

namespace py = pybind11;

namespace dualkv {
namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw StatusError(make_status(Code::kInvalidArgument, message));
}

// A (n, key_bytes) C-contiguous uint8 array; anything else is refused, never reinterpreted.
const uint8_t* keys_arg(const py::array& keys, const BlockLayout& layout, size_t* n) {
  if (keys.dtype().kind() != 'u' || keys.itemsize() != 1 || keys.ndim() != 2 ||
      static_cast<size_t>(keys.shape(1)) != layout.key_bytes ||
      !(keys.flags() & py::array::c_style)) {
    invalid("keys must be a C-contiguous uint8 array of shape (n, " +
            std::to_string(layout.key_bytes) + ")");
  }
  *n = static_cast<size_t>(keys.shape(0));
  return static_cast<const uint8_t*>(keys.data());
}

const int64_t* int64_arg(const py::array& a, size_t rows, size_t cols, const char* what) {
  bool is_shape_ok = cols == 0 ? (a.ndim() == 1 && static_cast<size_t>(a.shape(0)) == rows)
                               : (a.ndim() == 2 && static_cast<size_t>(a.shape(0)) == rows &&
                                  static_cast<size_t>(a.shape(1)) == cols);
  if (a.dtype().kind() != 'i' || a.itemsize() != 8 || !is_shape_ok ||
      !(a.flags() & py::array::c_style)) {
    invalid(std::string(what) + " must be a C-contiguous int64 array of shape (" +
            std::to_string(rows) + (cols ? ", " + std::to_string(cols) : std::string(",")) + ")");
  }
  return static_cast<const int64_t*>(a.data());
}

const uint8_t* parent_arg(const py::object& parent, const BlockLayout& layout,
                          std::string* holder) {
  if (parent.is_none()) return nullptr;
  *holder = py::bytes(parent).cast<std::string>();
  if (holder->size() != layout.key_bytes) {
    invalid("parent must be " + std::to_string(layout.key_bytes) + " bytes");
  }
  return reinterpret_cast<const uint8_t*>(holder->data());
}

// BlockIOOptions(**fields): every keyword names a field; an unknown one is refused by name.
std::unique_ptr<BlockIOOptions> make_options(const py::kwargs& fields) {
  auto options = std::make_unique<BlockIOOptions>();
  py::object self = py::cast(options.get(), py::return_value_policy::reference);
  for (auto item : fields) {
    std::string name = py::str(item.first);
    if (name.empty() || name[0] == '_' || !py::hasattr(self, name.c_str())) {
      invalid("BlockIOOptions has no field '" + name + "'");
    }
    try {
      self.attr(name.c_str()) = item.second;
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;
      invalid("BlockIOOptions." + name + " cannot be " + py::repr(item.second).cast<std::string>());
    }
  }
  return options;
}

void set_fingerprint(BlockIOOptions& options, const py::bytes& value) {
  std::string fingerprint = value;
  if (fingerprint.size() != kFingerprintBytes) {
    invalid("BlockIOOptions.fingerprint must be " + std::to_string(kFingerprintBytes) +
            " bytes, got " + std::to_string(fingerprint.size()));
  }
  std::memcpy(options.layout.fingerprint, fingerprint.data(), kFingerprintBytes);
}

py::bytes get_fingerprint(const BlockIOOptions& options) {
  return py::bytes(reinterpret_cast<const char*>(options.layout.fingerprint), kFingerprintBytes);
}

std::string options_repr(const BlockIOOptions& o) {
  const BlockLayout& l = o.layout;
  return "BlockIOOptions(num_layers=" + std::to_string(l.num_layers) +
         ", bytes_per_token_layer=" + std::to_string(l.bytes_per_token_layer) +
         ", block_tokens=" + std::to_string(l.block_tokens) +
         ", key_bytes=" + std::to_string(l.key_bytes) +
         ", fingerprint=" + to_hex(l.fingerprint, kFingerprintBytes) + ", dir='" + o.dir +
         "', backend='" + o.backend + "', queue_depth=" + std::to_string(o.queue_depth) +
         ", num_read_threads=" + std::to_string(o.num_read_threads) +
         ", num_write_threads=" + std::to_string(o.num_write_threads) +
         ", direct_io=" + (o.direct_io ? "True" : "False") +
         ", fsync=" + (o.fsync ? "True" : "False") + ")";
}

// A field of the layout, read and written through the options as if it were their own.
template <uint32_t BlockLayout::*field>
void def_layout_field(py::class_<BlockIOOptions>& cls, const char* name) {
  cls.def_property(
      name, [](const BlockIOOptions& o) { return o.layout.*field; },
      [](BlockIOOptions& o, uint32_t value) { o.layout.*field = value; });
}

void register_options(py::module_& m) {
  py::class_<BlockIOOptions> cls(m, "BlockIOOptions",
                                 "What a BlockIO is opened with besides its pool; built from a "
                                 "StoreConfig by dualkv.store.config.block_io_options.");
  cls.def(py::init(&make_options));
  def_layout_field<&BlockLayout::num_layers>(cls, "num_layers");
  def_layout_field<&BlockLayout::bytes_per_token_layer>(cls, "bytes_per_token_layer");
  def_layout_field<&BlockLayout::block_tokens>(cls, "block_tokens");
  def_layout_field<&BlockLayout::key_bytes>(cls, "key_bytes");
  cls.def_property("fingerprint", &get_fingerprint, &set_fingerprint)
      .def_readwrite("dir", &BlockIOOptions::dir)
      .def_readwrite("backend", &BlockIOOptions::backend)
      .def_readwrite("queue_depth", &BlockIOOptions::queue_depth)
      .def_readwrite("num_read_threads", &BlockIOOptions::num_read_threads)
      .def_readwrite("num_write_threads", &BlockIOOptions::num_write_threads)
      .def_readwrite("direct_io", &BlockIOOptions::direct_io)
      .def_readwrite("fsync", &BlockIOOptions::fsync)
      .def("__repr__", &options_repr);
}

// A BlockIO that close() abandoned (I/O stalled past its deadline) is never deleted: its
// threads still run in it. Otherwise deleting it waits for its (drained) threads, so the GIL
// is released around that.
struct BlockIODeleter {
  void operator()(BlockIO* io) const {
    if (io == nullptr || io->is_abandoned()) return;
    if (PyGILState_Check()) {
      py::gil_scoped_release release;
      delete io;
    } else {
      delete io;
    }
  }
};
using BlockIOHolder = std::unique_ptr<BlockIO, BlockIODeleter>;

BlockIOHolder make_block_io(const BlockIOOptions& options, std::shared_ptr<HostPool> pool) {
  std::unique_ptr<BlockIO> io;
  Status s;
  {
    py::gil_scoped_release release;
    s = BlockIO::create(options, std::move(pool), &io);
  }
  throw_if_error(s);
  return BlockIOHolder(io.release());
}

py::dict close(BlockIO& io, double timeout_s) {
  if (!(timeout_s >= 0)) throw_if_error(make_status(Code::kInvalidArgument,
                                                    "close timeout must be >= 0 seconds"));
  int64_t num_blocks = 0, num_batches = 0;
  {
    py::gil_scoped_release release;
    num_batches = io.drain(timeout_s, &num_blocks);
  }
  py::dict out;
  out["num_batches"] = num_batches;
  out["num_blocks"] = num_blocks;
  return out;
}

uint64_t load(BlockIO& io, const py::array& keys, const py::array& slots, uint32_t first,
              uint32_t last) {
  size_t n;
  const uint8_t* k = keys_arg(keys, io.layout(), &n);
  const int64_t* s = int64_arg(slots, n, 0, "slots");
  uint64_t handle = 0;
  Status status;
  {
    py::gil_scoped_release release;
    status = io.load(k, n, s, first, last, &handle);
  }
  throw_if_error(status);
  return handle;
}

uint64_t load_into(BlockIO& io, const py::array& keys, const py::array& dst, uint32_t first,
                   uint32_t last) {
  size_t n;
  const uint8_t* k = keys_arg(keys, io.layout(), &n);
  if (first >= last || last > io.layout().num_layers) invalid("layers out of range");
  const int64_t* d = int64_arg(dst, n, last - first, "dst_ptrs");
  uint64_t handle = 0;
  Status status;
  {
    py::gil_scoped_release release;
    status = io.load_into(k, n, d, first, last, &handle);
  }
  throw_if_error(status);
  return handle;
}

// store and store_from differ only in what the int64 array holds: one slot per block, or one
// source address per Layer Block.
template <class Submit>
uint64_t submit_store(BlockIO& io, const py::array& keys, const py::array& sources,
                      size_t width, const char* what, const py::object& parent, Submit submit) {
  size_t n;
  const uint8_t* k = keys_arg(keys, io.layout(), &n);
  const int64_t* s = int64_arg(sources, n, width, what);
  std::string holder;
  const uint8_t* p = parent_arg(parent, io.layout(), &holder);
  uint64_t handle = 0;
  Status status;
  {
    py::gil_scoped_release release;
    status = submit(k, n, s, p, &handle);
  }
  throw_if_error(status);
  return handle;
}

uint64_t store(BlockIO& io, const py::array& keys, const py::array& slots,
               const py::object& parent) {
  return submit_store(io, keys, slots, 0, "slots", parent, [&](auto... args) {
    return io.store(args...);
  });
}

uint64_t store_from(BlockIO& io, const py::array& keys, const py::array& src,
                    const py::object& parent) {
  return submit_store(io, keys, src, io.layout().num_layers, "src_ptrs", parent,
                      [&](auto... args) { return io.store_from(args...); });
}

// Returns (ok: bool array, errno, message); errno 0 when every block succeeded or failed
// without an error worth raising (loads report misses in ok only).
py::tuple wait(BlockIO& io, uint64_t handle, double timeout_s) {
  std::vector<uint8_t> ok;
  Status first_error, status;
  {
    py::gil_scoped_release release;
    status = io.wait(handle, timeout_s, &ok, &first_error);
  }
  throw_if_error(status);
  py::array_t<bool> result(static_cast<py::ssize_t>(ok.size()));
  for (size_t i = 0; i < ok.size(); ++i) result.mutable_data()[i] = ok[i] != 0;
  return py::make_tuple(result, first_error.sys_errno, first_error.message);
}

py::dict stats(BlockIO& io) {
  BlockIoStats& s = io.stats();
  py::dict d;
  d["blocks_loaded"] = s.blocks_loaded.load();
  d["blocks_stored"] = s.blocks_stored.load();
  d["stores_skipped_existing"] = s.stores_skipped_existing.load();
  d["missing"] = s.missing.load();
  d["corrupt"] = s.corrupt.load();
  d["read_errors"] = s.read_errors.load();
  d["write_errors"] = s.write_errors.load();
  d["bytes_read"] = s.bytes_read.load();
  d["bytes_written"] = s.bytes_written.load();
  d["bounce_bytes"] = s.bounce_bytes.load();
  d["files_removed"] = s.files_removed.load();
  d["flushes"] = s.flushes.load();
  d["removes_skipped_replaced"] = s.removes_skipped_replaced.load();
  d["stores_replaced_damaged"] = s.stores_replaced_damaged.load();
  d["backend"] = io.backend();
  d["registered_buffers"] = io.has_registered_buffers();
  d["direct_reads"] = io.is_direct_read();
  d["direct_writes"] = io.is_direct_write();
  return d;
}

py::dict scan(BlockIO& io, bool remove_bad, double remove_temp_after_s) {
  ScanResult r;
  Status status;
  {
    py::gil_scoped_release release;
    status = scan_blocks(io.layout(), io.options().dir, remove_bad, remove_temp_after_s, &r);
  }
  throw_if_error(status);
  size_t n = r.has_parent.size(), kb = io.layout().key_bytes;
  py::array_t<uint8_t> keys({n, kb}), parents({n, kb});
  py::array_t<bool> has_parent(static_cast<py::ssize_t>(n));
  std::memcpy(keys.mutable_data(), r.keys.data(), r.keys.size());
  std::memcpy(parents.mutable_data(), r.parents.data(), r.parents.size());
  for (size_t i = 0; i < n; ++i) has_parent.mutable_data()[i] = r.has_parent[i] != 0;
  py::dict d;
  d["keys"] = keys;
  d["parents"] = parents;
  d["has_parent"] = has_parent;
  d["num_bad"] = r.num_bad;
  d["num_bad_removed"] = r.num_bad_removed;
  d["num_temp"] = r.num_temp;
  d["num_temp_removed"] = r.num_temp_removed;
  d["num_other"] = r.num_other;
  d["block_bytes"] = r.block_bytes;
  d["bad_examples"] = r.bad_examples;
  return d;
}

py::dict probe_backends() {
  py::dict d;
  std::unique_ptr<IoEngine> engine;
  Status s;
  {
    py::gil_scoped_release release;
    s = make_uring_engine(4, &engine);
  }
  d["io_uring"] = s.ok() ? std::string("usable") : "unavailable: " + s.message;
  d["posix"] = std::string("usable");
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("HugePages_Free:", 0) == 0) {
      d["huge_pages_free"] = std::stoll(line.substr(15));  // 2 MiB pages the pool could map
    }
  }
  d["storage_backend"] = std::string(s.ok() ? "io_uring" : "posix");
  return d;
}

}  // namespace

void register_storage(py::module_& m) {
  register_options(m);
  py::class_<BlockIO, BlockIOHolder>(m, "BlockIO")
      .def(py::init(&make_block_io), py::arg("options"), py::arg("pool"))
      .def("close", &close, py::arg("timeout"),
           "Waits up to timeout s (GIL released) for the I/O in flight; returns what it "
           "abandoned ({num_batches, num_blocks}); with anything abandoned the object is "
           "leaked on purpose, since stalled threads still use it and its pool.")
      .def("load", &load, py::arg("keys"), py::arg("slots"), py::arg("first"), py::arg("last"))
      .def("load_into", &load_into, py::arg("keys"), py::arg("dst_ptrs"), py::arg("first"),
           py::arg("last"))
      .def("store", &store, py::arg("keys"), py::arg("slots"), py::arg("parent") = py::none())
      .def("store_from", &store_from, py::arg("keys"), py::arg("src_ptrs"),
           py::arg("parent") = py::none())
      .def("wait", &wait, py::arg("handle"), py::arg("timeout"))
      .def("poll", [](BlockIO& io, uint64_t h) {
        bool is_done = false;
        throw_if_error(io.poll(h, &is_done));
        return is_done;
      }, py::arg("handle"))
      .def("finished_at", [](BlockIO& io, uint64_t h) {
        int64_t ns = -1;
        throw_if_error(io.finished_at(h, &ns));
        return ns;
      }, py::arg("handle"))
      .def("release", [](BlockIO& io, uint64_t h, double timeout_s) {
        Status s;
        {
          py::gil_scoped_release release;
          s = io.release(h, timeout_s);
        }
        throw_if_error(s);
      }, py::arg("handle"), py::arg("timeout"))
      .def("remove_files", [](BlockIO& io, const py::array& keys) {
        size_t n;
        const uint8_t* k = keys_arg(keys, io.layout(), &n);
        py::gil_scoped_release release;
        io.remove_files(k, n);
      }, py::arg("keys"))
      .def("exists", [](BlockIO& io, const py::array& keys) {
        size_t n;
        const uint8_t* k = keys_arg(keys, io.layout(), &n);
        py::array_t<bool> out(static_cast<py::ssize_t>(n));
        bool* o = out.mutable_data();
        py::gil_scoped_release release;
        for (size_t i = 0; i < n; ++i) {
          o[i] = access(io.path_of(k + i * io.layout().key_bytes).c_str(), F_OK) == 0;
        }
        return out;
      }, py::arg("keys"), "Whether each key's block file is on disk (one stat each, no read).")
      .def("path_of", [](BlockIO& io, const py::bytes& key) {
        std::string k = key;
        if (k.size() != io.layout().key_bytes) invalid("key has the wrong length");
        return io.path_of(reinterpret_cast<const uint8_t*>(k.data()));
      }, py::arg("key"))
      .def("stats", &stats)
      .def("scan", &scan, py::arg("remove_bad") = true, py::arg("remove_temp_after_s") = -1.0)
      .def_property_readonly("backend", &BlockIO::backend);
  m.def("probe_backends", &probe_backends,
        "Which storage I/O backends this machine allows now (io_uring may be refused).");
  m.def("crc32c", [](const py::buffer& data, uint32_t crc) {
    py::buffer_info info = data.request();
    return crc32c(info.ptr, static_cast<size_t>(info.size * info.itemsize), crc);
  }, py::arg("data"), py::arg("crc") = 0);
}

}  // namespace dualkv
