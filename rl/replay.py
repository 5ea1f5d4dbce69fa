"""Experience replay with frames stored once.

Layout: ``num_envs`` streams advance in lockstep, one slot per agent step, so slot ``t`` of env
``e`` holds the newest frame of the observation the agent acted on at that step, the action, the
reward it earned and whether that step terminated/truncated. A stacked observation is rebuilt at
sample time from the ``stack`` newest slots of its stream; frames from before the start of the
episode are zeros, exactly as ale-py's frame stack pads a fresh game. A 1M-transition Breakout
replay is ``84*84 + 1 + 4 + 1 = 7,062`` bytes per transition, about 7.06 GB.

The vector envs run in ``SAME_STEP`` autoreset mode: the observation after an episode's last step
is already the first of the next episode, so no autoreset step ever reaches the buffer. A
truncated episode's final frame is kept aside (it is needed to bootstrap the time-limit cut);
a terminated one needs none, because its target does not bootstrap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

TERMINATED, TRUNCATED, FIRST = 1, 2, 4  # flag bits per slot


class Batch(NamedTuple):
    """A sampled mini-batch; ``discount`` is gamma^m for an m-step bootstrap, 0 after termination."""

    obs: np.ndarray        # [B, *obs_shape]
    action: np.ndarray     # int64[B]
    reward: np.ndarray     # float32[B], n-step discounted return
    discount: np.ndarray   # float32[B]
    next_obs: np.ndarray   # [B, *obs_shape]
    index: np.ndarray      # int64[B], flat slot ids (t * num_envs + env)
    weight: np.ndarray     # float32[B], importance weights (all 1 for uniform sampling)


@dataclass(frozen=True)
class ReplaySpec:
    capacity: int                 # transitions, all streams together
    num_envs: int
    obs_shape: tuple[int, ...]    # one env's observation, e.g. (4, 84, 84) or (4,)
    obs_dtype: np.dtype
    stack: int = 1                # >1: obs_shape[0] frames are stacked and stored once each
    n_step: int = 1
    gamma: float = 0.99
    num_actions: int = 256

    def __post_init__(self):
        if self.stack > 1 and self.obs_shape[0] != self.stack:
            raise ValueError(f"obs_shape {self.obs_shape} does not start with the stack size {self.stack}")

    @property
    def slots(self) -> int:
        """Slots per env stream."""
        return self.capacity // self.num_envs

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """What one slot stores: the newest frame of a stack, or the whole observation."""
        return tuple(self.obs_shape[1:]) if self.stack > 1 else tuple(self.obs_shape)


class StepWriter:
    """Something that stores vector steps: ``add`` takes each step's first-of-episode flags explicitly,
    ``add_step`` takes a step as the env returned it and keeps those flags itself (the step after an episode
    end begins the next one). The replay is one; an Ape-X actor's chunk recorder is another."""

    def __init__(self, num_envs: int):
        self.first = np.ones(num_envs, bool)    # whether each stream's next step begins an episode

    def add(self, obs, action, reward, terminated, truncated, first, final_obs=None) -> None:
        raise NotImplementedError

    def add_step(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, step) -> None:
        """Store what acting with ``action`` on ``obs`` [N, *obs_shape] gave: ``step`` is the env's
        envs.base.EnvStep (its flags and final observations), ``reward`` its reward as the learner sees it
        (clipped or not)."""
        self.add(obs, action, reward, step.terminated, step.truncated, self.first, step.final_obs)
        self.first = step.episode_end

    def episode_starts(self) -> list[bool]:
        """Which streams begin an episode at their next step (checkpoints keep it; see restart_episodes)."""
        return self.first.tolist()

    def restart_episodes(self, first) -> None:
        """Continue with ``first`` (from episode_starts) as the streams' next first-of-episode flags."""
        self.first = np.array(first, bool)


