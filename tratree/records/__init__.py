"""Records and their text: trajectory, tree, pair and path formats, their fast readers, ReAct parsing and the
prompts that turn a trajectory into a conversation."""
