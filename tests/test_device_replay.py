"""The device replay against the numpy replay (itself tested against a reference in test_replay.py): same
stream in, the same batch out for every sampleable (t, env), element for element; valid and uniform
draws; prioritized sampling by PrioritizedReplayBuffer's rules; state dicts that load either way.
Runs on CPU tensors; the one CUDA test is skipped without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.device_replay import DevicePrioritizedReplayBuffer, DeviceReplayBuffer, torch_dtype
from rl.replay import TERMINATED, TRUNCATED, Batch, PrioritizedReplayBuffer, ReplayBuffer, ReplaySpec, SumTree
from tests.fakes import FakeFlatEnv, FakeStackedEnv


class Tee:
    """Stores each vector step in every buffer; rewards made non-integer (so n-step sums are real float
    arithmetic) and, on odd steps, handed to device buffers as torch tensors."""

    def __init__(self, *buffers, seed=0):
        self.buffers, self.rng, self.adds = buffers, np.random.default_rng(seed), 0

    def add(self, obs, action, reward, terminated, truncated, first, final_obs):
        reward = (reward * 0.37 + self.rng.random(len(reward))).astype(np.float32)
        args = (obs, action, reward, terminated, truncated, first, final_obs)
        for buf in self.buffers:
            if isinstance(buf, DeviceReplayBuffer) and self.adds % 2:
                buf.add(*(torch.from_numpy(np.asarray(a)) for a in args))
            else:
                buf.add(*args)
        self.adds += 1


def make_env(stack, num_envs, seed=0, p=(0.1, 0.05, 0.08)):
    kw = {"num_envs": num_envs, "seed": seed, "p_life": p[0], "p_over": p[1], "p_trunc": p[2]}
    return FakeStackedEnv(**kw) if stack > 1 else FakeFlatEnv(**kw)


class Stream:
    """A fake env stepped with random actions into ``tee``, as the trainer stores steps (tests.fakes.drive,
    but resumable: one episode stream across calls)."""

    def __init__(self, env, tee, steps=0):
        self.env, self.tee, self.rng = env, tee, np.random.default_rng(0)
        self.obs, self.first = env.reset(), np.ones(env.num_envs, bool)
        self.step(steps)

    def step(self, steps=1):
        for _ in range(steps):
            a = self.rng.integers(0, self.env.num_actions, self.env.num_envs)
            out = self.env.step(a)
            self.tee.add(self.obs, a, out.reward, out.terminated, out.truncated, self.first, out.final_obs)
            self.first, self.obs = out.episode_end, out.obs


def valid_ids(ref: ReplayBuffer) -> np.ndarray:
    """Every sampleable flat slot id, by the numpy replay's rule."""
    lo, _ = ref._age_range()
    return ((ref._oldest() + lo) * ref.num_envs + np.arange(len(ref))) % (ref.slots * ref.num_envs)


def to_numpy(batch: Batch, device: torch.device) -> list[np.ndarray]:
    for name, x in zip(Batch._fields, batch):
        assert isinstance(x, torch.Tensor) and x.device == device, name
    return [x.cpu().numpy() for x in batch]


def assert_gathers_equal(ref: ReplayBuffer, dev: DeviceReplayBuffer) -> Batch | None:
    """Gather every sampleable (t, env) from both; all fields equal exactly, dtypes included."""
    assert len(dev) == len(ref)
    if len(ref) == 0:
        return None
    t, env = np.divmod(valid_ids(ref), ref.num_envs)
    weight = np.linspace(0.1, 1, len(t), dtype=np.float32)
    want = ref.gather(t, env, weight)
    got = dev.gather(torch.from_numpy(t), torch.from_numpy(env), torch.from_numpy(weight))
    for name, u, v in zip(Batch._fields, want, to_numpy(got, dev.device)):
        assert v.dtype == u.dtype, name
        np.testing.assert_array_equal(v, u, err_msg=name)
    return want


def window_ends(ref: ReplayBuffer, index: np.ndarray) -> np.ndarray:
    """Flag byte of the step that ends each transition's n-step window."""
    t, env = np.divmod(index, ref.num_envs)
    flags = ref.flags[(t[:, None] + np.arange(ref.n)) % ref.slots, env[:, None]]
    ended = (flags & (TERMINATED | TRUNCATED)) != 0
    return flags[np.arange(len(t)), np.where(ended.any(1), ended.argmax(1), ref.n - 1)]


# --- the same batches as the numpy replay ------------------------------------------------------

