"""One module per `dualkv` command (see dualkv.cli)."""
