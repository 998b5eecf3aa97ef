"""`resources.compile`: the spec's bounded switch, and a tiny search step with the weight step's forward
compiled by torch.compile (it needs a C compiler on CPU: without one this fails, naming it)."""

from __future__ import annotations

import pytest
import torch

from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.spec.search_spec import SearchConfig


def test_compile_is_off_or_torch_compile_and_anything_else_names_the_field() -> None:
    assert SearchConfig.from_spec({}).resources.compile == "off"
    on = SearchConfig.from_spec({"resources": {"compile": "torch.compile"}})
    assert on.resources.compile == "torch.compile"
    with pytest.raises(ValueError, match=r"resources\.compile"):
        SearchConfig.from_spec({"resources": {"compile": "jit"}})


def _steps(compile: bool) -> list[float]:
    torch.manual_seed(0)
    network = SearchNetwork(
        3, 4, init_channels=4, cells=1, internal_nodes=1, primitives=["skip_connect", "avg_pool_3x3"]
    )
    search = DartsSearch(network, order="first", epochs=1, compile=compile)
    generator = torch.Generator().manual_seed(1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 4, (4,), generator=generator)

    losses = []
    for _ in range(2):
        result = search.step(batch(), batch())
        losses += [float(result.train_loss), float(result.valid_loss)]
    return losses


def test_a_search_step_runs_compiled_and_agrees_with_the_eager_one() -> None:
    from torch._dynamo.utils import counters

    eager = _steps(False)
    counters.clear()
    try:
        compiled = _steps(True)
    except Exception as exc:  # noqa: BLE001 - inductor's errors for a missing compiler vary by version
        pytest.fail(
            f"torch.compile does not work here ({type(exc).__name__}: {str(exc)[:300]}); on CPU it needs a "
            "C++ compiler (Debian: apt-get install g++)",
            pytrace=False,
        )
    assert counters["frames"]["ok"] > 0  # dynamo compiled frames: the compiled forward ran
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
