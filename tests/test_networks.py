"""rl.networks: the encoders, the Q head's options (dueling, noisy, distributional), which network fits which
image, and the random shift augmentation."""
from __future__ import annotations

import pytest
import torch

from rl.networks import NoisyLinear, make_q_network, networks_fitting, random_shift


def test_noisy_layer_noise_resets_and_eval_uses_means():
    torch.manual_seed(0)
    layer = NoisyLinear(5, 3)
    x = torch.randn(4, 5)
    layer.reset_noise()
    a = layer(x)
    layer.reset_noise()
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    torch.testing.assert_close(layer(x), x @ layer.weight_mu.T + layer.bias_mu)


def test_dueling_head_decomposes_into_value_and_mean_zero_advantage():
    net = make_q_network("mlp", (4,), 3, [16, 16], dueling=True)
    x = torch.randn(6, 4)
    q = net(x)
    h = net.encoder(x)
    torch.testing.assert_close(q.mean(1), net.value(h).squeeze(1), rtol=1e-5, atol=1e-5)


def test_distributional_q_is_the_expected_atom_value():
    net = make_q_network("mlp", (4,), 2, [16], atoms=11, v_min=0.0, v_max=10.0)
    x = torch.randn(3, 4)
    probs = net.dist(x).softmax(-1)
    torch.testing.assert_close(net(x), (probs * torch.linspace(0, 10, 11)).sum(-1))


@pytest.mark.parametrize("kind,shape,features", [
    ("nature_cnn", (4, 84, 84), 64 * 7 * 7), ("nature_cnn", (3, 64, 48), 64 * 4 * 2),
    ("impala_cnn", (4, 84, 84), 32 * 11 * 11), ("impala_cnn", (4, 10, 10), 32 * 2 * 2),
    ("minatar_cnn", (4, 10, 10), 16 * 8 * 8), ("minatar_cnn", (6, 10, 12), 16 * 8 * 10),
])
def test_image_encoders_size_their_output_from_the_real_image(kind, shape, features):
    net = make_q_network(kind, shape, 3, dueling=True)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    assert net.encoder.out_features == features and net.encoder(x).shape == (2, features)
    assert net(x).shape == (2, 3)


def test_minatar_cnn_is_young_and_tians_network():
    """One 3x3 convolution, 16 channels, stride 1, no padding, ReLU; a 128-unit hidden layer; the Q head. The
    encoder reads uint8 0/255 as 0/1, the paper's float of MinAtar's bool channels."""
    net = make_q_network("minatar_cnn", (4, 10, 10), 3)
    conv = net.encoder.net[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == \
        (4, 16, (3, 3), (1, 1), (0, 0))
    hidden, q = net.advantage[0], net.advantage[2]
    assert (hidden.in_features, hidden.out_features, q.in_features, q.out_features) == (16 * 8 * 8, 128, 128, 3)
    x = (torch.rand(2, 4, 10, 10) < 0.2).to(torch.uint8)
    torch.testing.assert_close(net.encoder(x * 255), torch.relu(conv(x.float())).flatten(1))


def test_the_networks_that_fit_an_image_are_named():
    assert networks_fitting((4, 10, 10)) == ["impala_cnn", "minatar_cnn"]
    assert networks_fitting((4, 36, 36)) == ["nature_cnn", "impala_cnn", "minatar_cnn"]   # Nature's smallest
    assert networks_fitting((4, 35, 84)) == ["impala_cnn", "minatar_cnn"]
    assert networks_fitting((1, 2, 2)) == ["impala_cnn"]
    with pytest.raises(ValueError, match="nature_cnn needs larger images than"):
        make_q_network("nature_cnn", (4, 10, 10), 3)


def test_random_shift_keeps_dtype_shape_and_shifts_within_pad():
    obs = torch.arange(2 * 4 * 12 * 12, dtype=torch.int64).reshape(2, 4, 12, 12).to(torch.uint8)
    out = random_shift(obs, pad=2, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == obs.shape
    shifts = []
    for b in range(2):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                rows = (torch.arange(12) + dy).clamp(0, 11)
                cols = (torch.arange(12) + dx).clamp(0, 11)
                if torch.equal(out[b], obs[b][:, rows][:, :, cols]):
                    matches.append((dy, dx))
        assert len(matches) == 1  # every image is one replicate-padded shift of the input, the same for all frames
        shifts += matches
    assert shifts != [(0, 0), (0, 0)]          # it does shift


def test_random_shift_is_drq_v2s_augmentation():
    """The same shifts through DrQ-v2's replicate-pad + grid_sample (benchmarks/kernels.py) give the same pixels."""
    from benchmarks.kernels import drawn_shift, pad_grid_sample
    obs = torch.randint(0, 256, (64, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        out = random_shift(obs, pad=4, generator=torch.Generator().manual_seed(seed))
        reference = pad_grid_sample(obs.float(), drawn_shift(64, seed))
        assert torch.allclose(out.float(), reference, rtol=0, atol=0.01)
        assert not torch.equal(out, obs)


@pytest.mark.parametrize("dueling", [False, True])
def test_q_values_keep_gaps_finer_than_bf16_under_autocast(dueling):
    """bf16 steps by 0.03 between 4 and 8, where a Breakout agent's Q-values lie, and actions there are often
    less than that apart. The output layer computes in float32, so such gaps survive bf16 autocast and argmax
    does not see a tie it breaks toward action 0."""
    net = make_q_network("nature_cnn", (4, 84, 84), 4, dueling=dueling)
    q_wanted = torch.tensor([6.000, 6.004, 6.012, 6.008])
    with torch.no_grad():
        net.advantage[-1].weight.zero_()
        net.advantage[-1].bias.copy_(q_wanted)
        if dueling:                                    # Q = V + A - mean(A): V = mean(q_wanted) gives q_wanted back
            net.value[-1].weight.zero_()
            net.value[-1].bias.fill_(q_wanted.mean().item())
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = net(obs)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, q_wanted.expand(2, 4), atol=1e-6, rtol=0)
    assert q.argmax(1).tolist() == [2, 2]
