from dualkv.bench.sim_split import main

if __name__ == "__main__":
    raise SystemExit(main())
