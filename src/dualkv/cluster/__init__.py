"""The local multi-process cluster (issue 5): engine processes joined by the transfer engine
(KV) and ZeroMQ + msgpack (control), sharing one block directory. `LocalCluster` runs 1 PE +
1 DE process turn by turn; the scheduler process over many engines builds on it."""
