class PipelineError(Exception):
    """A problem with the user's input (recipe, data, model folder) reported as one line, without a traceback."""
