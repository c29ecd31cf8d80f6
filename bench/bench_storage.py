import sys

from dualkv.bench.storage import main

sys.exit(main())
