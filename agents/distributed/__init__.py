"""Ape-X on Ray (Horgan et al. 2018, https://arxiv.org/abs/1803.00933): distributed acting, one learner.

    rl-train --preset cartpole --actors 2                      # Ray started here with this machine's cores
    rl-train --preset breakout --actors 8 --ray-address auto   # join the cluster 'ray start' runs

The layout; the only new code is the moving of data between the usual pieces:

    ActorWorker i (Ray actor)  make_env + an acting copy of DQNAgent, epsilon_i from Ape-X's spread (fixed,
                               or annealed down to it with actor_epsilon_anneal; the learner sends it);
                               every actor_chunk_steps vector steps it sends a Chunk (and, with prioritized
                               replay, the chunk's initial priorities) to the replay server
    ReplayServer (Ray actor)   one rl.replay buffer per actor, so an actor's env streams never mix with
                               another's; samples across them in proportion to size (or priority mass)
    learner (this process)     DQNAgent.update on sampled batches; publishes the Q weights through Ray's
                               object store every weight_sync_every updates

The learner keeps the single-process schedule: one update per train_frequency agent steps collected
(the replay ratio of the presets), a hard target sync every target_update agent steps, and
actors wait while the learner owes more than one round of chunks. Exact resume is not attempted: the
replay lives in a Ray actor (possibly on another node) and is not saved; --resume restores the learner
(weights, optimizer, counters) and refills learning_starts steps before updating again.

Where each piece lives:

    cluster.py         Ray connection, the layout check, Ape-X's epsilons, what crosses the object store
    chunk.py           Chunk, what an actor sends, and the ChunkRecorder that builds one step by step
    replay_server.py   ReplayServer
    actor.py           ActorWorker
    fleet.py           start_workers, and the learner's view of its actors (Fleet)
    learner.py         DistributedTrainer, on the run skeleton of agents/run.py

Only this package imports Ray (scripts/sweep.py too, to run single-process runs as Ray tasks); the
single-process package never does.
"""
import importlib.util

if importlib.util.find_spec("ray") is None:  # pragma: no cover - exercised only without the extra
    raise ImportError("distributed training needs Ray: pip install -e '.[distributed]'")
