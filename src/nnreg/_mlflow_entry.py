"""The code MLflow runs to load a logged nnreg model (see :mod:`nnreg.mlflow_model`)."""

from mlflow.models import set_model

from nnreg.mlflow_model import NnregModel

set_model(NnregModel())
