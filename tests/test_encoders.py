"""Reference encoders: per-bag attention, masks, irregular time series, images."""

import torch

from fedlego.common.encoders import SNN, GatedAttentionMIL, IrregularTimeSeriesEncoder, SmallCNN, reference_encoder


def test_mil_attention_is_a_softmax_over_each_bags_instances():
    torch.manual_seed(0)
    mil = GatedAttentionMIL(5, width=8).eval()
    x = torch.randn(3, 6, 5)
    mask = torch.ones(3, 6)
    mask[1, 2:] = 0  # a bag of 2 instances
    weights = mil.attention(x, mask)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert torch.all(weights[1, 2:] == 0)
    # a bag's embedding does not depend on the other bags in the batch
    torch.testing.assert_close(mil(x, mask)[:1], mil(x[:1], mask[:1]))
    # padding a bag with masked instances changes nothing
    padded = torch.cat([x[1:2, :2], torch.randn(1, 9, 5)], dim=1)
    padded_mask = torch.cat([torch.ones(1, 2), torch.zeros(1, 9)], dim=1)
    torch.testing.assert_close(mil(padded, padded_mask), mil(x[1:2, :2]), rtol=1e-5, atol=1e-6)


def test_mil_empty_bag_gives_finite_output():
    mil = GatedAttentionMIL(5, width=8).eval()
    out = mil(torch.randn(2, 4, 5), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    assert torch.isfinite(out).all()


def test_time_series_encoder_honours_masks_and_time_gaps():
    torch.manual_seed(0)
    enc = IrregularTimeSeriesEncoder(3, width=8).eval()
    values, observed = torch.randn(2, 4, 3), torch.ones(2, 4, 3)
    times = torch.tensor([[0.0, 0.5, 1.0, 2.0], [0.0, 0.1, 0.2, 0.3]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    tokens, token_mask = enc(values, observed, times, mask)
    assert tokens.shape == (2, 4, 8) and token_mask.dtype == torch.bool
    assert torch.all(tokens[0, 3] == 0)
    hidden = values.clone()
    hidden[0, 0, 1] = 99.0
    unobserved = observed.clone()
    unobserved[0, 0, 1] = 0
    torch.testing.assert_close(enc(hidden, unobserved, times, mask)[0], enc(values, unobserved, times, mask)[0])
    shifted = times.clone()
    shifted[0, 1] = 0.9
    assert not torch.allclose(enc(values, observed, shifted, mask)[0][0, 1], tokens[0, 1])


def test_cnn_and_snn_shapes_and_factory():
    assert SmallCNN(3, width=16)(torch.randn(2, 3, 20, 24)).shape == (2, 16, 16)
    assert SNN(7, width=10)(torch.randn(4, 7)).shape == (4, 10)
    examples = {
        "tabular": {"x": torch.randn(2, 7)},
        "bags": {"x": torch.randn(2, 3, 5), "mask": torch.ones(2, 3)},
        "timeseries": {
            "values": torch.randn(2, 4, 3),
            "observed": torch.ones(2, 4, 3),
            "times": torch.zeros(2, 4),
            "mask": torch.ones(2, 4),
        },
        "image": {"x": torch.randn(2, 1, 16, 16)},
    }
    for kind, example in examples.items():
        out = reference_encoder(kind, example, width=16)(**example)
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape[0] == 2 and torch.isfinite(out).all()