@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("stack", [4, 1])
@pytest.mark.parametrize("capacity,num_envs,steps", [(60, 3, 200), (14, 2, 90), (600, 3, 150), (40, 1, 300)],
                         ids=["wrapped", "tiny", "not-full", "one-env"])
def test_every_transition_equals_the_numpy_replays(n_step, stack, capacity, num_envs, steps):
    env = make_env(stack, num_envs)
    spec = ReplaySpec(capacity, num_envs, env.obs_shape, env.obs_dtype, stack=stack, n_step=n_step, gamma=0.9)
    ref, dev = ReplayBuffer(spec), DeviceReplayBuffer(spec)
    stream = Stream(env, Tee(ref, dev))
    seen = np.zeros(0, np.uint8)
    for _ in range(steps // 10):  # compare at cursor positions all around the ring
        stream.step(10)
        if assert_gathers_equal(ref, dev) is not None:
            seen = np.concatenate([seen, window_ends(ref, valid_ids(ref))])
    # life losses, game overs and time-limit cuts all ended some window
    assert (seen & TERMINATED).any() and (seen & TRUNCATED).any()


@settings(max_examples=100, deadline=None)
@given(num_envs=st.integers(1, 4), stack=st.sampled_from([1, 4]), n_step=st.integers(1, 4),
       slots=st.integers(1, 24), steps=st.integers(0, 90),
       p=st.tuples(*[st.sampled_from([0.0, 0.05, 0.3, 0.7])] * 3), seed=st.integers(0, 2**16))
def test_random_streams_equal_the_numpy_replays(num_envs, stack, n_step, slots, steps, p, seed):
    env = make_env(stack, num_envs, seed, p)
    spec = ReplaySpec(slots * num_envs, num_envs, env.obs_shape, env.obs_dtype, stack=stack, n_step=n_step,
                      gamma=0.97)
    ref, dev = ReplayBuffer(spec, seed), DeviceReplayBuffer(spec, seed)
    stream = Stream(env, Tee(ref, dev, seed=seed))
    for _ in range(steps):
        stream.step()
        assert_gathers_equal(ref, dev)


# --- which slots are drawn -----------------------------------------------------------------

@pytest.mark.parametrize("stack,n_step", [(4, 3), (4, 1), (1, 2)])
def test_samples_only_complete_transitions_behind_the_cursor(stack, n_step):
    env = make_env(stack, 2, p=(0.2, 0.1, 0.1))
    dev = DeviceReplayBuffer(ReplaySpec(24, 2, env.obs_shape, env.obs_dtype, stack=stack, n_step=n_step))
    ref = ReplayBuffer(dev.spec)
    tee = Tee(ref, dev)
    stream = Stream(env, tee)
    for _ in range(40):  # from empty, through the first wrap, around twice more
        if len(dev) == 0:
            with pytest.raises(ValueError, match="no complete transition"):
                dev.sample(1)
        else:
            index = dev.sample(512).index.numpy()
            t = index // 2
            newest_g = tee.adds - 1
            g = newest_g - (((dev.cursor - 1) % dev.slots) - t) % dev.slots   # vector step that wrote slot t
            assert (g + n_step <= newest_g).all()            # the n-step window and next obs are written
            oldest_g = max(0, tee.adds - dev.slots)
            assert (g >= oldest_g).all()                      # not overwritten: never across the write cursor
            if tee.adds > dev.slots:
                assert (g - (stack - 1) >= oldest_g).all()    # and neither is any frame of its stack
            # every sampleable slot is drawn, nothing else
            assert set(index) <= set(valid_ids(ref))
            assert set(dev.sample(20 * len(dev)).index.numpy()) == set(valid_ids(ref))
        stream.step()


CHI2_999 = {55: 93.17}  # chi-square critical value at p = 0.001 (scipy.stats.chi2.ppf(0.999, 55))


def test_uniform_sampling_is_uniform():
    env = make_env(4, 4)
    dev = DeviceReplayBuffer(ReplaySpec(80, 4, env.obs_shape, env.obs_dtype, stack=4, n_step=3), seed=5)
    Stream(env, Tee(dev), 47)  # wrapped: 20 slots per env, ages 3..16 sampleable
    assert len(dev) == 56
    counts = np.bincount(dev.sample(100_000).index.numpy(), minlength=80)
    observed = counts[counts > 0]
    assert len(observed) == 56
    expected = counts.sum() / 56
    assert ((observed - expected) ** 2 / expected).sum() < CHI2_999[55]


def test_same_seed_same_samples_and_batches_on_the_buffer_device():
    env = make_env(4, 2)
    spec = ReplaySpec(40, 2, env.obs_shape, env.obs_dtype, stack=4, n_step=3)
    a, b = DeviceReplayBuffer(spec, seed=7), DeviceReplayBuffer(spec, seed=7)
    Stream(env, Tee(a, b), 30)
    x, y = a.sample(64), b.sample(64)
    for u, v in zip(to_numpy(x, a.device), to_numpy(y, b.device)):
        np.testing.assert_array_equal(u, v)
    assert x.obs.dtype == torch.int32 and x.action.dtype == torch.int64 and x.weight.dtype == torch.float32


def test_final_frames_pool_recycles_overwritten_rows():
    env = make_env(4, 2, p=(0.0, 0.0, 0.3))
    spec = ReplaySpec(20, 2, env.obs_shape, env.obs_dtype, stack=4)
    ref, dev = ReplayBuffer(spec), DeviceReplayBuffer(spec)
    Stream(env, Tee(ref, dev), 300)  # ~180 truncations, at most 20 alive at once
    assert sorted(dev._final_rows) == sorted(ref.final_frames)
    assert len(dev.final_pool) <= 2 * 20 + 1


def test_allocated_bytes_match_the_formula():
    spec = ReplaySpec(800, 8, (4, 84, 84), np.uint8, stack=4, num_actions=4)
    dev = DeviceReplayBuffer(spec)
    allocated = sum(x.nbytes for x in (dev._frame_rows, dev.actions, dev.rewards, dev.flags, dev.final_row))
    assert DeviceReplayBuffer.bytes_per_transition(spec) == 84 * 84 + 1 + 4 + 1 + 8
    assert allocated == DeviceReplayBuffer.bytes_per_transition(spec) * 800 + 84 * 84  # and the zero frame


# --- prioritized ------------------------------------------------------------------------------

def test_priorities_follow_the_numpy_sum_tree():
    """Same stream, same priority updates (some on slots no longer sampleable): same leaves, same max."""
    env = make_env(4, 3, p=(0.1, 0.1, 0.1))
    spec = ReplaySpec(45, 3, env.obs_shape, env.obs_dtype, stack=4, n_step=3, gamma=0.9)
    ref = PrioritizedReplayBuffer(spec, alpha=0.6, eps=1e-3)
    dev = DevicePrioritizedReplayBuffer(spec, alpha=0.6, eps=1e-3)
    stream, rng = Stream(env, Tee(ref, dev)), np.random.default_rng(0)
    for step in range(80):
        stream.step()
        if step % 3 == 0 and len(ref):
            ids = rng.choice(45, size=8, replace=False)   # a learner's stale ids included
            priority = rng.random(8) * 5
            ref.update_priorities(ids, priority)
            dev.update_priorities(torch.from_numpy(ids), torch.from_numpy(priority))
        leaves = ref.tree.get(np.arange(45))
        np.testing.assert_array_equal(dev.priorities.numpy() > 0, leaves > 0)
        np.testing.assert_allclose(dev.priorities.numpy(), leaves, rtol=1e-14)
        np.testing.assert_allclose(dev.block_sums.numpy(), dev._leaves.sum(1).numpy(), rtol=1e-14)  # kept current
        assert dev.max_priority.item() == ref.max_priority
        assert_gathers_equal(ref, dev)


@pytest.mark.parametrize("capacity", [37, 1000])
def test_find_picks_the_sum_trees_leaf(capacity):
    rng = np.random.default_rng(0)
    leaves = rng.integers(0, 4, capacity).astype(np.float64)  # integers: all sums exact; zeros are empty leaves
    tree = SumTree(capacity)
    tree.set(np.arange(capacity), leaves)
    dev = DevicePrioritizedReplayBuffer(ReplaySpec(capacity, 1, (1,), np.float32))
    dev.priorities.copy_(torch.from_numpy(leaves))
    dev._resum(torch.arange(len(dev.block_sums)))
    assert 1 < len(dev.block_sums) < capacity  # two levels, the last block padded
    bounds = np.cumsum(leaves)
    prefix = np.concatenate([rng.random(5000) * leaves.sum(), bounds[bounds < leaves.sum()]])  # boundaries too
    got = dev.find(torch.from_numpy(prefix)).numpy()
    np.testing.assert_array_equal(got, tree.find(prefix))
    assert (leaves[got] > 0).all()


@pytest.mark.parametrize("seed", range(20))
def test_find_never_lands_on_an_empty_leaf(seed):
    """Real-valued priorities with every block's first and last leaf empty, prefixes a few ulps around each
    block's edges: the two levels round differently, and that must not step onto an empty leaf."""
    rng = np.random.default_rng(seed)
    dev = DevicePrioritizedReplayBuffer(ReplaySpec(5000, 1, (1,), np.float32))
    leaves = rng.random(5000) ** 8 * (rng.random(5000) < 0.5)
    leaves[::dev.block] = leaves[dev.block - 1::dev.block] = 0
    dev.priorities.copy_(torch.from_numpy(leaves))
    dev._resum(torch.arange(len(dev.block_sums)))
    total = dev.block_sums.sum().item()
    ends = np.cumsum(dev.block_sums.numpy())[:-1]
    edges, down, up = [ends], ends, ends
    for _ in range(4):
        down, up = np.nextafter(down, 0), np.nextafter(up, np.inf)
        edges += [down, up]
    prefix = np.concatenate([rng.random(2000) * total, *edges])
    got = dev.find(torch.from_numpy(np.minimum(prefix, total * (1 - 1e-12)))).numpy()
    assert (leaves[got] > 0).all()


def filled_pair(alpha=1.0, eps=0.0):
    """test_rainbow's filled_prioritized, once per implementation: 2 envs x 20 steps, 32 slots each."""
    spec = ReplaySpec(64, 2, (1,), np.float32)
    ref = PrioritizedReplayBuffer(spec, alpha=alpha, eps=eps)
    dev = DevicePrioritizedReplayBuffer(spec, alpha=alpha, eps=eps)
    for i in range(20):
        for buf in (ref, dev):
            buf.add(np.full((2, 1), i, np.float32), np.zeros(2), np.ones(2), np.zeros(2, bool), np.zeros(2, bool),
                    np.array([i == 0] * 2))
    return ref, dev


def test_prioritized_sampling_follows_the_priorities():
    ref, dev = filled_pair()
    valid = np.flatnonzero(ref.tree.get(np.arange(64)) > 0)
    np.testing.assert_array_equal(np.flatnonzero(dev.priorities.numpy() > 0), valid)
    priorities = np.arange(1, len(valid) + 1, dtype=float)
    dev.update_priorities(valid, priorities)
    counts = np.bincount(torch.cat([dev.sample(64, beta=1.0).index for _ in range(400)]).numpy(), minlength=64)
    observed = counts[valid]
    expected = counts.sum() * priorities / priorities.sum()
    # stratified sampling is tighter than multinomial, so the multinomial bound is conservative
    assert ((observed - expected) ** 2 / expected).sum() < 69.35  # df = 37 at p = 0.001
    assert counts[np.setdiff1d(np.arange(64), valid)].sum() == 0


@pytest.mark.parametrize("beta", [1.0, 0.4])
def test_importance_weights_are_the_numpy_replays(beta):
    ref, dev = filled_pair(alpha=0.7, eps=1e-6)
    valid = np.flatnonzero(ref.tree.get(np.arange(64)) > 0)
    priority = np.where(np.arange(len(valid)) % 2 == 0, 1.0, 4.0)
    ref.update_priorities(valid, priority)
    dev.update_priorities(valid, priority)
    batch = dev.sample(256, beta=beta)
    index = batch.index.numpy()
    p = ref.tree.get(index) / ref.tree.total                       # P(i) by the numpy tree
    weight = (len(ref) * p) ** (-beta)
    np.testing.assert_allclose(batch.weight.numpy(), weight / weight.max(), rtol=1e-6)
    high = ref.tree.get(index) > ref.tree.get(index).min()
    assert batch.weight.numpy()[~high].max() == pytest.approx(1.0)
    assert batch.weight.numpy()[high].mean() == pytest.approx(4.0 ** (-0.7 * beta))  # w ~ 1/P(i)


def test_new_transitions_enter_with_max_priority():
    _, dev = filled_pair()
    dev.update_priorities(np.array([0]), np.array([50.0]))
    dev.add(np.zeros((2, 1), np.float32), np.zeros(2), np.ones(2), np.zeros(2, bool), np.zeros(2, bool),
            np.zeros(2, bool))
    newest_ready = ((dev.cursor - 2) % dev.slots) * 2
    assert dev.priorities[newest_ready].item() == pytest.approx(50.0)


def test_prioritized_refuses_an_empty_buffer():
    _, dev = filled_pair()
    empty = DevicePrioritizedReplayBuffer(dev.spec)
    with pytest.raises(ValueError, match="no complete transition"):
        empty.sample(4)


# --- state dicts ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_state_dict_round_trip_samples_identically(kind):
    env = make_env(4, 2)
    spec = ReplaySpec(50, 2, env.obs_shape, env.obs_dtype, stack=4, n_step=3)
    cls = DevicePrioritizedReplayBuffer if kind == "prioritized" else DeviceReplayBuffer
    a, b = cls(spec, seed=3), cls(spec, seed=99)
    Stream(env, Tee(a), 70)
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        for u, v in zip(to_numpy(a.sample(64), a.device), to_numpy(b.sample(64), b.device)):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("stack", [4, 1])
@pytest.mark.parametrize("prioritized", [False, True])
def test_state_dicts_load_across_implementations(stack, prioritized):
    """numpy -> device and device -> numpy: same arrays, same gathers, and the same again after both go
    on storing the same stream (final frames of truncations reloaded, their pool rows recycled)."""
    env = make_env(stack, 3, p=(0.1, 0.05, 0.15))
    spec = ReplaySpec(45, 3, env.obs_shape, env.obs_dtype, stack=stack, n_step=3, gamma=0.9)
    np_cls, dev_cls = ((PrioritizedReplayBuffer, DevicePrioritizedReplayBuffer) if prioritized
                       else (ReplayBuffer, DeviceReplayBuffer))
    ref, dev = np_cls(spec), dev_cls(spec)
    stream = Stream(env, Tee(ref, dev), 70)
    if prioritized:
        ids = valid_ids(ref)[::2]
        ref.update_priorities(ids, np.arange(len(ids), dtype=float))
        dev.update_priorities(ids, np.arange(len(ids), dtype=float))
    want, got = ref.state_dict(), dev.state_dict()
    assert set(want) <= set(got)
    for key in set(want) - {"rng", "priorities"}:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    if prioritized:
        np.testing.assert_allclose(got["priorities"], want["priorities"], rtol=1e-14)
    from_np, to_np = dev_cls(spec, seed=5), np_cls(spec, seed=5)
    from_np.load_state_dict(want)
    to_np.load_state_dict(got)
    for x, y in [(ref, from_np), (to_np, dev)]:
        assert_gathers_equal(x, y)
    stream.tee = Tee(ref, from_np, to_np, dev, seed=1)
    stream.step(40)
    for x, y in [(ref, from_np), (to_np, dev)]:
        assert_gathers_equal(x, y)
    if prioritized:
        np.testing.assert_allclose(from_np.priorities.numpy(), ref.tree.get(np.arange(45)), rtol=1e-14)
        from_np.sample(8)


def test_a_numpy_state_seeds_the_device_generator_deterministically():
    env = make_env(4, 2)
    spec = ReplaySpec(40, 2, env.obs_shape, env.obs_dtype, stack=4)
    ref = ReplayBuffer(spec, seed=1)
    Stream(env, Tee(ref), 30)
    a, b = DeviceReplayBuffer(spec, seed=2), DeviceReplayBuffer(spec, seed=3)
    a.load_state_dict(ref.state_dict())
    b.load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(a.sample(32).index.numpy(), b.sample(32).index.numpy())


def test_a_saved_replay_that_does_not_fit_is_refused():
    env = make_env(4, 2)
    small = DeviceReplayBuffer(ReplaySpec(20, 2, env.obs_shape, env.obs_dtype, stack=4))
    Stream(env, Tee(small), 15)
    with pytest.raises(ValueError, match="does not fit this buffer"):
        DeviceReplayBuffer(ReplaySpec(20, 2, (4, 5, 5), np.int32, stack=4)).load_state_dict(small.state_dict())


# --- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [DeviceReplayBuffer, DevicePrioritizedReplayBuffer])
def test_cuda_sampling_never_syncs_with_the_host(cls):
    env = make_env(4, 2)
    spec = ReplaySpec(40, 2, env.obs_shape, env.obs_dtype, stack=4, n_step=3)
    ref, dev = ReplayBuffer(spec), cls(spec, device="cuda")
    Stream(env, Tee(ref, dev), 30)
    assert_gathers_equal(ref, dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch = dev.sample(32)
        if cls is DevicePrioritizedReplayBuffer:
            dev.update_priorities(batch.index, batch.reward.abs())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batch.obs.is_cuda and batch.weight.is_cuda


def test_dtype_names_map():
    assert torch_dtype(np.dtype(np.uint8)) == torch.uint8 and torch_dtype(np.dtype(np.float32)) == torch.float32
