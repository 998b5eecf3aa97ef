"""darts_core.search.optimizers: the parameters split between the architecture and weight optimizers."""

import pytest
import torch
from torch import nn

import darts_core as arch

DATASETS = {"train": object(), "valid": object()}


class TinySearchModel(nn.Module):
    """Two 1-D cells sharing one SpecialParameter, and a linear classifier."""

    def __init__(self):
        super().__init__()
        prims = {
            "linear": lambda C, stride, affine: nn.Linear(C, C),
            "tanh": lambda C, stride, affine: nn.Tanh(),
        }
        self.first = arch.Cell(prims, 3, 3, 3, False, False, internal_nodes=1, with_preprocessing=False)
        self.second = arch.Cell(
            prims,
            3,
            3,
            3,
            False,
            False,
            internal_nodes=1,
            with_preprocessing=False,
            weights=self.first.weights,
        )
        self.classifier = nn.Linear(3, 2)

    def forward(self, x):
        h = self.first([x, x])
        return self.classifier(self.second([x, h]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def ids(params):
    return {id(p) for p in params}


def test_darts_dataset_gets_exactly_the_special_parameters():
    model = TinySearchModel()
    optimizers, schedulers = arch.create_darts_optimizers_fn(
        DATASETS, model, lambda params: torch.optim.SGD(params, lr=0.1), "valid"
    )
    assert set(optimizers) == {"train", "valid"} and schedulers is None
    assert ids(params_of(optimizers["valid"])) == {id(model.first.weights)}
    assert len(params_of(optimizers["valid"])) == 1  # the shared tensor once
    others = [p for p in model.parameters() if not isinstance(p, arch.SpecialParameter)]
    assert (
        len(params_of(optimizers["train"])) == len(others) == 2 * 2 * 2 + 2
    )  # 2 cells x 2 edges x Linear(w, b) + classifier
    assert ids(params_of(optimizers["train"])) == ids(others)


def test_each_optimizer_moves_only_its_own_parameters():
    model = TinySearchModel()
    optimizers, _ = arch.create_darts_optimizers_fn(
        DATASETS, model, lambda params: torch.optim.SGD(params, lr=0.1), "valid"
    )
    for name in ("valid", "train"):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad()
        model(torch.randn(8, 3)).square().sum().backward()
        optimizers[name].step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        if name == "valid":
            assert moved == {"first.weights"}
        else:
            assert moved and "first.weights" not in moved
            assert moved == {
                n for n, p in model.named_parameters() if not isinstance(p, arch.SpecialParameter)
            }


def test_schedulers_are_created_per_optimizer():
    model = TinySearchModel()
    optimizers, schedulers = arch.create_darts_optimizers_fn(
        DATASETS,
        model,
        lambda params: torch.optim.SGD(params, lr=0.1),
        "valid",
        scheduler_fn=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )
    assert set(schedulers) == {"train", "valid"}
    for name in ("train", "valid"):
        assert schedulers[name].optimizer is optimizers[name]
        optimizers[name].step()
        schedulers[name].step()
        assert optimizers[name].param_groups[0]["lr"] == pytest.approx(0.05)


def test_module_dict_uses_the_model_of_each_dataset():
    search, classifier = TinySearchModel(), nn.Linear(4, 2)
    # ("train" cannot be a ModuleDict key: it is a Module method)
    model = nn.ModuleDict({"arch": search, "fit": classifier})
    optimizers, _ = arch.create_darts_optimizers_fn(
        {"fit": None, "arch": None}, model, lambda params: torch.optim.SGD(params, lr=0.1), "arch"
    )
    assert ids(params_of(optimizers["arch"])) == {id(search.first.weights)}
    assert ids(params_of(optimizers["fit"])) == ids(classifier.parameters())


def test_adam_variant():
    model = TinySearchModel()
    optimizers, schedulers = arch.create_darts_adam_optimizers_fn(
        DATASETS, model, "valid", learning_rate=3e-4
    )
    assert schedulers is None
    for name in ("train", "valid"):
        assert isinstance(optimizers[name], torch.optim.Adam)
        assert optimizers[name].param_groups[0]["lr"] == 3e-4
    assert ids(params_of(optimizers["valid"])) == {id(model.first.weights)}


def test_error_unknown_darts_dataset():
    with pytest.raises(ValueError, match=r"'search' is not among the datasets \['train', 'valid'\]"):
        arch.create_darts_optimizers_fn(DATASETS, TinySearchModel(), torch.optim.SGD, "search")


def test_error_dataset_without_special_parameters():
    with pytest.raises(ValueError, match=r"dataset 'valid' has no SpecialParameter"):
        arch.create_darts_optimizers_fn(
            DATASETS, nn.Linear(2, 2), lambda p: torch.optim.SGD(p, lr=0.1), "valid"
        )


def test_error_dataset_without_other_parameters():
    model = nn.Module()
    model.alphas = arch.SpecialParameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"dataset 'train' has no non-SpecialParameter"):
        arch.create_darts_optimizers_fn(DATASETS, model, lambda p: torch.optim.SGD(p, lr=0.1), "valid")


def test_error_module_dict_without_entry():
    model = nn.ModuleDict({"arch": TinySearchModel()})
    with pytest.raises(ValueError, match="without an entry for dataset 'fit'"):
        arch.create_darts_optimizers_fn(["arch", "fit"], model, lambda p: torch.optim.SGD(p, lr=0.1), "arch")