class StreamWindow:
    """Which slots of ``num_envs`` lockstep ring streams can be sampled, from the write position alone
    (``slots`` per stream, ``size`` filled, ``cursor`` next to write, ``stack`` frames of history and
    ``n`` steps of future per sample); shared by the host and the device replay."""

    stack: int
    n: int
    num_envs: int
    slots: int
    size: int
    cursor: int

    def __len__(self) -> int:
        """Transitions that can be sampled now."""
        lo, hi = self._age_range()
        return max(0, hi - lo + 1) * self.num_envs

    def _age_range(self) -> tuple[int, int]:
        """Sampleable ages (0 = oldest slot). The newest n slots lack their n-step future; once the
        buffer has wrapped, the oldest stack-1 slots lack their history."""
        lo = self.stack - 1 if self.size == self.slots else 0
        return lo, self.size - 1 - self.n

    def _oldest(self) -> int:
        return self.cursor if self.size == self.slots else 0


class ReplayBuffer(StepWriter, StreamWindow):
    """Uniform replay over ``num_envs`` lockstep streams; see the module docstring."""

    def __init__(self, spec: ReplaySpec, seed: int = 0):
        super().__init__(spec.num_envs)
        self.spec = spec
        self.stack, self.n, self.gamma, self.num_envs = spec.stack, spec.n_step, spec.gamma, spec.num_envs
        self.slots, self.frame_shape = spec.slots, spec.frame_shape
        action_dtype = np.uint8 if spec.num_actions <= 256 else np.int32
        # np.zeros maps untouched pages lazily: memory grows as the buffer fills.
        self.frames = np.zeros((self.slots, self.num_envs, *self.frame_shape), dtype=spec.obs_dtype)
        self.actions = np.zeros((self.slots, self.num_envs), dtype=action_dtype)
        self.rewards = np.zeros((self.slots, self.num_envs), dtype=np.float32)
        self.flags = np.zeros((self.slots, self.num_envs), dtype=np.uint8)
        self.final_frames: dict[int, np.ndarray] = {}  # flat slot id -> final frame of a truncated episode
        self.cursor = 0   # next slot to write
        self.size = 0     # slots written per stream
        self.rng = np.random.default_rng(seed)

    # --- writing --------------------------------------------------------------------------
    def newest_frame(self, obs: np.ndarray) -> np.ndarray:
        """The part of obs [N, *obs_shape] a slot stores: the newest frame of a stack, or the whole vector."""
        return obs[:, -1] if self.stack > 1 else obs

    def add(self, obs, action, reward, terminated, truncated, first, final_obs=None) -> None:
        """Store one vector step: ``obs`` [N, *obs_shape] is what the agent acted on, ``first[i]`` says it
        began an episode, ``final_obs`` [N, *obs_shape] holds the last observation of envs whose step was
        truncated (rows of other envs are ignored)."""
        t = self.cursor
        for e in range(self.num_envs):  # forget the final frames this write overwrites
            self.final_frames.pop(t * self.num_envs + e, None)
        self.frames[t] = self.newest_frame(obs)
        self.actions[t] = action
        self.rewards[t] = reward
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool) & ~terminated
        self.flags[t] = (terminated * TERMINATED | truncated * TRUNCATED
                         | np.asarray(first, dtype=bool) * FIRST).astype(np.uint8)
        if truncated.any():
            finals = self.newest_frame(final_obs)
            for e in np.flatnonzero(truncated):
                self.final_frames[t * self.num_envs + int(e)] = finals[e].copy()
        self.cursor = (t + 1) % self.slots
        self.size = min(self.size + 1, self.slots)

    def cut_streams(self, tail_obs: np.ndarray) -> None:
        """End every stream that is still open at its newest slot, as a time-limit cut that bootstraps from
        ``tail_obs`` [N, *obs_shape] (the observation after that slot; a stack of one is read as its newest
        frame, as ``add`` reads it). For a writer that restarts its envs (a restarted Ape-X actor): no n-step
        window may run on from its old episodes into the fresh ones, which begin at the next step."""
        if self.size == 0:
            return
        t = (self.cursor - 1) % self.slots
        frames = self.newest_frame(tail_obs)
        for e in np.flatnonzero((self.flags[t] & (TERMINATED | TRUNCATED)) == 0):
            self.flags[t, e] |= TRUNCATED
            self.final_frames[t * self.num_envs + int(e)] = np.array(frames[e])
        self.first[:] = True

    # --- flat slot ids (t * num_envs + env), as Batch.index holds them -------------------------
    def id_count(self) -> int:
        """Flat slot ids run over 0 .. id_count() - 1."""
        return self.slots * self.num_envs

    def ready_ids(self, steps: int) -> np.ndarray:
        """The flat ids of the ``steps`` newest vector steps that have their n-step future, oldest step
        first, env by env within a step: where initial priorities computed for those steps belong."""
        ts = (self.cursor - 1 - self.n - np.arange(steps)[::-1]) % self.slots
        return (ts[:, None] * self.num_envs + np.arange(self.num_envs)).ravel()

    def overwritten(self, ids: np.ndarray, writes: int) -> np.ndarray:
        """bool[len(ids)]: whether the slot of each id was written in the last ``writes`` vector steps, so a
        priority computed for what it held before no longer applies."""
        return (np.asarray(ids) // self.num_envs - (self.cursor - writes)) % self.slots < writes

    def transitions(self, ids: np.ndarray) -> Batch:
        """The transitions at flat ``ids``, weight 1 each, as sampling would return them."""
        t, env = np.divmod(np.asarray(ids), self.num_envs)
        return self.gather(t, env, np.ones(len(t), np.float32))

    def mass(self) -> float:
        """What a draw across several buffers weighs this one by: its sampleable transitions (uniform)."""
        return float(len(self))

    # --- reading --------------------------------------------------------------------------
    def stacks(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        """Observations at slots ``t`` [B] of streams ``env`` [B], frames before an episode start zeroed."""
        if self.stack == 1:
            return self.frames[t, env]
        offsets = np.arange(-self.stack + 1, 1)
        ts = (t[:, None] + offsets) % self.slots                              # [B, S]
        frames = self.frames[ts, env[:, None]]                                # [B, S, *frame]
        first = (self.flags[ts, env[:, None]] & FIRST) != 0                   # [B, S]
        # frame j is from an earlier episode if any later frame j' in (j, S) starts one
        later_first = np.flip(np.cumsum(np.flip(first[:, 1:], 1), 1), 1) > 0  # [B, S-1]
        stale = np.concatenate([later_first, np.zeros_like(first[:, :1])], 1)
        frames[stale] = 0
        return frames

    def sample(self, batch_size: int) -> Batch:
        lo, hi = self._age_range()
        if hi < lo:
            raise ValueError("replay buffer holds no complete transition yet")
        age = self.rng.integers(lo, hi + 1, size=batch_size)
        env = self.rng.integers(0, self.num_envs, size=batch_size)
        t = (self._oldest() + age) % self.slots
        return self.gather(t, env, np.ones(batch_size, dtype=np.float32))

    def gather(self, t: np.ndarray, env: np.ndarray, weight: np.ndarray) -> Batch:
        """The batch for slots ``t`` [B] of streams ``env`` [B]: stacks, n-step returns, discounts, bootstrap obs."""
        n, B = self.n, len(t)
        ts = (t[:, None] + np.arange(n)) % self.slots                           # [B, n]
        flags = self.flags[ts, env[:, None]]
        ended = (flags & (TERMINATED | TRUNCATED)) != 0                          # [B, n]
        # step i counts if no earlier step of the window ended the episode (or the life)
        alive = np.concatenate([np.ones((B, 1), bool), np.cumprod(~ended[:, :-1], 1).astype(bool)], 1)
        powers = self.gamma ** np.arange(n, dtype=np.float64)
        ret = (self.rewards[ts, env[:, None]] * alive * powers).sum(1)
        stop = np.where(ended.any(1), ended.argmax(1), n - 1)                    # last step used
        last_flags = flags[np.arange(B), stop]
        m = stop + 1                                                            # steps taken
        discount = np.where(last_flags & TERMINATED, 0.0, self.gamma ** m)
        next_t = (t + m) % self.slots
        next_obs = self.stacks(next_t, env)
        truncated = np.flatnonzero(last_flags & TRUNCATED)
        for b in truncated:  # rare: bootstrap from the kept final frame of a time-limit cut
            next_obs[b] = self._final_stack(int(ts[b, stop[b]]), int(env[b]))
        return Batch(
            obs=self.stacks(t, env),
            action=self.actions[t, env].astype(np.int64),
            reward=ret.astype(np.float32),
            discount=discount.astype(np.float32),
            next_obs=next_obs,
            index=t.astype(np.int64) * self.num_envs + env,
            weight=weight,
        )

    def _final_stack(self, t: int, env: int) -> np.ndarray:
        final = self.final_frames[t * self.num_envs + env]
        if self.stack == 1:
            return final
        prev = self.stacks(np.array([t]), np.array([env]))[0]
        return np.concatenate([prev[1:], final[None]], 0)

    # --- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain arrays and counters; with the RNG state, resuming samples exactly as before."""
        keys = np.array(sorted(self.final_frames), dtype=np.int64)
        finals = (np.stack([self.final_frames[k] for k in keys]) if len(keys)
                  else np.zeros((0, *self.frame_shape), self.frames.dtype))
        used = self.size
        return {
            "frames": self.frames[:used], "actions": self.actions[:used], "rewards": self.rewards[:used],
            "flags": self.flags[:used], "final_keys": keys, "final_frames": finals,
            "cursor": np.int64(self.cursor), "size": np.int64(self.size),
            "rng": np.frombuffer(json.dumps(self.rng.bit_generator.state).encode(), dtype=np.uint8),
        }

    def load_state_dict(self, state: dict) -> None:
        used = int(state["size"])
        if state["frames"].shape[1:] != self.frames.shape[1:] or used > self.slots:
            raise ValueError(f"saved replay {state['frames'].shape} does not fit this buffer {self.frames.shape}")
        self.frames[:used] = state["frames"]
        self.actions[:used] = state["actions"]
        self.rewards[:used] = state["rewards"]
        self.flags[:used] = state["flags"]
        self.final_frames = {int(k): f.copy() for k, f in zip(state["final_keys"], state["final_frames"])}
        self.cursor, self.size = int(state["cursor"]), used
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())

    @staticmethod
    def bytes_per_transition(spec: ReplaySpec) -> int:
        """Storage bytes per transition by construction (rare final frames of truncations aside):
        one frame, one action, one float32 reward, one flag byte."""
        frame_shape = spec.obs_shape[1:] if spec.stack > 1 else spec.obs_shape
        frame = int(np.prod(frame_shape)) * np.dtype(spec.obs_dtype).itemsize
        action = 1 if spec.num_actions <= 256 else 4
        return frame + action + 4 + 1


class SumTree:
    """Binary tree over ``capacity`` leaves whose nodes hold the sum of their children.

    Vectorised: ``set`` updates many leaves and their ancestors level by level; ``find`` walks many
    prefix sums down at once. Leaves live at ``tree[size:size + capacity]``.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 1 << max(0, (capacity - 1).bit_length())   # leaves rounded up to a power of two
        self.tree = np.zeros(2 * self.size, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, index: np.ndarray) -> np.ndarray:
        return self.tree[self.size + np.asarray(index)]

    def set(self, index: np.ndarray, value: np.ndarray) -> None:
        node = self.size + np.asarray(index, dtype=np.int64)
        self.tree[node] = value
        node = np.unique(node // 2)
        while node[0] >= 1:
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node // 2)

    def find(self, prefix: np.ndarray) -> np.ndarray:
        """Leaf i with cumsum(leaves)[i-1] <= prefix < cumsum(leaves)[i], for each prefix."""
        node = np.ones(len(prefix), dtype=np.int64)
        prefix = np.array(prefix, dtype=np.float64)
        while node[0] < self.size:
            left = 2 * node
            go_right = prefix >= self.tree[left]
            prefix = np.where(go_right, prefix - self.tree[left], prefix)
            node = np.where(go_right, left + 1, left)
        return np.minimum(node - self.size, self.capacity - 1)


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016): P(i) = p_i^alpha / sum_k p_k^alpha.

    Invariant: a slot has non-zero priority exactly when it can be sampled, so the tree never
    yields a transition without its n-step future or its frame history. New transitions enter
    with the largest priority seen so far.
    """

    def __init__(self, spec: ReplaySpec, seed: int = 0, alpha: float = 0.5, eps: float = 1e-6):
        super().__init__(spec, seed)
        self.alpha, self.eps = alpha, eps
        self.tree = SumTree(self.slots * self.num_envs)
        self.max_priority = 1.0

    def _slot_ids(self, t: int) -> np.ndarray:
        return t * self.num_envs + np.arange(self.num_envs)

    def add(self, *args, **kwargs) -> None:
        t = self.cursor
        super().add(*args, **kwargs)
        zero = np.zeros(self.num_envs)
        self.tree.set(self._slot_ids(t), zero)                               # no n-step future yet
        if self.size == self.slots:                                          # the oldest slots lost their history
            for k in range(1, self.stack):
                self.tree.set(self._slot_ids((t + k) % self.slots), zero)
        if self.size > self.n:
            ready = (t - self.n) % self.slots                                # now has its n-step future
            lo, hi = self._age_range()
            if lo <= (ready - self._oldest()) % self.slots <= hi:
                self.tree.set(self._slot_ids(ready), np.full(self.num_envs, self.max_priority ** self.alpha))

    def sample(self, batch_size: int, beta: float = 0.4) -> Batch:
        total = self.tree.total
        if total <= 0:
            raise ValueError("replay buffer holds no complete transition yet")
        # stratified: one uniform draw inside each of batch_size equal slices of the total mass
        prefix = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)
        index = self.tree.find(np.minimum(prefix, total * (1 - 1e-12)))
        empty = self.tree.get(index) <= 0
        if empty.any():  # float drift in the partial sums can land on an empty leaf: step back into mass
            index[empty] = self.tree.find(prefix[empty] * (1 - 1e-6) - total * 1e-9)
        p = self.tree.get(index) / total                                     # P(i)
        weight = (len(self) * p) ** (-beta)
        weight = (weight / weight.max()).astype(np.float32)                  # normalised so updates only shrink
        t, env = np.divmod(index, self.num_envs)
        return self.gather(t, env, weight)

    def mass(self) -> float:
        """The total priority mass sum_k p_k^alpha: what a draw across several buffers weighs this one by."""
        return self.tree.total

    def mass_at(self, index: np.ndarray) -> np.ndarray:
        """p_i^alpha of flat ``index``: the share of the mass a draw gives each."""
        return self.tree.get(index)

    def update_priorities(self, index: np.ndarray, priority: np.ndarray) -> None:
        """Set p_i = |delta_i| + eps for sampled ``index`` (flat slot ids)."""
        priority = np.asarray(priority, dtype=np.float64) + self.eps
        index = np.asarray(index)
        # a slot that became unsampleable since it was drawn stays at zero
        alive = self.tree.get(index) > 0
        if alive.any():
            self.tree.set(index[alive], priority[alive] ** self.alpha)
        self.max_priority = max(self.max_priority, float(priority.max()))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "priorities": self.tree.tree.copy(),
                "max_priority": np.float64(self.max_priority)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.tree.tree[:] = state["priorities"]
        self.max_priority = float(state["max_priority"])
