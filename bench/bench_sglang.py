import sys

from dualkv.bench.sglang import main

sys.exit(main())
