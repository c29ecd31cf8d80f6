// Status: the one error currency of the C++ core. Functions return it (or throw StatusError
// in binding glue); the binding maps each code to its own dualkv.errors exception.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace dualkv {

enum class Code : int {
  kOk = 0,
  kInvalidArgument = 1,
  kOutOfMemory = 2,
  kNotFound = 3,
  kPeerDisconnected = 4,
  kTimedOut = 5,
  kStorageError = 6,
  kUnavailable = 7,  // a backend that this build or this machine does not have
  kInProgress = 8,   // a status, not an error: poll() says "not yet"
  kInternal = 9,
};

struct Status {
  Code code = Code::kOk;
  std::string message;
  int sys_errno = 0;  // errno for storage errors, 0 otherwise

  bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
};

inline Status make_status(Code code, std::string message, int sys_errno = 0) {
  return Status{code, std::move(message), sys_errno};
}

// Thrown inside binding code only; the module's exception translator turns it into the
// matching dualkv.errors class. Core code returns Status instead of throwing.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(Status status)
      : std::runtime_error(status.message), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

inline void throw_if_error(const Status& status) {
  if (!status.ok()) throw StatusError(status);
}

}  // namespace dualkv
