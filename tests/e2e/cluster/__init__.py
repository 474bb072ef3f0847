"""A Kubernetes API emulator, a test kubelet and the operator as a subprocess, for tests and benchmarks."""
