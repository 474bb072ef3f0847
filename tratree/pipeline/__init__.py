"""The stage graph of an experiment, the runner that executes it against a store, and the stage actions."""
