import sys

from dualkv.bench.vllm import main

sys.exit(main())
