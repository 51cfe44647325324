"""The GPU training path: every layer's masked weight from flat buffers gives
the per-layer path's logits and score gradients, bit for bit, on the CPU
(where it is never the default) and, where a GPU exists, on CUDA."""

import copy

import pytest
import torch
from conftest import synthetic_tasks, tiny_conv_net

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.benchmarks.streams import tensor_task_stream


def _step(model, x, y, task, dtype=None):
    model.train()
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(x, task)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    grads = {name: layer.scores[str(task)].grad.clone() for name, layer in model.masked_layers.items()}
    return logits.detach(), grads


def _pair(device="cpu", **settings):
    torch.manual_seed(0)
    backbone = tiny_conv_net()
    models = []
    for flat in (False, True):
        model = PiggybackModel(copy.deepcopy(backbone), flat_masks=flat, **settings).to(device)
        torch.manual_seed(1)  # the same head in both
        model.add_task(0, classes=[0, 1, 2, 3])
        with torch.no_grad():  # masks that are not all ones, the same in both
            generator = torch.Generator().manual_seed(1)
            for layer in model.masked_layers.values():
                scores = layer.scores["0"]
                scores.copy_((torch.rand(scores.shape, generator=generator) * 0.02 - 0.005).to(device))
        models.append(model)
    return models


@pytest.mark.parametrize("threshold_fn, mask_init", [("binarizer", "1s"), ("ternarizer", "uniform")])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_the_flat_path_gives_the_per_layer_paths_logits_and_score_gradients(threshold_fn, mask_init, dtype):
    per_layer, flat = _pair(threshold_fn=threshold_fn, mask_init=mask_init)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    logits, grads = _step(per_layer, x, y, 0, dtype)
    flat_logits, flat_grads = _step(flat, x, y, 0, dtype)
    assert torch.equal(logits, flat_logits)
    assert grads.keys() == flat_grads.keys() and all(torch.equal(grads[k], flat_grads[k]) for k in grads)
    layer = next(iter(flat.masked_layers.values()))
    buffer = layer.flat_masks["0"][0]
    assert layer.scores["0"].data_ptr() == buffer.scores.data_ptr()  # the parameter is a view of the buffer
    assert not next(iter(per_layer.masked_layers.values())).flat_masks  # the CPU default: per layer


def test_a_channels_last_network_keeps_its_layout_on_the_flat_path():
    """Masked weights and scores keep the weight's memory order, so a
    channels-last network never converts its weights at a step."""
    per_layer, flat = (m.to(memory_format=torch.channels_last) for m in _pair())
    x = torch.randn(8, 1, 8, 8).to(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (8,))
    logits, grads = _step(per_layer, x, y, 0)
    flat_logits, flat_grads = _step(flat, x, y, 0)
    assert torch.equal(logits, flat_logits)
    assert all(torch.equal(grads[k], flat_grads[k]) for k in grads)
    convolutions = [(name, layer) for name, layer in flat.masked_layers.items() if layer.weight.dim() == 4]
    assert convolutions
    buffer = convolutions[0][1].flat_masks["0"][0]
    for name, layer in convolutions:
        assert layer.weight.is_contiguous(memory_format=torch.channels_last), name
        assert layer.scores["0"].is_contiguous(memory_format=torch.channels_last), name
        with flat.task_state.use("0"):
            assert layer.task_weight().is_contiguous(memory_format=torch.channels_last), name
        assert flat_grads[name].is_contiguous(memory_format=torch.channels_last), name
        assert (
            buffer.scores.data_ptr() <= layer.scores["0"].data_ptr() < buffer.scores.data_ptr() + buffer.scores.nbytes
        )


def test_training_through_avalanche_on_the_flat_path_equals_the_per_layer_path():
    stream = tensor_task_stream(synthetic_tasks([[0, 1], [0, 1, 2]]))
    states = []
    for flat in (False, True):
        torch.manual_seed(0)
        strategy = Piggyback(
            model=PiggybackModel(tiny_conv_net(), flat_masks=flat), train_epochs=2, train_mb_size=16, evaluator=None
        )
        for experience in stream.train_stream:
            strategy.train(experience)
        states.append(strategy.model.state_dict())
        assert not any(layer.flat_masks for layer in strategy.model.masked_layers.values())  # freed at freezing
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_restore_point_or_a_move_builds_the_buffers_anew():
    _, flat = _pair()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))
    _step(flat, x, y, 0)
    copied = copy.deepcopy(flat)  # what a restore point holds
    assert all(not layer.flat_masks.get("0") for layer in copied.masked_layers.values())
    logits, _ = _step(copied, x, y, 0)
    assert torch.equal(logits, _step(flat, x, y, 0)[0])
    flat.double()  # another dtype: new buffers, views of the new parameters
    _step(flat, x.double(), y, 0)
    layer = next(iter(flat.masked_layers.values()))
    assert layer.flat_masks["0"][0].weights.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_flat_path_is_the_default_and_agrees_with_the_per_layer_path():
    per_layer, flat = _pair("cuda")
    flat.flat_masks = None  # the default: flat on CUDA
    x, y = torch.randn(8, 1, 8, 8, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
    logits, grads = _step(per_layer, x, y, 0, torch.bfloat16)
    flat_logits, flat_grads = _step(flat, x, y, 0, torch.bfloat16)
    assert next(iter(flat.masked_layers.values())).flat_masks
    assert torch.allclose(logits.float(), flat_logits.float(), atol=1e-2)
    assert all(torch.allclose(grads[k], flat_grads[k], rtol=1e-2, atol=1e-5) for k in grads)
