"""Agents assembled from rl building blocks: DQN (with Rainbow-family switches) and supervised baselines."""
