from dualkv.bench.index import main; raise SystemExit(main())
