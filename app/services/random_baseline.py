"""A study's random baseline: genotypes drawn uniformly from the search space, within the search's budget.

Without `constraints` the draw is `StudySpec.random_genotypes()` itself. With them, a genotype over the
budget is drawn again (rejection sampling: uniform over the genotypes that fit), its cost counted as the
searches count theirs (`darts_core.search.budget`, on the search's dataset shape), so the baseline
competes on the same terms as the methods whose genotypes the budget repairs. The cost table needs
torch: it is imported here only for a study with both a budget and a random baseline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.schemas.searches import SearchSpec
from app.schemas.studies import StudySpec
from app.services import admission
from app.services.errors import Unprocessable
from darts_core.spec.genotype import Genotype

__all__ = ["random_baseline_genotypes"]


@functools.lru_cache(maxsize=8)
def _fits_budget(search_json: str, shape_json: str) -> Callable[[Genotype], bool]:
    # Cached by value: the table costs about a second to count, and a study's stages ask again.
    from darts_core.search.budget import Budget, cost_table_for
    from darts_core.spec.search_spec import SearchConfig

    config = SearchConfig.from_spec(json.loads(search_json))
    shape = json.loads(shape_json)
    table = cost_table_for(config, (shape["in_channels"], *shape["image_size"]), shape["num_classes"])
    budget = Budget.of(config.constraints)
    return lambda genotype: budget.fits(table.cost(genotype))


def _budget_check(session: Session, search: SearchSpec, owner: str) -> Callable[[Genotype], bool] | None:
    if not search.constraints.active:
        return None
    shape = admission.data_shape(session, search.dataset, owner)
    return _fits_budget(search.model_dump_json(), json.dumps(shape, sort_keys=True))


def random_baseline_genotypes(session: Session, spec: StudySpec, owner: str) -> list[Genotype]:
    """The genotypes of `spec`'s random baseline (`[]` without one), each within the search's budget.

    Raises:
        Unprocessable: (422 at `random_baseline`) the budget is so tight that a draw found no genotype
            within it.
    """
    if not spec.random_baseline:
        return []
    try:
        return spec.random_genotypes(accept=_budget_check(session, spec.search, owner))
    except ValueError as error:
        raise Unprocessable(
            f"the random baseline draws no genotype within the search's constraints: {error}; raise "
            "search.constraints or drop random_baseline",
            loc=("body", "random_baseline"),
            error_type="budget_infeasible",
        ) from None
