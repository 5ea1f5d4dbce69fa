"""Replay memory held in torch tensors on one device, sampled with tensor gathers.

Same layout and semantics as :mod:`rl.replay` (read its module docstring first): ``num_envs`` lockstep
streams, one slot per agent step holding the newest frame of the observation acted on, the action, the
reward and a flag byte; stacks rebuilt at sample time with frames from before an episode's start
zeroed; n-step returns cut at the first terminated or truncated step; a truncated episode's final frame
kept aside to bootstrap the time-limit cut. What differs is where the work happens: a batch is built
by a fixed sequence of gathers on the buffer's device (indices drawn with a ``torch.Generator`` there),
with no host copy and no host sync, so on a GPU the learner's batch never crosses PCIe.

Kept aside: the final frames of truncated episodes live in a small pool tensor, ``final_row`` maps a
slot to its pool row (row 0 is a spare zero frame for every other slot), and the host keeps the
slot -> row map only to recycle rows when ``add`` overwrites a slot. Sampling adds every row's pool
frame to its bootstrap stack (the zero frame except after a time-limit cut) rather than looping on the host.

Priorities (:class:`DevicePrioritizedReplayBuffer`) are a float64 tensor over all slots in blocks of
~sqrt(capacity) with a sum per block; a stratified draw is cumsum + ``searchsorted`` over the block sums,
then over the chosen block's leaves, by the rule of :meth:`rl.replay.SumTree.find`: a fixed handful of ops
in place of a sum tree's ~20 dependent gathers, and O(B * sqrt(capacity)) work rather than a scan of all
priorities.

State dicts hold the same keys and numpy arrays as :class:`rl.replay.ReplayBuffer` (and the prioritized
one's sum tree), so either replay loads the other's state. The random streams cannot be carried across
(numpy PCG64 vs torch's generator): a device state also holds ``torch_rng``, a same-device round trip
samples identically, and a cross load continues with a generator seeded from a hash of the saved one.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from rl.replay import FIRST, TERMINATED, TRUNCATED, Batch, ReplayBuffer, ReplaySpec, StepWriter, StreamWindow


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _host_bool(x) -> np.ndarray:
    """Episode flags are needed on the host (which slots keep a final frame): one tiny copy if on a device."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=bool)


