"""Project settings; see https://docs.kedro.org/en/stable/configure/configuration_basics/."""

from kedro.config import OmegaConfigLoader

from face_pipeline.hooks import RegisterKerasLayers

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/demo) and `--params` change single keys of a parameter group;
    # Kedro's default ("destructive") would replace the whole group and lose the other keys.
    "merge_strategy": {"parameters": "soft"},
}

HOOKS = (RegisterKerasLayers(),)
