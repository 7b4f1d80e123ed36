"""Project settings; see https://docs.kedro.org/en/stable/configure/configuration_basics/."""

from kedro.config import OmegaConfigLoader

from face_pipeline.hooks import KerasModelInputs

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/demo) and `--params` change single keys of a parameter group;
    # Kedro's default ("destructive") would replace the whole group and lose the other keys.
    "merge_strategy": {"parameters": "soft"},
}

HOOKS = (KerasModelInputs(),)

# No network at run time. kedro-telemetry's opt-out (KEDRO_DISABLE_TELEMETRY, .telemetry) is read
# only by CLI commands; a KedroSession made in code (tests, notebooks) would still try to send.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry",)
