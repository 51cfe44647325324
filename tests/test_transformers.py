"""Transformer backbones: torchvision's ViT, Swin and MaxViT, timm's ViT and
DeiT, each through Avalanche's loop with Piggyback and PackNet."""

import math
import warnings

import pytest
import torch
from conftest import stacked_inputs, synthetic_tasks, train_checking_earlier_tasks
from torch import nn
from torchvision.models import MaxVit, SwinTransformer
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2

from piggyback_avalanche import PackNetModel, PiggybackModel, make_strategy
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation.evaluator import default_evaluator
from piggyback_avalanche.networks.backbones import small_vit
from piggyback_avalanche.task_aware import TaskMultiheadAttention, TaskWindowAttention


def _vit() -> nn.Module:
    return small_vit(in_channels=3, image_size=16, width=32, depth=2, heads=4, num_classes=5)


def _swin() -> nn.Module:
    return SwinTransformer(
        patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2], num_classes=5
    )


def _maxvit() -> nn.Module:
    return MaxVit(
        input_size=(16, 16),
        stem_channels=8,
        partition_size=2,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=5,
    )


def _timm(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, img_size=16, patch_size=4, depth=2, num_classes=5)


FAMILIES = {
    # builder, the classifier the model must find, the attention it must hold
    "torchvision_vit": (_vit, "heads.head", TaskMultiheadAttention),
    "torchvision_swin": (_swin, "head", TaskWindowAttention),
    "torchvision_maxvit": (_maxvit, "classifier.5", None),
    "timm_vit": (lambda: _timm("vit_tiny_patch16_224"), "head", None),
    "timm_deit": (lambda: _timm("deit_tiny_patch16_224"), "head", None),
}


