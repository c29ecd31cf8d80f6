"""Workloads shared by the demo, the benches, the simulator and the local cluster."""
