"""Building blocks for value-based RL: replay, networks, schedules, registry, checkpoints, logging."""
