"""Config validation: every bad field gives a ConfigError that names it and the fix."""

import pytest

from jgraph import quant
from jgraph.core import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 0}, r"DGMSConfig.bits=0: must be >= 1; fix: use 1-8 bits"),
        ({"bits": 9}, r"DGMSConfig.bits=9: must be <= 8; fix: use 1-8 bits"),
        ({"bits": 2.0}, r"DGMSConfig.bits=2.0: must be an int"),
        ({"layers": "conv("}, r"DGMSConfig.layers='conv\(': is not a valid regex"),
        ({"exclude": 3}, r"DGMSConfig.exclude=3: must be a regex string"),
        ({"init": "em"}, r"DGMSConfig.init='em': not one of 'kmeans', 'empirical'"),
        ({"tau0": 0.0}, r"DGMSConfig.tau0=0.0: must be > 0"),
        ({"tau0": 1e-5}, r"DGMSConfig.tau0=1e-05: is below tau_min"),
        ({"sigma_min": -1.0}, r"DGMSConfig.sigma_min=-1.0: must be > 0"),
        ({"kmeans_iters": 0}, r"DGMSConfig.kmeans_iters=0: must be >= 1"),
    ],
)
def test_dgms_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        quant.DGMSConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, r"Recipe.epochs=0: must be >= 1"),
        ({"optimizer": "lion"}, r"Recipe.optimizer='lion': not one of 'sgd', 'adam'"),
        ({"lr": 0.0}, r"Recipe.lr=0.0: must be > 0"),
        ({"momentum": 1.5}, r"Recipe.momentum=1.5: must be <= 1"),
        ({"tau_start": -1.0}, r"Recipe.tau_start=-1.0: must be > 0"),
    ],
)
def test_recipe_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        quant.recipes.Recipe(**kwargs)


def test_defaults_and_k():
    cfg = quant.DGMSConfig()
    assert cfg.bits == 4
    assert cfg.num_components == 16
    assert quant.DGMSConfig(bits=2).num_components == 4
    assert hash(cfg) == hash(quant.DGMSConfig())  # usable as a static jit argument


def test_run_config_and_model_errors():
    with pytest.raises(ConfigError, match=r"RunConfig.seed=-1: must be >= 0"):
        quant.recipes.RunConfig(seed=-1)
    with pytest.raises(ConfigError, match=r"model='vgg': not one of 'resnet20', 'cnn', 'mlp'"):
        quant.recipes.make_model("vgg", 10)
