"""The agent in its environments: rollouts, exploration, evaluation, expert trajectories and the pretraining corpus."""
