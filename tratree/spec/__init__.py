"""The W2SGExperiment resource: its spec (pydantic) and the CRD generated from it."""
