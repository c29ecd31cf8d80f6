from dualkv.bench.transfer import main

raise SystemExit(main())
