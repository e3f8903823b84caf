"""The runtime: loads an app, runs invocations, wires the monitor, sandboxes and gateway."""
