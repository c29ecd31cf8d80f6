"""fio as the reference of `dualkv bench storage`: the same files, block size and queue depth,
and I/O buffers on the same kind of pages as the store's pool.

The page kind matters on this virtio disk: an O_DIRECT read into 2 MiB pages goes out in
fewer, larger segments than one into 4 KiB pages, so a store on huge pages beside fio on
malloc'd 4 KiB buffers would compare the memory, not the I/O path. fio has no option for
transparent huge pages (the store's default, `4KiB+THP`), so its buffers are a file on a
tmpfs mounted with `huge=always`, mapped shared (`--iomem=mmapshared:<file>`): shmem THP. A
hugetlb pool (`hugetlb-2MiB`) gets fio's `--iomem=shmhuge`, a plain pool fio's malloc.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

HUGE_BYTES = 2 << 20

# the store's pool page kind -> the name of fio's matching buffer kind
REF_PAGES = {"4KiB+THP": "shmem+THP", "hugetlb-2MiB": "hugetlb-2MiB", "4KiB": "4KiB"}


class FioBuffers:
    """fio's `--iomem` arguments for buffers of `page_kind`, holding the tmpfs it needs.

    `error` says why the matching kind is not available here (mounting needs root); then
    `args` is None and the caller leaves that row without a reference rather than compare
    across page kinds."""

    def __init__(self, page_kind: str, num_bytes: int):
        self.page_kind, self.mount_dir, self.error = page_kind, None, None
        self.ref_pages = REF_PAGES.get(page_kind)
        if self.ref_pages is None:
            self.args, self.error = None, f"no fio buffer kind for pool pages {page_kind!r}"
        elif page_kind == "4KiB":
            self.args = ["--iomem=malloc"]
        elif page_kind == "hugetlb-2MiB":
            self.args = ["--iomem=shmhuge"]
        else:
            self.args = self._thp_file(num_bytes)

    def _thp_file(self, num_bytes: int) -> list[str] | None:
        # fio's buffers are iodepth x bs plus alignment; a spare huge page covers the rest.
        size = -(-num_bytes // HUGE_BYTES) * HUGE_BYTES + 2 * HUGE_BYTES
        self.mount_dir = tempfile.mkdtemp(prefix="dualkv-fio-thp-")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"huge=always,size={size}",
                               "dualkv-fio-thp", self.mount_dir], capture_output=True, text=True)
        if done.returncode != 0:
            self.error = f"cannot mount a huge=always tmpfs: {done.stderr.strip()}"
            os.rmdir(self.mount_dir)
            self.mount_dir = None
            return None
        path = os.path.join(self.mount_dir, "buffers")
        # fio does not size a file it maps shared (it would fault past the end): size it here.
        with open(path, "wb") as f:
            f.truncate(size)
        return [f"--iomem=mmapshared:{path}"]

    def close(self) -> None:
        if self.mount_dir is not None:
            subprocess.run(["umount", self.mount_dir], capture_output=True)
            os.rmdir(self.mount_dir)
            self.mount_dir = None


def link_files(paths, workdir) -> str:
    """Hard links to the block files in one folder: fio's `opendir` reads exactly these files
    (the same inodes and disk blocks), where a `filename=` list would pass fio's 4 KiB limit."""
    folder = os.path.join(workdir, "fio-files")
    os.makedirs(folder)
    for i, path in enumerate(paths):
        os.link(path, os.path.join(folder, str(i)))
    return folder


def read_command(folder: str, num_files: int, block_bytes: int, depth: int,
                 mem_args: list[str]) -> list[str]:
    return ["fio", "--output-format=json", "--name=blocks", "--ioengine=io_uring", "--direct=1",
            "--rw=read", f"--bs={block_bytes}", f"--iodepth={depth}", "--fixedbufs=1",
            f"--opendir={folder}", f"--size={block_bytes * num_files}"] + mem_args


def read_bytes_per_s(folder: str, num_files: int, block_bytes: int, depth: int,
                     mem_args: list[str]) -> float:
    """fio's read bandwidth (bytes/s) over the same files, one block-sized read per file."""
    cmd = read_command(folder, num_files, block_bytes, depth, mem_args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"fio failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return parse_read_bw(done.stdout)


def parse_read_bw(out: str) -> float:
    """Read bytes/s of fio's JSON output (`jobs[0].read.bw_bytes`: the whole job). fio may
    print notes before the document; a job that reports an error has no figure."""
    if "{" not in out:
        raise RuntimeError(f"fio printed no JSON: {out[-500:]!r}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio job failed with error {job['error']}")
    return float(job["read"]["bw_bytes"])
