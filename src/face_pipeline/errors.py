"""Errors about the user's inputs: their message is the whole story, so no traceback is shown."""


class FacePipelineError(ValueError):
    """An input the pipeline cannot use; the message names the file or parameter and what is wrong."""


class TrainingError(FacePipelineError):
    """Training cannot start from what it was given."""
