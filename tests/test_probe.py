import numpy as np
import pytest
import torch

from reform_engine.probe import fit_probe, pair_features, probe_wins
from reform_engine.scoring import encode_pairs

from conftest import make_pair


def test_a_probe_learns_a_direction_that_separates_the_pairs_and_has_no_side_bias():
    g = torch.Generator().manual_seed(0)
    rejected = torch.randn(200, 6, generator=g)
    chosen = rejected + torch.tensor([2.0, 0, 0, 0, 0, 0]) + 0.1 * torch.randn(200, 6, generator=g)
    probe = fit_probe(chosen[:150], rejected[:150], l2=1.0)
    assert probe.weight.argmax().item() == 0 and probe.weight[0] > 0
    assert probe_wins(probe, chosen[150:], rejected[150:]).tolist() == [1.0] * 50
    assert probe_wins(probe, rejected[150:], chosen[150:]).tolist() == [0.0] * 50   # swapping the sides flips every call
    assert np.array_equal(probe_wins(probe, chosen[:3], chosen[:3]), [0.5, 0.5, 0.5])  # equal sides: a tie


def test_a_probe_refuses_too_few_pairs_and_a_penalty_that_is_not_positive():
    with pytest.raises(ValueError, match="at least 2"):
        fit_probe(torch.ones(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="l2"):
        fit_probe(torch.ones(4, 3), torch.zeros(4, 3), l2=0.0)


def test_features_are_the_backbones_last_token_state_of_each_side_as_scoring_encodes_it(tiny_rm):
    pairs = [make_pair(0, "Hi there", "Hello! How can I help?", "Go away."),
             make_pair(1, "Tell me a joke", "Why did the chicken cross the road?", "No."),
             make_pair(2, "x" * 10, "y" * 400, "z")]
    feats = pair_features(tiny_rm, pairs, max_length=64, batch_size=2)
    assert feats.kept == (0, 1)                                    # pair 2's response cannot fit 64 tokens
    assert feats.chosen.shape == (2, tiny_rm.backbone.config.hidden_size)
    enc = encode_pairs(tiny_rm, pairs[:2], max_length=64)
    with torch.no_grad():
        for i, (c, r) in enumerate(enc):
            for side, e in ((feats.chosen, c), (feats.rejected, r)):
                ids = torch.tensor([e.ids])
                direct = tiny_rm.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, -1]
                assert torch.allclose(side[i], direct, atol=1e-5)
