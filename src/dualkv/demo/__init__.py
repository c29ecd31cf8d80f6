"""`dualkv demo`: the main job, runnable end to end on one machine."""
