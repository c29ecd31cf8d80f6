from dualkv.bench.trace import main; raise SystemExit(main())
