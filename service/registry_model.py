"""The entry point MLflow runs to load a registered Reptile model (models-from-code)."""

from mlflow.models import set_model

from service.registry import ReptileModel

set_model(ReptileModel())
