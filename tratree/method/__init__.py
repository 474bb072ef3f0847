"""The method of the paper, free of torch and pydantic: trajectory trees, TreeDPO pairs, offline MCTS, the tree viewer,
and the sentence embeddings of similarity merging."""
