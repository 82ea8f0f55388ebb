"""The errors that mean bad input rather than a bug: the CLI prints them as one line."""
from vislab.config import ConfigError
from vislab.data.datasets.image_folder import BadImageError, DataError
from vislab.engine.checkpoint import CheckpointError
from vislab.engine.run import RunDirError
from vislab.engine.trainer import NonFiniteLossError, SkippedBatchError
from vislab.export import ExportError
from vislab.launch import LaunchError
from vislab.models.registry import UnknownModelError
from vislab.utils.finite import NonFiniteOutputError
from vislab.weights import WeightsError

USER_ERRORS = (ConfigError, BadImageError, DataError, CheckpointError, RunDirError, NonFiniteLossError, LaunchError,
               NonFiniteOutputError, SkippedBatchError, ExportError, UnknownModelError, WeightsError, ValueError, TypeError, FileNotFoundError)

# raised for bad input by vislab, but also by bugs deep in a library: say how to see the traceback
GENERIC_ERRORS = (ValueError, TypeError)