def _features(network: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``head`` reads when ``network`` computes ``x``."""
    captured = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        network(x)
    finally:
        hook.remove()
    return captured[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_converts_and_computes_as_the_backbone_before_learning(family):
    build, classifier, attention = FAMILIES[family]
    backbone = build().eval()
    model = PiggybackModel(backbone)
    assert model._classifier_name == classifier
    if attention is not None:
        assert any(isinstance(m, attention) for m in model.modules())
    # Every parameter is a task-aware layer's, a norm's, the heads', or a frozen shared embedding.
    trainable_shared = [k for k, p in model.named_parameters() if p.requires_grad and "heads" not in k]
    assert not [k for k in trainable_shared if "mask" not in k and ".tasks." not in k]
    model.add_task(0, classes=list(range(5)))
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    # A new task's masks are all ones: the network is the backbone's.
    original = _features(backbone, backbone.get_submodule(classifier), x)
    converted = _features(model, model.heads, x)
    assert torch.allclose(converted, original, atol=1e-5), (converted - original).abs().max()


def _image_stream():
    return tensor_task_stream(synthetic_tasks([[0, 1, 2], [0, 1], [2, 3, 4]], n_train=24, n_test=12, shape=(3, 16, 16)))


@pytest.mark.parametrize(
    "family", [f if f == "torchvision_vit" else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)
@pytest.mark.parametrize("strategy", ["piggyback", "packnet"])
def test_each_family_forgets_nothing_through_avalanches_loop(family, strategy):
    build, _, _ = FAMILIES[family]
    backbone = build()
    embeddings = {k: p.detach().clone() for k, p in backbone.named_parameters() if "pos" in k or "token" in k}
    benchmark = _image_stream()
    config = {"mask_lr": 1e-2} if strategy == "piggyback" else {"post_prune_epochs": 1}
    learner = make_strategy(
        strategy, backbone, train_epochs=1, train_mb_size=8, evaluator=default_evaluator(interactive=False), **config
    )
    recorded = train_checking_earlier_tasks(learner, benchmark)
    learner.eval(benchmark.test_stream)  # the whole stream, as Avalanche's loop does
    model = learner.model
    assert len(recorded) == 3
    # The shared embeddings never trained.
    for key, value in embeddings.items():
        assert torch.equal(model.backbone.get_parameter(key), value), key
    if strategy == "piggyback":
        layers = model.task_layers.values()
        # One bit per weight and task: the packed masks, byte for byte.
        assert sum(layer.task_tensor_bytes() for layer in layers) == 3 * sum(
            math.ceil(layer.weight.numel() / 8) for layer in layers
        )
        # Training moved the masks: some weight of the first task is dropped.
        assert any(not layer.mask("0").all() for layer in layers)


def test_an_exported_vit_task_computes_as_the_model():
    learner = make_strategy(
        "piggyback", _vit(), train_epochs=1, train_mb_size=8, mask_lr=1e-2, evaluator=default_evaluator()
    )
    benchmark = _image_stream()
    learner.train(benchmark.train_stream[0])
    model = learner.model.eval()
    x = stacked_inputs(benchmark.test_stream[0])
    exported = model.export_task(0)
    assert not any(isinstance(m, PiggybackModel) for m in exported.modules())
    assert torch.allclose(exported(x), model(x, 0), atol=1e-5)


def test_unsupported_transformer_parameters_are_refused_by_name():
    swin_v2 = SwinTransformer(
        patch_size=[2, 2],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[2, 2],
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
        num_classes=5,
    )
    with pytest.raises(ValueError, match=r"features\.1\.0\.attn \(ShiftedWindowAttentionV2: logit_scale\)"):
        PiggybackModel(swin_v2)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _vit()
            self.temperature = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.body(x) * self.temperature

    with pytest.raises(ValueError, match=r"<backbone> \(Scaled: temperature\).*shared and frozen"):
        PiggybackModel(Scaled(), classifier="body.heads.head")

    attention = nn.Sequential(nn.Linear(4, 8))
    attention.add_module("attention", nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_bias_kv=True keeps parameters"):
        PiggybackModel(nn.Sequential(attention, nn.Linear(8, 2)), classifier="1")


def _inferring_vit_learner(**settings):
    """Piggyback on a small ViT that has learned two experiences without task labels."""
    learner = make_strategy(
        "piggyback",
        _vit(),
        train_epochs=1,
        train_mb_size=8,
        mask_lr=1e-2,
        task_inference="sample",
        evaluator=default_evaluator(),
        **settings,
    )
    benchmark = _image_stream()
    for experience in benchmark.train_stream[:2]:
        learner.train(experience)
    return learner, benchmark.test_stream[:2]


def test_task_inference_on_a_vit_computes_tasks_one_pass_each():
    learner, test_stream = _inferring_vit_learner(task_score="entropy")
    with pytest.warns(UserWarning, match="computes each task of this PiggybackModel in its own pass"):
        results = learner.eval(test_stream)
    assert 0.0 < results["TaskInference_Acc_Stream/eval_phase/test_stream"] <= 1.0


def test_task_inference_on_a_vit_with_the_backbone_score_runs_no_pass_per_task():
    learner, test_stream = _inferring_vit_learner(task_score="backbone_mahalanobis")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*in its own pass")  # no task is computed on every sample
        results = learner.eval(test_stream)
    assert learner.task_inference.score_name(learner.model) == "backbone_mahalanobis"
    assert 0.0 < results["TaskInference_Acc_Stream/eval_phase/test_stream"] <= 1.0


def test_packnet_on_a_vit_counts_the_attention_projections():
    model = PackNetModel(_vit())
    names = set(model.task_layers)
    assert {"encoder.layers.encoder_layer_0.self_attention.in_proj", "conv_proj"} <= names
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj" in names


def test_per_task_embeddings_are_learned_per_task_and_forget_nothing():
    backbone = _vit()
    token, positions = backbone.class_token.detach().clone(), backbone.encoder.pos_embedding.detach().clone()
    learner = make_strategy(
        "piggyback",
        backbone,
        task_embeddings=True,
        train_epochs=1,
        train_mb_size=8,
        mask_lr=1e-2,
        evaluator=default_evaluator(),
    )
    benchmark = _image_stream()
    train_checking_earlier_tasks(learner, benchmark)
    model = learner.model
    # Each task trained its own copies; the backbone's stayed as they were.
    own = model.task_tensors(0)
    learned = own["backbone.parametrizations.class_token.0.frozen.0"]
    assert not torch.equal(learned, token)
    assert torch.equal(model.backbone.parametrizations.class_token.original, token)
    assert torch.equal(model.backbone.encoder.parametrizations.pos_embedding.original, positions)
    assert model.settings()["task_embeddings"] is True
    # Counted per task: both embeddings, on top of what a task holds without them.
    plain = make_strategy("piggyback", _vit(), train_epochs=1, train_mb_size=8, evaluator=default_evaluator())
    for experience in benchmark.train_stream:
        plain.train(experience)
    assert model.bytes_per_task() == pytest.approx(plain.model.bytes_per_task() + token.nbytes + positions.nbytes)
    x = stacked_inputs(benchmark.test_stream[1])
    assert torch.allclose(model.export_task(1)(x), model.eval()(x, 1), atol=1e-5)
    with pytest.raises(ValueError, match=r"task_embeddings=True gives each task its own.*has none of them"):
        PiggybackModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2)), task_embeddings=True)
    assert "task_embeddings" not in plain.model.settings()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, classifier", [("vit_b_16", "heads.head"), ("swin_t", "head"), ("maxvit_t", "classifier.5")]
)
def test_torchvisions_own_transformers_convert_and_compute_as_themselves(name, classifier):
    import torchvision

    backbone = torchvision.models.get_model(name, weights=None).eval()
    model = PiggybackModel(backbone)
    assert model._classifier_name == classifier
    model.add_task(0, classes=list(range(5)))
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        original = _features(backbone, backbone.get_submodule(classifier), x)
        converted = _features(model, model.heads, x)
    assert torch.allclose(converted, original, atol=1e-4), (converted - original).abs().max()


def test_torchs_transformer_encoder_computes_each_task_with_its_own_weights():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    backbone = nn.Sequential(
        nn.Linear(4, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=True), nn.Flatten(), nn.Linear(48, 3)
    ).eval()
    model = PiggybackModel(backbone, classifier="3")
    model.add_task(0, classes=[0, 1, 2])
    model.eval()
    x, padding = torch.randn(5, 3, 4), torch.tensor([[False, False, True]] * 5)
    with torch.no_grad():
        # Before learning, masks are all ones: the backbone itself (its fused path included).
        original = _features(backbone, backbone[3], x)
        assert torch.allclose(_features(model, model.heads, x), original, atol=1e-5)
    # A task's mask changes what the encoder computes, with or without a padding
    # mask (which used to send torch to its fused path, on the shared weights).
    linear1 = model.backbone[1].layers[0].linear1
    with torch.no_grad():
        linear1.scores["0"][:] = -1.0
        changed = _features(model, model.heads, x)
        assert not torch.allclose(changed, original, atol=1e-3)
        encoder = model.backbone[1]
        with model.task_state.use("0"):
            padded = encoder(model.backbone[0](x), src_key_padding_mask=padding)
        assert not padded.is_nested and padded.shape == (5, 3, 16)
    model.freeze_task(0)
    with torch.no_grad():
        assert torch.equal(_features(model, model.heads, x), changed)


def test_vit_attention_takes_the_fused_kernel_with_each_tasks_own_weights(monkeypatch):
    model = PiggybackModel(_vit())  # 2 encoder blocks
    for task in (0, 1):
        model.add_task(task, classes=list(range(5)))
    attention = model.backbone.encoder.layers[0].self_attention
    with torch.no_grad():
        attention.in_proj.scores["1"][: attention.embed_dim] = -1.0  # task 1 drops every query weight
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    calls = []
    fused_kernel = torch._native_multi_head_attention
    monkeypatch.setattr(torch, "_native_multi_head_attention", lambda *args: calls.append(1) or fused_kernel(*args))

    def features(task):
        with torch.no_grad(), model.task_state.use(str(task)):
            return _features(model.backbone, model.heads, x)

    fused = [features(task) for task in (0, 1)]
    assert len(calls) == 4  # both blocks, both tasks
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        unfused = [features(task) for task in (0, 1)]
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert len(calls) == 4
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused, unfused))
    assert not torch.allclose(fused[0], fused[1], atol=1e-3)  # the kernel computed with each task's weights
