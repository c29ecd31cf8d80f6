"""make test's torch: keep an installed CUDA build of torch (a GPU machine's own, so the
GPU-marked tests run); elsewhere install the pinned CPU build that lies on disk (a plain
`pip install torch` would pull CUDA wheels). `--dry-run` prints the decision only."""
import subprocess
import sys

PINNED = "torch==2.13.0"


def installed_cuda() -> str | None:
    """The CUDA version the installed torch was built for, None for a CPU build or no torch."""
    try:
        import torch
    except ImportError:
        return None
    return getattr(torch.version, "cuda", None)


def main(argv: list[str]) -> int:
    cuda = installed_cuda()
    if cuda:
        print(f"keeping the installed CUDA build of torch (CUDA {cuda})")
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", PINNED]
    print("installing the CPU build of torch: " + " ".join(cmd[2:]))
    return 0 if "--dry-run" in argv else subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
