"""Command-line programs: thin wrappers that parse, validate and call into rl, agents and envs."""
