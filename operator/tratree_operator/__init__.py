"""The tratree Kubernetes operator: W2SGExperiment resources run as one Job per stage."""
