"""Streams of downloaded datasets, on small data the tests write in the
datasets' own file formats; downloads are sent to a closed local port, so
these tests never reach the network."""

import struct
import urllib.request

import pytest
import torch
import torchvision

from piggyback_avalanche import Piggyback, PiggybackModel
from piggyback_avalanche.app.command_line import main
from piggyback_avalanche.app.report import published_comparison, summarize
from piggyback_avalanche.benchmarks.datasets import (
    DatasetUnavailableError,
    classic_task_stream,
    fine_grained_stream,
)
from piggyback_avalanche.networks.backbones import BACKBONES, WeightsUnavailableError


@pytest.fixture
def no_network(monkeypatch):
    """Every HTTP(S) download fails at once: the proxy is a closed port."""
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    # urlopen keeps the opener, with the proxies of its first call, for good.
    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


def write_mnist(root, *, train_per_class=8, test_per_class=3):
    """MNIST in its IDX files under root/MNIST/raw, as torchvision reads it."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = torch.arange(10).repeat_interleave(per_class).to(torch.uint8)
        images = torch.randint(0, 256, (len(labels), 28, 28), generator=generator, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.numpy().tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.numpy().tobytes()
        )
    return labels


def test_split_mnist_reads_a_local_copy_as_a_task_incremental_stream(tmp_path, no_network):
    write_mnist(tmp_path)
    benchmark = classic_task_stream("split_mnist", data_root=tmp_path, seed=0)
    train = benchmark.train_stream
    assert len(train) == 5 and [e.task_label for e in train] == [0, 1, 2, 3, 4]
    assert all(e.classes_in_this_experience == [0, 1] for e in train)  # class ids from 0 in each
    assert [len(e.dataset) for e in train] == [16] * 5
    assert [len(e.dataset) for e in benchmark.test_stream] == [6] * 5


@pytest.mark.parametrize("name", ["split_mnist", "split_cifar100"])
def test_classic_stream_offline_says_how_to_point_at_a_local_copy(tmp_path, no_network, name):
    with pytest.raises(DatasetUnavailableError) as error:
        classic_task_stream(name, data_root=tmp_path / "empty")
    message = str(error.value)
    assert f"Could not load the {name} dataset under {tmp_path / 'empty'}" in message
    assert "pass --data-root DIR" in message


def test_unknown_classic_stream_lists_the_choices():
    with pytest.raises(ValueError, match="choose from \\['permuted_mnist', 'split_cifar100'"):
        classic_task_stream("split_imagenet")


def test_runner_trains_on_a_local_split_mnist_and_fails_clearly_without_it(tmp_path, no_network, capsys):
    write_mnist(tmp_path / "data")
    argv = [
        "--stream",
        "split_mnist",
        "--backbone",
        "mlp",
        "--strategies",
        "piggyback",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--data-root", str(tmp_path / "data")]) == 0
    assert "| piggyback |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--data-root", str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    assert "piggyback-bench: error: Could not load the split_mnist dataset" in capsys.readouterr().err


def _fake(classes, size):
    def load(root, train):
        offset = 0 if train else 1000  # different images for testing
        return torchvision.datasets.FakeData(
            size=size if train else size // 2, image_size=(3, 40, 48), num_classes=classes, random_offset=offset
        )

    return load


def test_fine_grained_protocol_on_fake_datasets_trains_piggyback_on_a_resnet():
    benchmark = fine_grained_stream(
        ["birds", "cars"], data_root="unused", crop_size=32, datasets={"birds": _fake(3, 24), "cars": _fake(5, 30)}
    )
    train, test = benchmark.train_stream, benchmark.test_stream
    assert [e.task_label for e in train] == [0, 1]
    assert [len(e.dataset) for e in train] == [24, 30] and [len(e.dataset) for e in test] == [12, 15]
    image, label, task = train[1].dataset[0]
    assert (
        image.shape == (3, 32, 32)
        and task == 1
        and label == torchvision.datasets.FakeData(size=30, num_classes=5, image_size=(3, 40, 48))[0][1]
    )
    # Evaluation crops are deterministic; training crops are random.
    assert torch.equal(test[0].dataset[0][0], test[0].dataset[0][0])
    assert not torch.equal(train[0].dataset[0][0], train[0].dataset[0][0])
    model = PiggybackModel(BACKBONES["resnet18"]((3, 32, 32), False))
    strategy = Piggyback(model=model, train_epochs=1, train_mb_size=8, evaluator=None)
    for experience in train:
        strategy.train(experience)
    assert model.frozen_tasks == [0, 1]
    assert model.heads.heads["1"].out_features >= max(train[1].classes_in_this_experience) + 1


def test_published_errors_are_printed_beside_ours():
    run = {"accuracy": [0.8, 0.9, 0.95, 0.7, 0.75]}
    results = {
        "piggyback": {
            "runs": [run],
            "summary": summarize(
                [
                    {
                        **run,
                        **dict.fromkeys(
                            (
                                "average_accuracy",
                                "average_forgetting",
                                "bwt",
                                "model_bytes",
                                "networks",
                                "train_seconds",
                            ),
                            0.0,
                        ),
                    }
                ]
            ),
        }
    }
    table = published_comparison(results, backbone="resnet50").splitlines()
    assert table[0] == "| task | ours (resnet50), error % | published resnet50, error % |"
    assert table[2] == "| cub200 | 20.00 ± 0.00 | 18.23 |"
    assert table[5] == "| fgvc_aircraft (in place of WikiArt) | 30.00 ± 0.00 | 28.57 |"
    assert table[6] == "| dtd (in place of Sketch) | 25.00 ± 0.00 | 19.75 |"
    both = published_comparison(results, backbone="densenet121").splitlines()
    assert both[0].endswith("| published resnet50, error % | published vgg16, error % |")
    assert both[3] == "| stanford_cars | 10.00 ± 0.00 | 10.19 | 11.78 |"


def test_fine_grained_offline_names_the_dataset_and_the_manual_step(tmp_path, no_network):
    with pytest.raises(DatasetUnavailableError, match="Could not load the flowers102 dataset"):
        fine_grained_stream(["flowers102"], data_root=tmp_path)
    with pytest.raises(DatasetUnavailableError, match="no longer downloads Stanford Cars"):
        fine_grained_stream(["stanford_cars"], data_root=tmp_path)
    with pytest.raises(ValueError, match="Unknown fine-grained task\\(s\\) \\['wikiart'\\]"):
        fine_grained_stream(["wikiart"], data_root=tmp_path)


def test_pretrained_torchvision_weights_come_from_torch_hubs_cache(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        BACKBONES["resnet18"]((3, 32, 32), True)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"place it at {cached}" in str(error.value)
    weights = torchvision.models.resnet18().state_dict()
    assert not cached.exists()  # no partial download left behind
    torch.save(weights, cached)
    loaded = BACKBONES["resnet18"]((3, 32, 32), True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="small_cnn has no published weights"):
        BACKBONES["small_cnn"]((1, 8, 8), True)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "maxvit_t"])
def test_pretrained_transformers_offline_name_the_file_to_place(tmp_path, monkeypatch, no_network, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    with pytest.raises(WeightsUnavailableError, match="Without internet access, download") as error:
        BACKBONES[name]((3, 224, 224), True)
    assert f"place it at {tmp_path / 'hub' / 'checkpoints' / url.rsplit('/', 1)[-1]}" in str(error.value)
    assert not list(tmp_path.rglob("*.pth"))  # no partial download left behind
