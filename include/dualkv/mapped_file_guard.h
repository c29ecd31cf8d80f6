// Survives the truncation of a file that this process has mapped shared.
//
// Touching a page of a MAP_SHARED file mapping beyond the file's end raises SIGBUS, so any
// process that can truncate a node's shared token-bucket file (by mistake or on purpose)
// would kill every process using it. A guarded mapping instead gets its file grown back to
// the mapped size from inside the SIGBUS handler (ftruncate is async-signal-safe) and the
// faulting access runs again, now on zero bytes, which the owner then treats as a damaged
// state and re-initialises. SIGBUS outside every guarded mapping goes to the handler that
// was installed before (faulthandler, or the default action).
#pragma once

#include <cstddef>

namespace dualkv {

// Guards [addr, addr + bytes) mapped from `fd` (which stays open until unguard_mapping).
// Returns false when the fixed table of guarded mappings is full.
bool guard_mapping(void* addr, size_t bytes, int fd);
void unguard_mapping(void* addr);

}  // namespace dualkv
