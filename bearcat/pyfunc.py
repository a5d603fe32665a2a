"""The MLflow pyfunc flavour of a Bearcat export bundle, so `mlflow.pyfunc.load_model` and
`mlflow models serve` answer like `bearcat.serve`.

Input: a DataFrame (or list / dict) with a column `image`: base64 text (or raw bytes) of
each image. Output: a DataFrame with `result`, `confidence`, `time_ms` per image.
"""
from __future__ import annotations

import mlflow.pyfunc


class BearcatPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from bearcat.runtime import load_predictor

        self.predictor = load_predictor(context.artifacts["bundle"], runtime="auto")

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from bearcat.server.codec import image_bytes

        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise ValueError(f"input needs a column 'image' (base64 images); got {list(model_input.columns)}")
            values = model_input["image"].tolist()
        elif isinstance(model_input, dict):
            values = list(model_input["image"]) if not isinstance(model_input["image"], str) else [model_input["image"]]
        else:
            values = list(model_input)
        images = [image_bytes(v, f"image[{i}]") for i, v in enumerate(values)]
        return pd.DataFrame(self.predictor.predict(images))


# MLflow "models from code": log_model(python_model=<this file>) stores this source, not a pickle.
mlflow.models.set_model(BearcatPyfunc())
