import torch

from reform_engine.layer_stack import segment_mask


def test_segment_mask_lets_a_response_see_the_prompt_and_itself_only():
    # prompt of 2, response 1 of 2, response 2 of 1, one pad
    allowed = segment_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]), "bool", torch.float32)[0, 0].int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 0, 0, 1, 0],
                       [0, 0, 0, 0, 0, 1]]
    additive = segment_mask(torch.tensor([[0, 1]]), "float", torch.float32)[0, 0]
    assert additive.tolist() == [[0.0, torch.finfo(torch.float32).min], [0.0, 0.0]]
