from dualkv.bench.keys import main; raise SystemExit(main())
