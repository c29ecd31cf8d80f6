"""SGLang's tests run in ~/.cache/dualkv/venvs/sglang (`make test-sglang`); in the main suite they skip.

Where SGLang is installed, its GPU-only imports (torchvision, triton) are served placeholders
before the first `import sglang` (dualkv.testing.sglang_cpu), and its JIT cache goes to
a temporary directory.
"""
import importlib.util

if importlib.util.find_spec("sglang") is not None:
    from dualkv.testing.sglang_cpu import install_import_placeholders, prepare_environment

    prepare_environment()
    install_import_placeholders()
