"""Every setting is checked against its declared type and range before any work: one line per problem."""

from dataclasses import dataclass
from typing import Annotated, Literal

import pytest
from omegaconf import OmegaConf

from s3l.config import stage_specs
from s3l.data.datasets import dataset_class
from s3l.errors import S3LError
from s3l.schema import PositiveInt, Range, UnitFloat, check
from s3l.settings import GROUPS, DatasetSettings
from s3l.stages.base import stage_class
from s3l.validate import validate_config
from tests.conftest import CONFIGS, CUB_SUBSET


@dataclass
class Inner:
    k: PositiveInt


@dataclass
class Example:
    count: PositiveInt
    rate: UnitFloat
    mode: Literal["a", "b"]
    limit: PositiveInt | Annotated[float, Range(0, 1, low_inclusive=False)] | None
    sizes: list[PositiveInt]
    inner: Inner | None
    flag: bool
    note: str | None = None


GOOD = {"count": 3, "rate": 0.5, "mode": "a", "limit": 0.5, "sizes": [1, 2], "inner": {"k": 1}, "flag": True}


def check_example(**changes):
    check(OmegaConf.create({**GOOD, **changes}), Example, "example")


@pytest.mark.parametrize(("changes", "message"), [
    ({"count": "abc"}, "example.count=abc must be an integer"),
    ({"count": 2.5}, "example.count=2.5 must be an integer"),
    ({"count": True}, "example.count=True must be an integer"),
    ({"count": 0}, "example.count=0 must be > 0"),
    ({"rate": 1.5}, "example.rate=1.5 must be in [0, 1]"),
    ({"rate": "x"}, "example.rate=x must be a number"),
    ({"mode": "c"}, "example.mode=c must be one of a, b"),
    ({"limit": 1.5}, "example.limit=1.5 must be in (0, 1]"),
    ({"limit": -2}, "example.limit=-2 must be > 0"),
    ({"limit": "all"}, "example.limit=all must be an integer or a number or null"),
    ({"sizes": [1, -1]}, "example.sizes[1]=-1 must be > 0"),
    ({"sizes": 3}, "example.sizes=3 must be a list"),
    ({"inner": {"k": 0}}, "example.inner.k=0 must be > 0"),
    ({"inner": {"k": 1, "j": 2}}, "example.inner.j is not a setting of example.inner; valid: k"),
    ({"flag": "yes"}, "example.flag=yes must be true or false"),
    ({"extra": 1}, "example.extra is not a setting of example; valid: count, rate, mode"),
])
def test_each_kind_of_bad_value_is_one_line_naming_key_value_and_rule(changes, message):
    with pytest.raises(S3LError) as error:
        check_example(**changes)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_good_values_and_optional_settings_pass():
    check_example()
    check_example(limit=None)
    check_example(inner=None, note="hello", limit=7, rate=1)


def test_a_missing_setting_and_a_mandatory_value_are_named():
    with pytest.raises(S3LError, match="example.flag is not set"):
        check(OmegaConf.create({k: v for k, v in GOOD.items() if k != "flag"}), Example, "example")
    with pytest.raises(S3LError, match=r"example.mode must be set \(it is \?\?\?\)"):
        check_example(mode="???")


def test_every_shipped_group_option_and_stage_template_fits_its_schema(compose_cfg):
    """A new option or a new YAML key gets checked: every option of every schema'd group passes."""
    for group, schema in GROUPS.items():
        for path in (CONFIGS / group).glob("*.yaml"):
            cfg = compose_cfg(f"{group}={path.stem}")
            check(cfg[group], schema, group)
    for path in (CONFIGS / "dataset").glob("*.yaml"):
        dataset = compose_cfg(f"dataset={path.stem}").dataset
        check(dataset, [DatasetSettings, dataset_class(dataset)], "dataset", ignore=("_target_",), supplied=("split",))
    for path in (CONFIGS / "stage").glob("*.yaml"):
        stage = compose_cfg(f"stage={path.stem}").stage
        check(stage, stage_class(stage, "stage").Settings, "stage", ignore=("_target_",))


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.K=abc"], "method.K=abc must be an integer"),
    (["method.K=-128"], "method.K=-128 must be > 0"),
    (["stages.finetune.lr=0"], "stages.finetune.lr=0 must be > 0"),
    (["stages.finetune.epochs=0"], "stages.finetune.epochs=0 must be > 0"),
    (["method.epochs=0"], "method.epochs=0 must be > 0"),
    (["method.m=1.5"], "method.m=1.5 must be in [0, 1]"),
    (["+method.KK=3"], "method.KK is not a setting of method"),
    (["dataset.num_workers=-1"], "dataset.num_workers=-1 must be >= 0"),
    (["trainer.precision=bf17"], "trainer.precision=bf17 must be one of 32-true"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be > 0"),
    (["seed=x"], "seed=x must be an integer"),
    (["stage=linear"], "stage.init=previous but stage is the first stage: pass stage.init=/path/to/backbone.pt"),
    (["experiment=cub_linear", f"dataset.root={CUB_SUBSET}"], "stages.linear.init=previous but stages.linear is"),
])
def test_impossible_settings_of_any_stage_fail_validation_with_one_line(compose_cfg, overrides, message):
    cfg = compose_cfg(*overrides)
    with pytest.raises(S3LError) as error:
        validate_config(cfg, stage_specs(cfg))
    assert message in str(error.value) and "\n" not in str(error.value)