def _seed_from(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") & (2**63 - 1)


class DeviceReplayBuffer(StepWriter, StreamWindow):
    """Uniform replay in ``device`` memory; ``add``/``sample``/``gather``/``state_dict`` as ReplayBuffer's,
    with torch tensors on ``device`` in the returned :class:`Batch`."""

    def __init__(self, spec: ReplaySpec, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__(spec.num_envs)
        self.spec = spec
        self.device = torch.device(device)
        self.stack, self.n, self.gamma, self.num_envs = spec.stack, spec.n_step, spec.gamma, spec.num_envs
        self.slots, self.frame_shape = spec.slots, spec.frame_shape
        dev, N = self.device, self.num_envs
        self.frame_dtype = torch_dtype(spec.obs_dtype)
        action_dtype = torch.uint8 if spec.num_actions <= 256 else torch.int32
        # zeros, not empty: before the first wrap a stack's window reaches into unwritten slots, which must
        # read as zero frames with no flags, as they do in the numpy replay. One frame more than the ring:
        # the last row stays zero, and a stack's frames from before its episode are gathered from it.
        self._frame_rows = self._zeros((self.slots * N + 1, *self.frame_shape), self.frame_dtype)
        self.zero_row = self.slots * N
        self.frames = self._frame_rows[:-1].view(self.slots, N, *self.frame_shape)
        self.actions = self._zeros((self.slots, N), action_dtype)
        self.rewards = self._zeros((self.slots, N), torch.float32)
        self.flags = self._zeros((self.slots, N), torch.uint8)
        self.final_row = self._zeros((self.slots, N), torch.int64)  # 0: no final frame
        self.final_pool = torch.zeros((1, *self.frame_shape), dtype=self.frame_dtype, device=dev)
        self._final_rows: dict[int, int] = {}   # host: flat slot id -> pool row, to recycle rows
        self._free_rows: list[int] = []
        self.cursor = 0   # next slot to write
        self.size = 0     # slots written per stream
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)
        # constants of the gathers, made once: float64 as in the numpy replay, so returns match it bit for bit
        self._steps = torch.arange(self.n, device=dev)
        self._offsets = torch.arange(-self.stack + 1, 1, device=dev)
        self._positions = torch.arange(self.stack, device=dev)
        self._powers = torch.from_numpy(self.gamma ** np.arange(self.n, dtype=np.float64)).to(dev)
        self._discounts = torch.from_numpy(self.gamma ** np.arange(self.n + 1)).to(dev)  # gamma^m, m steps taken

    def _zeros(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """On CPU through numpy, whose large allocations are lazily mapped (memory grows as the buffer
        fills) and madvised for transparent huge pages, which speeds up random frame gathers."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
        return torch.zeros(shape, dtype=dtype, device=self.device)

    # --- writing --------------------------------------------------------------------------
    def newest_frame(self, obs):
        """The part of obs [N, *obs_shape] a slot stores: the newest frame of a stack, or the whole vector."""
        return obs[:, -1] if self.stack > 1 else obs

    @staticmethod
    def _put(dst: torch.Tensor, src) -> None:
        if isinstance(src, np.ndarray) and not src.flags.writeable:
            src = src.copy()             # torch warns on (and will not promise to respect) read-only arrays
        dst.copy_(torch.as_tensor(src))  # casts, and copies across devices

    def add(self, obs, action, reward, terminated, truncated, first, final_obs=None) -> None:
        """Store one vector step (numpy arrays or torch tensors on any device), as ReplayBuffer.add does:
        ``obs`` [N, *obs_shape] is what the agent acted on, ``first[i]`` says it began an episode,
        ``final_obs`` [N, *obs_shape] holds the last observation of envs whose step was truncated."""
        t, N = self.cursor, self.num_envs
        for e in range(N):  # recycle the pool rows of the final frames this write overwrites
            row = self._final_rows.pop(t * N + e, None)
            if row is not None:
                self._free_rows.append(row)
        self._put(self.frames[t], self.newest_frame(obs))
        self._put(self.actions[t], action)
        self._put(self.rewards[t], reward)
        terminated = _host_bool(terminated)
        truncated = _host_bool(truncated) & ~terminated
        flags = terminated * TERMINATED | truncated * TRUNCATED | _host_bool(first) * FIRST
        self._put(self.flags[t], flags.astype(np.uint8))
        rows = np.zeros(N, dtype=np.int64)
        if truncated.any():
            finals = self.newest_frame(final_obs)
            for e in np.flatnonzero(truncated):
                rows[e] = self._store_final(finals[int(e)])
                self._final_rows[t * N + int(e)] = int(rows[e])
        self._put(self.final_row[t], rows)
        self.cursor = (t + 1) % self.slots
        self.size = min(self.size + 1, self.slots)

    def _store_final(self, frame) -> int:
        if not self._free_rows:  # grow the pool by doubling; live rows are few (one per stored truncation)
            old = len(self.final_pool)
            self.final_pool = torch.cat([self.final_pool, torch.zeros_like(self.final_pool)])
            self._free_rows = list(range(2 * old - 1, old - 1, -1))
        row = self._free_rows.pop()
        self._put(self.final_pool[row], frame)
        return row

    # --- reading --------------------------------------------------------------------------
    def sample(self, batch_size: int) -> Batch:
        lo, hi = self._age_range()  # host counters: no device sync
        if hi < lo:
            raise ValueError("replay buffer holds no complete transition yet")
        # one draw over the (age, env) pairs; flat slot ids are consecutive from the oldest sampleable one
        k = torch.randint(0, (hi - lo + 1) * self.num_envs, (batch_size,), generator=self.generator,
                          device=self.device)
        index = ((self._oldest() + lo) * self.num_envs + k) % (self.slots * self.num_envs)
        ones = torch.ones(batch_size, dtype=torch.float32, device=self.device)
        return self.gather(index // self.num_envs, index % self.num_envs, ones)

    def gather(self, t: torch.Tensor, env: torch.Tensor, weight: torch.Tensor) -> Batch:
        """The batch for slots ``t`` [B] of streams ``env`` [B] (int64 on the device): stacks, n-step
        returns, discounts, bootstrap obs. Equal, element for element, to ReplayBuffer.gather."""
        N = self.num_envs
        # ``take`` and ``index_select`` rather than ``x[index]``: on CPU, advanced indexing is 6-10x slower
        slot = ((t[:, None] + self._steps) % self.slots) * N + env[:, None]        # [B, n] flat slot ids
        flags = self.flags.take(slot)
        ended = (flags & (TERMINATED | TRUNCATED)) != 0
        # step i counts if no earlier step of the window ended the episode (or the life)
        alive = ended.cumsum(1) == ended.long()
        ret = (self.rewards.take(slot) * alive * self._powers).sum(1)
        m = alive.sum(1)                                                          # steps taken
        last = slot.gather(1, (m - 1)[:, None])[:, 0]                             # slot of the last step
        last_flags = self.flags.take(last)
        discount = torch.where((last_flags & TERMINATED) != 0, 0.0, self._discounts.take(m))
        truncated = (last_flags & TRUNCATED) != 0
        final = self.final_pool.index_select(0, self.final_row.take(last))      # zero frame unless truncated
        obs, next_obs = self._stacks(t, (t + m) % self.slots, env, truncated, final)
        return Batch(obs=obs, action=self.actions.take(slot[:, 0]).long(), reward=ret.float(),
                     discount=discount.float(), next_obs=next_obs, index=slot[:, 0], weight=weight)

    def _stacks(self, t, next_t, env, truncated, final):
        """Observations at ``t`` and bootstrap observations at ``next_t`` in one gather; a truncated row's
        bootstrap stack is the stack before the cut shifted by one, ending in the kept final frame.

        Frames to be zeroed are gathered from the zero row rather than zeroed after the gather (a second
        pass over the batch), and ``final`` is the zero frame on rows that are not truncated, so it is
        simply added to the newest frame, which is gathered from the zero row on truncated rows."""
        N, B, S = self.num_envs, len(t), self.stack
        both, env2 = torch.cat([t, next_t]), torch.cat([env, env])
        cut = torch.cat([torch.zeros_like(truncated), truncated])                   # [2B]
        if S == 1:
            row = torch.where(cut, self.zero_row, both * N + env2)
            out = self._frame_rows.index_select(0, row)
            out[B:] += final
            return out[:B], out[B:]
        slot = ((both[:, None] + self._offsets) % self.slots) * N + env2[:, None]  # [2B, S]
        first = (self.flags.take(slot) & FIRST) != 0
        # at a cut, the newest position holds the final frame of the episode, not the next one's start
        first[:, -1] &= ~cut
        # frames before the newest episode start in the window are from an earlier episode: zero them
        newest_start = (first * self._positions).amax(1)
        keep = self._positions >= newest_start[:, None]                             # [2B, S]
        keep[:, -1] &= ~cut                                                         # makes room for the final frame
        row = torch.where(keep, slot, self.zero_row)
        stacks = self._frame_rows.index_select(0, row.view(-1)).view(2 * B, S, *self.frame_shape)
        stacks[B:, -1] += final
        return stacks[:B], stacks[B:]

    # --- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """ReplayBuffer's keys and numpy arrays (host copies), plus ``torch_rng``; loadable by either."""
        keys = np.array(sorted(self._final_rows), dtype=np.int64)
        rows = torch.tensor([self._final_rows[int(k)] for k in keys], dtype=torch.int64, device=self.device)
        rng = self.generator.get_state().cpu().numpy()
        # a numpy replay loading this state continues with a PCG64 seeded from this generator's state
        numpy_rng = np.random.default_rng(_seed_from(rng.tobytes())).bit_generator.state
        used = self.size
        return {
            "frames": self.frames[:used].cpu().numpy(), "actions": self.actions[:used].cpu().numpy(),
            "rewards": self.rewards[:used].cpu().numpy(), "flags": self.flags[:used].cpu().numpy(),
            "final_keys": keys, "final_frames": self.final_pool[rows].cpu().numpy(),
            "cursor": np.int64(self.cursor), "size": np.int64(self.size),
            "rng": np.frombuffer(json.dumps(numpy_rng).encode(), dtype=np.uint8), "torch_rng": rng,
        }

    def load_state_dict(self, state: dict) -> None:
        used = int(state["size"])
        if tuple(state["frames"].shape[1:]) != tuple(self.frames.shape[1:]) or used > self.slots:
            raise ValueError(f"saved replay {state['frames'].shape} does not fit this buffer "
                             f"{tuple(self.frames.shape)}")
        for name in ("frames", "actions", "rewards", "flags"):
            self._put(getattr(self, name)[:used], state[name])
        keys = np.asarray(state["final_keys"], dtype=np.int64)
        self.final_pool = torch.zeros((len(keys) + 1, *self.frame_shape), dtype=self.frame_dtype,
                                      device=self.device)
        self._put(self.final_pool[1:], state["final_frames"])
        self._final_rows = {int(k): i + 1 for i, k in enumerate(keys)}
        self._free_rows = []
        self.final_row.zero_()
        self.final_row.view(-1)[torch.as_tensor(keys, device=self.device)] = torch.arange(
            1, len(keys) + 1, device=self.device)
        self.cursor, self.size = int(state["cursor"]), used
        self._load_rng(state)

    def _load_rng(self, state: dict) -> None:
        if "torch_rng" in state:
            try:
                self.generator.set_state(torch.as_tensor(np.asarray(state["torch_rng"], dtype=np.uint8)))
                return
            except RuntimeError:  # saved by a generator of another device type
                pass
            self.generator.manual_seed(_seed_from(np.asarray(state["torch_rng"]).tobytes()))
        else:  # a numpy replay's state: its PCG64 stream cannot continue here
            self.generator.manual_seed(_seed_from(np.asarray(state["rng"]).tobytes()))

    @staticmethod
    def bytes_per_transition(spec: ReplaySpec) -> int:
        """The numpy replay's layout, plus the 8-byte ``final_row`` index per slot."""
        return ReplayBuffer.bytes_per_transition(spec) + 8


class DevicePrioritizedReplayBuffer(DeviceReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016) with PrioritizedReplayBuffer's rules:
    P(i) = p_i^alpha / sum_k p_k^alpha, stratified draws, w_i = (len * P(i))^-beta / max_batch w.

    Invariant (as there): a slot has non-zero priority exactly when it can be sampled. New transitions
    enter with the largest priority seen so far, kept as a device scalar so no update reads back to the host.

    In place of a sum tree (one dependent gather per level, ~20 for a 1M replay), a two-level table: leaves
    in blocks of ``block`` (a power of two >= sqrt(capacity)) and each block's sum, recomputed from its
    leaves whenever one changes (no drift). A draw is a cumsum + searchsorted over the block sums, then over
    the leaves of the chosen block: O(B * sqrt(capacity)) work per batch in a fixed number of ops.
    """

    def __init__(self, spec: ReplaySpec, seed: int = 0, device: str | torch.device = "cpu",
                 alpha: float = 0.5, eps: float = 1e-6):
        super().__init__(spec, seed, device)
        self.alpha, self.eps = alpha, eps
        capacity = self.slots * self.num_envs
        self.block = 1
        while self.block * self.block < capacity:
            self.block *= 2
        blocks = -(-capacity // self.block)
        self._leaves = torch.zeros((blocks, self.block), dtype=torch.float64, device=self.device)  # padded
        self.priorities = self._leaves.view(-1)[:capacity]            # p_i^alpha per flat slot id
        self.block_sums = torch.zeros(blocks, dtype=torch.float64, device=self.device)
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    def _resum(self, blocks: torch.Tensor) -> None:
        """Recompute the sums of ``blocks`` (repeats allowed) from their leaves."""
        self.block_sums[blocks] = self._leaves.index_select(0, blocks).sum(1)

    def add(self, *args, **kwargs) -> None:
        t, N = self.cursor, self.num_envs
        super().add(*args, **kwargs)
        leaves = self.priorities.view(self.slots, N)
        touched = [t]
        leaves[t] = 0                                                         # no n-step future yet
        if self.size == self.slots:                                           # the oldest slots lost their history
            for k in range(1, self.stack):
                touched.append((t + k) % self.slots)
                leaves[touched[-1]] = 0
        if self.size > self.n:
            ready = (t - self.n) % self.slots                                 # now has its n-step future
            lo, hi = self._age_range()
            if lo <= (ready - self._oldest()) % self.slots <= hi:
                touched.append(ready)
                leaves[ready] = self.max_priority ** self.alpha
        blocks = {i // self.block for row in touched for i in (row * N, row * N + N - 1)}
        self._resum(torch.tensor(sorted(blocks), device=self.device))

    def find(self, prefix: torch.Tensor) -> torch.Tensor:
        """Leaf i with cumsum[i-1] <= prefix < cumsum[i] (SumTree.find's rule, over partial sums taken
        block by block); never an empty leaf for 0 <= prefix < the total."""
        K = self.block
        block_cum = torch.cumsum(self.block_sums, 0)
        blk = torch.searchsorted(block_cum, prefix, right=True).clamp_(max=len(block_cum) - 1)
        leaves = self._leaves.index_select(0, blk)                             # [B, K]
        leaf_cum = leaves.cumsum(1)
        rest = prefix - (block_cum.take(blk) - self.block_sums.take(blk))      # mass to go inside the block
        # the two levels round differently: keep ``rest`` inside the block's own partial sums
        rest = torch.minimum(rest.clamp(min=0), leaf_cum[:, -1] * (1 - 1e-12))
        j = torch.searchsorted(leaf_cum, rest[:, None], right=True)[:, 0].clamp_(max=K - 1)
        return blk * K + j

    def sample(self, batch_size: int, beta: float = 0.4) -> Batch:
        if len(self) == 0:
            raise ValueError("replay buffer holds no complete transition yet")
        total = self.block_sums.sum()
        # stratified: one uniform draw inside each of batch_size equal slices of the total mass
        u = torch.rand(batch_size, dtype=torch.float64, generator=self.generator, device=self.device)
        prefix = (torch.arange(batch_size, device=self.device) + u) * (total / batch_size)
        index = self.find(torch.minimum(prefix, total * (1 - 1e-12)))
        p = self.priorities.take(index) / total                               # P(i)
        weight = (len(self) * p) ** (-beta)
        weight = (weight / weight.max()).float()                               # normalised so updates only shrink
        return self.gather(index // self.num_envs, index % self.num_envs, weight)

    def update_priorities(self, index, priority) -> None:
        """Set p_i = |delta_i| + eps for sampled ``index`` (flat slot ids), tensors or arrays. A slot that
        became unsampleable since it was drawn stays at zero. Repeated ids in one call carry the same
        transition's priority, so which write wins does not matter."""
        index = torch.as_tensor(index, device=self.device).long()
        priority = torch.as_tensor(priority, device=self.device).to(torch.float64) + self.eps
        current = self.priorities.take(index)
        self.priorities[index] = torch.where(current > 0, priority ** self.alpha, current)
        self._resum(index // self.block)
        self.max_priority = torch.maximum(self.max_priority, priority.max())

    # --- persistence: the numpy replay's sum-tree array, so either loads the other ----------
    def _tree_size(self) -> int:
        return 1 << max(0, (self.slots * self.num_envs - 1).bit_length())

    def state_dict(self) -> dict:
        size = self._tree_size()
        tree = np.zeros(2 * size, dtype=np.float64)
        tree[size:size + len(self.priorities)] = self.priorities.cpu().numpy()
        while size > 1:  # parents are the sums of their children, as SumTree.set keeps them
            tree[size // 2:size] = tree[size:2 * size:2] + tree[size + 1:2 * size:2]
            size //= 2
        return {**super().state_dict(), "priorities": tree, "max_priority": np.float64(self.max_priority.item())}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        size = self._tree_size()
        self._put(self.priorities, np.asarray(state["priorities"])[size:size + len(self.priorities)])
        self._resum(torch.arange(len(self.block_sums), device=self.device))
        self.max_priority.fill_(float(state["max_priority"]))
