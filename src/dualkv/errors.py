"""Exceptions raised by dualkv. Each native status code maps to exactly one class here."""


class DualKVError(Exception):
    """Base of every dualkv error."""


class InvalidArgument(DualKVError, ValueError):
    """A shape, length, key or descriptor the call cannot accept; nothing was done."""


class OutOfMemory(DualKVError, MemoryError):
    """A pool, buffer or registration could not get the memory it needs."""


class NotFound(DualKVError, KeyError):
    """A key, handle, peer or file that does not exist."""


class PeerDisconnected(DualKVError, ConnectionError):
    """The remote side of a transfer went away."""


class TimedOut(DualKVError, TimeoutError):
    """A wait passed its deadline; the operation may still be in flight until released."""


class StorageError(DualKVError, OSError):
    """The filesystem refused an I/O (full disk, permissions, I/O error); errno is kept."""


class Unavailable(DualKVError, RuntimeError):
    """A backend this build or this machine does not have (see `dualkv info`)."""
