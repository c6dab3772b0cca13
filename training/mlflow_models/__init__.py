"""MLflow models logged *from code*: each file is self-contained (numpy/scipy/mlflow only).

Serving loads these through the registry, never by importing `training`.
"""
