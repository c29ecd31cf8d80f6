"""Two UCX agents in two processes on loopback: byte-exact put/get of random, non-contiguous
Layer Blocks, per-layer notices, peer death, bad descriptors and wrong tokens."""
import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dualkv
from dualkv import errors
from dualkv._native import C

pytestmark = pytest.mark.skipif(not hasattr(C, "Agent"), reason="built without UCX")

from dualkv.transfer.rendezvous import RendezvousServer, rendezvous  # noqa: E402
from dualkv.transfer import Agent, TransferConfig  # noqa: E402

PEER_SCRIPT = os.path.join(os.path.dirname(__file__), "transfer_peer.py")
BLOCK = 16 * 1024
NUM_BLOCKS = 64
TOKEN = "cluster-secret"


def peer_env():
    src = os.path.dirname(os.path.dirname(dualkv.__file__))
    return dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))


class PeerProcess:
    def __init__(self, *args, prefix=()):
        self.proc = subprocess.Popen([*prefix, sys.executable, PEER_SCRIPT, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=peer_env(), text=True)
        self.hello = self.read(timeout=30)

    def read(self, timeout):
        deadline = time.monotonic() + timeout
        while True:  # UCX may print its own warnings on stdout: answers are JSON objects
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            assert ready, "peer process did not answer in time"
            line = self.proc.stdout.readline()
            assert line, "peer process exited"
            if line.startswith("{"):
                return json.loads(line)

    def call(self, timeout=30, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def remote():
    peer = PeerProcess("--size", str(BLOCK * NUM_BLOCKS), "--seed", "7", "--token", TOKEN)
    yield peer
    peer.proc.stdin.close()
    peer.kill()


@pytest.fixture
def agent():
    a = Agent(TransferConfig(op_timeout_s=5.0, keepalive_interval_s=0.5))
    yield a
    a.close()


def seeded(seed, size):
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def test_put_then_get_random_noncontiguous_blocks_match_numpy(remote, agent, tmp_path):
    rng = np.random.default_rng(0)
    local = rng.integers(0, 256, BLOCK * NUM_BLOCKS, dtype=np.uint8)
    region = agent.register(local)
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    src = rng.choice(NUM_BLOCKS, 20, replace=False)
    dst = rng.choice(NUM_BLOCKS, 20, replace=False)
    handle = agent.put(peer, region, peer.region().id, src * BLOCK, dst * BLOCK,
                       np.full(20, BLOCK), request_id=3, layer=0, block_bytes=BLOCK)
    agent.wait(handle, 10)
    agent.release(handle)
    assert remote.call(op="wait_notices", request_id=3, num_layers=1, wait_s=5)["order"] == [0]
    remote.call(op="dump", path=str(tmp_path / "remote.bin"))
    expect = seeded(7, BLOCK * NUM_BLOCKS).reshape(NUM_BLOCKS, BLOCK)
    expect[dst] = local.reshape(NUM_BLOCKS, BLOCK)[src]
    got = np.fromfile(tmp_path / "remote.bin", dtype=np.uint8).reshape(NUM_BLOCKS, BLOCK)
    np.testing.assert_array_equal(got, expect)

    into = rng.choice(NUM_BLOCKS, 12, replace=False)
    handle = agent.get(peer, region, peer.region().id, into * BLOCK, dst[:12] * BLOCK,
                       np.full(12, BLOCK), request_id=4, layer=5)
    agent.wait(handle, 10)
    agent.wait_notice(4, 5, timeout=1)  # a get's notice is recorded on the getting side
    np.testing.assert_array_equal(local.reshape(NUM_BLOCKS, BLOCK)[into], expect[dst[:12]])


def test_thousand_layer_notices_arrive_in_order_and_none_lost(remote, agent):
    local = np.arange(BLOCK * 4, dtype=np.uint8)
    region = agent.register(local)
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    handles = []
    for layer in range(1000):  # all in flight at once: order is the agent's promise
        b = layer % 4
        handles.append(agent.put(peer, region, peer.region().id, [b * BLOCK], [b * BLOCK],
                                 [BLOCK], request_id=11, layer=layer))
    for h in handles:
        agent.wait(h, 20)
        agent.release(h)
    order = remote.call(op="wait_notices", request_id=11, num_layers=1000, wait_s=20)["order"]
    assert order == list(range(1000))


def test_wrong_token_is_refused_and_creates_no_endpoint(remote, agent, caplog):
    with pytest.raises(errors.PeerDisconnected, match="refused"):
        rendezvous(agent, remote.hello["address"], "not-the-token", timeout=10)
    assert agent.peers() == []
    server_agent = Agent(TransferConfig())
    with RendezvousServer(server_agent, TOKEN) as server:
        with pytest.raises(errors.PeerDisconnected):
            rendezvous(agent, server.address, "wrong", timeout=10)
        assert server.num_refused == 1 and server.peers == {} and server_agent.peers() == []
        assert "bad cluster token" in caplog.text
    server_agent.close()


@pytest.fixture
def pair():
    a, b = Agent(TransferConfig()), Agent(TransferConfig())
    src = np.random.default_rng(1).integers(0, 256, BLOCK * 8, dtype=np.uint8)
    dst = np.zeros(BLOCK * 8, dtype=np.uint8)
    ra, rb = a.register(src), b.register(dst)
    peer = a.connect(b.local_info())
    b.connect(a.local_info())
    yield a, b, ra, rb, peer, dst
    a.close()
    b.close()


@pytest.mark.parametrize("loc, rem, length, match", [
    ([BLOCK * 8 - 100], [0], [BLOCK], "local range"),
    ([0], [BLOCK * 8], [BLOCK], "remote range"),
    ([-BLOCK], [0], [BLOCK], "local range"),
    ([0], [0], [0], "length must be > 0"),
    ([0], [0], [BLOCK // 2], "not a multiple"),
    ([0, 0], [0], [BLOCK], "different length"),
    ([0.5], [0], [BLOCK], "integers"),
])
def test_bad_descriptors_rejected_before_posting(pair, loc, rem, length, match):
    a, b, ra, rb, peer, dst = pair
    with pytest.raises(errors.InvalidArgument, match=match):
        a.put(peer, ra, rb.id, loc, rem, length, block_bytes=BLOCK, request_id=1, layer=0)
    with pytest.raises(errors.TimedOut):
        b.wait_notice(1, 0, timeout=0.2)
    assert not dst.any()


def until_stale_rkey(transfer, failure: str):
    """Repeats `transfer` until it fails with a stale rkey (a revocation travels to the peer
    as a notice, so the first tries may still succeed), for at most 5 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            transfer()
        except errors.InvalidArgument as exc:
            assert "stale rkey" in str(exc)
            return
        time.sleep(0.01)
    pytest.fail(failure)


def test_unknown_regions_and_stale_rkey_rejected(pair):
    a, b, ra, rb, peer, dst = pair
    with pytest.raises(errors.InvalidArgument, match="not registered"):
        a.put(peer, 999, rb.id, [0], [0], [BLOCK])
    with pytest.raises(errors.InvalidArgument, match="unknown for this peer"):
        a.put(peer, ra, 999, [0], [0], [BLOCK])
    with pytest.raises(errors.NotFound):
        a.put(12345, ra, rb.id, [0], [0], [BLOCK])
    b.deregister(rb)
    until_stale_rkey(lambda: a.wait(a.put(peer, ra, rb.id, [0], [0], [BLOCK]), 5),
                     "stale rkey was never rejected")
    a.connect({**b.local_info()})  # a re-rendezvous without the region says the same
    with pytest.raises(errors.InvalidArgument, match="stale rkey"):
        a.put(peer, ra, rb.id, [0], [0], [BLOCK])


def test_ucx_allocated_regions_put_and_get_byte_exact():
    a, b = Agent(TransferConfig()), Agent(TransferConfig())
    try:
        ra, src = a.alloc(BLOCK * 8)
        rb, dst = b.alloc(BLOCK * 8)
        src[:] = np.random.default_rng(5).integers(0, 256, src.size, dtype=np.uint8)
        dst[:] = 0
        peer = a.connect(b.local_info())
        a.wait(a.put(peer, ra, rb.id, [0, 3 * BLOCK], [5 * BLOCK, BLOCK], [BLOCK, 2 * BLOCK]), 5)
        np.testing.assert_array_equal(dst[5 * BLOCK:6 * BLOCK], src[:BLOCK])
        np.testing.assert_array_equal(dst[BLOCK:3 * BLOCK], src[3 * BLOCK:5 * BLOCK])
        a.wait(a.get(peer, ra, rb.id, [7 * BLOCK], [5 * BLOCK], [BLOCK]), 5)
        np.testing.assert_array_equal(src[7 * BLOCK:], src[:BLOCK])
        a.deregister(ra)
    finally:
        a.close()
        b.close()


def test_wait_has_deadline_and_unknown_handle(pair):
    a, b, ra, rb, peer, dst = pair
    with pytest.raises(errors.TimedOut):
        b.wait_notice(77, 0, timeout=0.05)
    with pytest.raises(errors.NotFound):
        a.wait(424242, 1)
    h = a.put(peer, ra, rb.id, [0], [0], [BLOCK])
    a.wait(h, 5)
    assert a.poll(h)
    a.release(h)
    with pytest.raises(errors.NotFound):
        a.poll(h)


def test_sigkill_of_sender_mid_stream_fails_receiver_fast(remote, agent):
    region = agent.register(np.zeros(BLOCK * 4, dtype=np.uint8))
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    remote.send(op="stream", num_layers=10**7, block_bytes=BLOCK, request_id=21)
    agent.wait_notice(21, 50, timeout=10, peer=peer.id)  # the stream is flowing
    remote.kill()
    start = time.monotonic()
    with pytest.raises((errors.PeerDisconnected, errors.TimedOut)):
        agent.wait_notice(21, 10**7 - 1, timeout=4.0, peer=peer.id)
    assert time.monotonic() - start < 4.5
    agent.deregister(region, timeout=2)  # nothing of the dead peer pins local memory


def test_sigkill_of_receiver_mid_stream_fails_sender_and_agent_serves_others(remote, agent):
    local = np.random.default_rng(2).integers(0, 256, BLOCK * 4, dtype=np.uint8)
    region = agent.register(local)
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    for layer in range(20):
        agent.wait(agent.put(peer, region, peer.region().id, [0], [0], [BLOCK],
                             request_id=5, layer=layer), 5)
    remote.kill()
    start = time.monotonic()
    with pytest.raises((errors.PeerDisconnected, errors.TimedOut)):
        for layer in range(20, 10**6):  # the agent's op deadline (5 s) bounds every batch
            h = agent.put(peer, region, peer.region().id, [0], [0], [BLOCK],
                          request_id=5, layer=layer)
            agent.wait(h, 10)
            agent.release(h)
    assert time.monotonic() - start < 7.0
    with pytest.raises((errors.PeerDisconnected, errors.TimedOut)):
        agent.check_peer(peer.id)
    other = PeerProcess("--size", str(BLOCK * NUM_BLOCKS), "--seed", "9", "--token", TOKEN)
    try:
        peer2 = rendezvous(agent, other.hello["address"], TOKEN, timeout=10)
        agent.wait(agent.put(peer2, region, peer2.region().id, [0], [0], [BLOCK],
                             request_id=6, layer=0), 5)
        assert other.call(op="wait_notices", request_id=6, num_layers=1, wait_s=5)["order"] == [0]
    finally:
        other.kill()
    agent.disconnect(peer.id)
    agent.deregister(region, timeout=2)


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair, 10.231.<n>.1 and .2: two test hosts."""
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"dkv_a{tag}", f"dkv_b{tag}"
    subnet = f"10.231.{os.getpid() % 250}"
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        _ip("link", "add", f"dkva{tag}", "type", "veth", "peer", "name", f"dkvb{tag}")
        for ns, dev, host in ((ns_a, f"dkva{tag}", 1), (ns_b, f"dkvb{tag}", 2)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    yield ns_a, ns_b, subnet
    for ns in (ns_a, ns_b):  # deleting a namespace also deletes its end of the veth pair
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_put_get_across_network_namespaces_over_tcp(two_namespaces):
    ns_a, ns_b, subnet = two_namespaces
    size = str(BLOCK * NUM_BLOCKS)
    server = PeerProcess("--size", size, "--seed", "7", "--token", TOKEN, "--tls", "tcp",
                         "--bind", f"tcp://{subnet}.1:*", prefix=("ip", "netns", "exec", ns_a))
    try:
        client = subprocess.run(
            ["ip", "netns", "exec", ns_b, sys.executable, PEER_SCRIPT, "--connect",
             server.hello["address"], "--size", size, "--seed", "7", "--token", TOKEN,
             "--tls", "tcp"], env=peer_env(), capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        assert json.loads(client.stdout.strip().splitlines()[-1]) == {"ok": True}
    finally:
        server.kill()


# ---- prepared per-layer puts (validated once, posted per layer) -----------------------------

def test_prepared_put_layers_land_byte_exact_with_notices_in_order(remote, agent, tmp_path):
    rng = np.random.default_rng(3)
    local = rng.integers(0, 256, BLOCK * NUM_BLOCKS, dtype=np.uint8)
    region = agent.register(local)
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    layers, per_layer = 4, NUM_BLOCKS // 4  # [layer][16 blocks] on both sides
    src = rng.choice(per_layer, 5, replace=False)
    dst = rng.choice(per_layer, 5, replace=False)
    prepared = agent.prepare_put(peer, region, peer.region().id, src * BLOCK, dst * BLOCK,
                                 np.full(5, BLOCK), request_id=31, num_layers=layers,
                                 local_layer_stride=per_layer * BLOCK,
                                 remote_layer_stride=per_layer * BLOCK, block_bytes=BLOCK)
    assert (prepared.num_layers, prepared.layer_bytes) == (layers, 5 * BLOCK)
    for layer in range(layers):
        prepared.post(layer)
    prepared.wait(10)
    assert prepared.num_pending == 0
    order = remote.call(op="wait_notices", request_id=31, num_layers=layers, wait_s=5)["order"]
    assert order == list(range(layers))
    remote.call(op="dump", path=str(tmp_path / "remote.bin"))
    expect = seeded(7, BLOCK * NUM_BLOCKS).reshape(layers, per_layer, BLOCK)
    expect[:, dst] = local.reshape(layers, per_layer, BLOCK)[:, src]
    got = np.fromfile(tmp_path / "remote.bin", dtype=np.uint8).reshape(layers, per_layer, BLOCK)
    np.testing.assert_array_equal(got, expect)


def test_prepared_get_records_local_notice_and_reads_bytes():
    a, b = Agent(TransferConfig()), Agent(TransferConfig())
    try:
        ra, local = a.alloc(BLOCK * 4)
        rb, remote = b.alloc(BLOCK * 4)
        local[:] = 0
        remote[:] = np.random.default_rng(4).integers(0, 256, remote.size, dtype=np.uint8)
        peer = a.connect(b.local_info())
        prepared = a.prepare_get(peer, ra, rb.id, [0], [BLOCK], [BLOCK], request_id=8,
                                 num_layers=2, local_layer_stride=2 * BLOCK,
                                 remote_layer_stride=2 * BLOCK)
        for layer in (1, 0):
            prepared.post(layer)
            a.wait_notice(8, layer, timeout=5)
        prepared.wait(5)
        np.testing.assert_array_equal(local[:BLOCK], remote[BLOCK:2 * BLOCK])
        np.testing.assert_array_equal(local[2 * BLOCK:3 * BLOCK], remote[3 * BLOCK:])
        assert not local[BLOCK:2 * BLOCK].any() and not local[3 * BLOCK:].any()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("loc, rem, length, layers, match", [
    ([BLOCK * 8 - 100], [0], [BLOCK], 1, "local range"),
    ([0], [BLOCK * 8], [BLOCK], 1, "remote range"),
    ([0], [0], [0], 1, "length must be > 0"),
    ([0], [0], [BLOCK // 2], 1, "not a multiple"),
    ([0, 0], [0], [BLOCK], 1, "different length"),
    ([0.5], [0], [BLOCK], 1, "integers"),
    ([0], [0], [BLOCK], 9, "layer 8: .*remote range"),  # only the last layer falls outside
    ([0], [0], [BLOCK], 0, "num_layers"),
])
def test_prepared_bad_descriptors_rejected_at_prepare(pair, loc, rem, length, layers, match):
    a, b, ra, rb, peer, dst = pair
    with pytest.raises(errors.InvalidArgument, match=match):
        a.prepare_put(peer, ra, rb.id, loc, rem, length, request_id=1, num_layers=layers,
                      remote_layer_stride=BLOCK, block_bytes=BLOCK)
    with pytest.raises(errors.TimedOut):
        b.wait_notice(1, 0, timeout=0.2)
    assert not dst.any()


def test_prepared_post_checks_layer_and_revalidates_after_revocation(pair):
    a, b, ra, rb, peer, dst = pair
    prepared = a.prepare_put(peer, ra, rb.id, [0], [0], [BLOCK], request_id=2, num_layers=2)
    with pytest.raises(errors.InvalidArgument, match="outside"):
        prepared.post(2)
    prepared.post(0)
    b.wait_notice(2, 0, timeout=5)
    prepared.wait(5)
    b.deregister(rb)

    def post_layer_1():
        prepared.post(1)
        prepared.wait(5)

    until_stale_rkey(post_layer_1, "a prepared post to a revoked region was never rejected")


def test_prepared_put_to_killed_peer_raises_peer_disconnected(remote, agent):
    region = agent.register(np.zeros(BLOCK * 4, dtype=np.uint8))
    peer = rendezvous(agent, remote.hello["address"], TOKEN, timeout=10)
    prepared = agent.prepare_put(peer, region, peer.region().id, [0], [0], [BLOCK],
                                 request_id=41, num_layers=10**6)
    for layer in range(20):
        prepared.post(layer)
    prepared.wait(5)
    remote.kill()
    start = time.monotonic()
    with pytest.raises(errors.PeerDisconnected):
        for layer in range(20, 10**6):  # keepalive (0.5 s) reports the death
            prepared.post(layer)
            if layer % 64 == 0:
                prepared.wait(10)
    assert time.monotonic() - start < 5.0
    with pytest.raises(errors.PeerDisconnected):
        prepared.wait(1)  # the failure is sticky: whatever was in flight is reported too
    agent.disconnect(peer.id)
    agent.deregister(region, timeout=2)


def test_notices_from_an_agent_that_never_joined_are_refused_and_counted():
    server, joiner, stranger = (Agent(TransferConfig()) for _ in range(3))
    try:
        region = server.register(np.zeros(BLOCK * 2, dtype=np.uint8))
        own = stranger.register(np.ones(BLOCK, dtype=np.uint8))
        with RendezvousServer(server, TOKEN) as rendezvous_server:
            peer = rendezvous(joiner, rendezvous_server.address, TOKEN, timeout=10)
        intruder = stranger.connect(server.local_info())  # an address learnt elsewhere
        stranger.wait(stranger.send_notice(intruder, 5, 0), 5)
        stranger.wait(stranger.put(intruder, own, region.id, [0], [0], [BLOCK], request_id=6,
                                   layer=0), 5)
        deadline = time.monotonic() + 5
        while server.num_refused_notices < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.num_refused_notices == 2
        for request_id in (5, 6):
            with pytest.raises(errors.TimedOut):
                server.wait_notice(request_id, 0, timeout=0.1)
        joiner.wait(joiner.send_notice(peer.id, 5, 0), 5)
        server.wait_notice(5, 0, timeout=5)  # the joined peer's notice is recorded
        assert server.num_refused_notices == 2 and server.notices(5).tolist() == [0]
    finally:
        for agent in (stranger, joiner, server):
            agent.close()


CONNECT_MALFORMED = """
import random, sys
from dualkv import errors
from dualkv.transfer import Agent, TransferConfig
agent, other = Agent(TransferConfig()), Agent(TransferConfig())
good = other.local_info()["address"]
rng = random.Random(16)
bad = [rng.randbytes(200) for _ in range(300)] + [rng.randbytes(rng.randrange(1, 400))
                                                  for _ in range(100)]
bad += [b"", good[:-1], good + b"x", good[:30] + bytes([good[30] ^ 1]) + good[31:],
        good[:17] + rng.randbytes(len(good) - 17), other.native.worker_address, "text"]
for i, address in enumerate(bad):
    try:
        agent.connect({"uid": i + 1, "address": address, "regions": []})
    except errors.InvalidArgument:
        continue
    sys.exit(f"malformed address {i} was accepted")
agent.connect(other.local_info())
print("survived", len(bad), "malformed addresses", flush=True)
"""


def test_connect_refuses_malformed_addresses_and_the_process_survives():
    out = subprocess.run([sys.executable, "-c", CONNECT_MALFORMED], env=peer_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-3000:]
    assert "survived 407 malformed addresses" in out.stdout
